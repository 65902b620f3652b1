"""Experiment 2: why sines and cosines (§3.5).

The paper chose sinusoids "because we hypothesized it would allow the model to easily learn to attend by relative
positions, since for any fixed offset k, PE(pos+k) can be represented as a linear function of PE(pos)", and "may
allow the model to extrapolate to sequence lengths longer than the ones encountered during training". Measured: the
dot product PE(p).PE(p+k) against k for several p (it depends on k only); M_k, the block-diagonal rotation with
blocks [[cos wk, sin wk], [-sin wk, cos wk]], maps PE(p) to PE(p+k) for every p (largest error, in float64, and the
model's float32 encoding against the float64 formula); and sinusoidal against learned positions (Table 3 row E)
trained on the corpus' shorter sentences and evaluated on short and on longer ones.

    python -m experiments.positions [--tiny]
"""

from __future__ import annotations

import math

import torch

from experiments import common
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoidal_position_encoding

D_MODEL = 512  # the paper's


def paper_encoding(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """§3.5 in float64: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d))."""
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angles = positions.to(torch.float64)[:, None] / torch.pow(10000.0, two_i / d_model)
    return torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)


def rotation(k: int, d_model: int) -> torch.Tensor:
    """M_k: PE(p + k) = M_k PE(p) for every p, one 2x2 rotation per frequency w_i = 1 / 10000^(2i/d)."""
    frequencies = 1.0 / torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    matrix = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i, w in enumerate(frequencies.tolist()):
        c, s = math.cos(w * k), math.sin(w * k)
        # sin(w(p+k)) = sin(wp) cos(wk) + cos(wp) sin(wk); cos(w(p+k)) = cos(wp) cos(wk) - sin(wp) sin(wk)
        matrix[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    return matrix


def rotation_error(k: int, positions: int = 1000, d_model: int = D_MODEL) -> float:
    """max over p < positions of |PE(p + k) - M_k PE(p)| (float64)."""
    p = torch.arange(positions)
    return (paper_encoding(p + k, d_model) - paper_encoding(p, d_model) @ rotation(k, d_model).T).abs().max().item()


def length_split(data: common.Corpus, short: int):
    """Training pairs whose source has at most `short` tokens; the dev split cut the same way and the rest."""
    train = [pair for pair in data.train if len(pair[0]) <= short]
    dev_short = [i for i, (s, _) in enumerate(data.dev) if len(s) <= short]
    dev_long = [i for i, (s, _) in enumerate(data.dev) if len(s) > short]

    def subset(indices):
        return (
            [data.dev_sources[i] for i in indices],
            [data.dev_targets[i] for i in indices],
            [data.dev[i] for i in indices],
        )

    return train, subset(dev_short), subset(dev_long)


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    positions = torch.arange(0, 200)
    encoding = paper_encoding(positions, D_MODEL)
    offsets = list(range(0, 101))
    starts = (0, 20, 50)
    dots = {p: [float(encoding[p] @ encoding[p + k]) for k in offsets] for p in starts}
    spread = max(max(dots[p][k] for p in starts) - min(dots[p][k] for p in starts) for k in offsets)
    model_error = (sinusoidal_position_encoding(positions, D_MODEL).double() - encoding).abs().max().item()
    errors = {k: rotation_error(k) for k in (1, 5, 25, 100)}
    math_rows = [[f"PE(p).PE(p+k) for p in {starts}, k = 0..100: largest difference across p", spread],
                 *[[f"max_p |PE(p+{k}) - M_{k} PE(p)| (float64, p < 1000)", e] for k, e in errors.items()],
                 ["max |model's float32 encoding - float64 formula| (p < 200)", model_error]]  # fmt: skip

    data = common.corpus()
    short = 8
    train, dev_short, dev_long = length_split(data, short)
    steps = 5 if args.tiny else 400
    runs = {}
    for name in ("sinusoidal", "learned"):
        config = common.config(position_encoding=name)
        runs[name] = common.train_run(
            name, config, steps, train_pairs=train, dev=dev_short, other_dev={"long": dev_long}
        )
    table = common.markdown_table(["quantity", "value"], math_rows)
    results = {"dot_products": dots, "rotation_errors": errors, "model_vs_formula": model_error, "spread": spread}
    training_rows = []
    for name, run in runs.items():
        long = run.other_dev.get("long", {"perplexity": float("nan"), "chrf": float("nan")})
        training_rows.append([name, run.dev_perplexity, run.dev_chrf, long["perplexity"], long["chrf"]])
        results[name] = {**run.summary(), "long": long}
    training = common.markdown_table(
        ["positions", f"dev ppl, source <= {short} tokens", "dev chrF, short", f"dev ppl, > {short} tokens",
         "dev chrF, long"], training_rows)  # fmt: skip
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for p in starts:
        axes[0].plot(offsets, dots[p], label=f"p = {p}")
    axes[0].set(xlabel="offset k", ylabel="PE(p) . PE(p+k)", title=f"Sinusoids, d_model = {D_MODEL}")
    axes[0].legend()
    names = list(runs)
    x = torch.arange(len(names)).float()
    axes[1].bar(x - 0.2, [runs[n].dev_bleu for n in names], 0.4, label=f"source <= {short} tokens (as trained)")
    axes[1].bar(
        x + 0.2,
        [runs[n].other_dev.get("long", {}).get("bleu", 0) for n in names],
        0.4,
        label=f"source > {short} tokens",
    )
    axes[1].set_xticks(x, names)
    axes[1].set(ylabel="dev chrF", title="Trained on short sentences")
    axes[1].legend()
    common.save(
        "positions",
        {
            "The sinusoids' algebra": table,
            f"Length generalisation ({steps} steps, "
            f"{len(train)} training pairs with source <= {short} tokens)": training,
        },
        results,
        figure,
        args.out,
    )


if __name__ == "__main__":
    main()
