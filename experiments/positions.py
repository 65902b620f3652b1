"""Experiment 2: why sines and cosines (§3.5).

The paper chose sinusoids "because we hypothesized it would allow the model to easily learn to attend by relative
positions, since for any fixed offset k, PE(pos+k) can be represented as a linear function of PE(pos)", and "may
allow the model to extrapolate to sequence lengths longer than the ones encountered during training". Measured: the
dot product PE(p).PE(p+k) against k for several p (it depends on k only); M_k, the block-diagonal rotation with
blocks [[cos wk, sin wk], [-sin wk, cos wk]], maps PE(p) to PE(p+k) for every p (largest error, in float64, and the
model's float32 encoding against the float64 formula). Then length generalisation on a length-controlled task built
from the same generator: the source is a list of K numbers below 1000 (`forty-two, seven, three hundred and one` ->
`zweiundvierzig, sieben, dreihunderteins`), trained on K <= 3 and tested on K = 1..6, so that only the length
changes; sinusoidal vs learned positions (Table 3 row E), 3 paired seeds. And a position-shift probe: the trained
models evaluated with every position shifted by 5 or 20 (`position_offset`), inside the trained lengths.

    python -m experiments.positions [--tiny]
"""

from __future__ import annotations

import math
import random

import torch

from experiments import common
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoidal_position_encoding

D_MODEL = 512  # the paper's
TRAIN_K = (1, 2, 3)
TEST_K = (1, 2, 3, 4, 5, 6)
OFFSETS = (0, 5, 20)
STEPS = 800


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


def number_list(rng: random.Random, k: int) -> tuple[str, str]:
    """K numbers below 1000 in words, English and German, joined by ', '."""
    from num2words import num2words

    numbers = [rng.randrange(1000) for _ in range(k)]
    return (", ".join(num2words(n, lang="en") for n in numbers), ", ".join(num2words(n, lang="de") for n in numbers))


def list_task(is_tiny: bool) -> common.Corpus:
    """Training lists of K in TRAIN_K, dev lists of every K in TEST_K (100 each, 8 with --tiny), the shared
    corpus' tokenizer."""
    rng = random.Random(0)
    train = [number_list(rng, rng.choice(TRAIN_K)) for _ in range(1_500 if is_tiny else 20_000)]
    per_k = 8 if is_tiny else 100
    dev = [number_list(rng, k) for k in TEST_K for _ in range(per_k)]
    tokenizer = common.corpus(common.VOCAB_SIZE, is_tiny).tokenizer
    return common.make_corpus(train, dev, common.VOCAB_SIZE, [f"K={k}" for k in TEST_K for _ in range(per_k)],
                              tokenizer)  # fmt: skip


def item_accuracy(hypotheses: list[str], references: list[str]) -> float:
    """The share (%) of reference items (numbers of a list) that the hypothesis has at the same place."""
    hits = total = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        got, want = hypothesis.split(", "), reference.split(", ")
        hits += sum(g == w for g, w in zip(got, want, strict=False))
        total += len(want)
    return 100.0 * hits / total


def probe(model, data: common.Corpus) -> dict:
    """Per K, the per-item accuracy; and the exact match inside the trained lengths with every position shifted."""
    results: dict = {"item_accuracy": {}, "shifted_exact": {}}
    hypotheses = common.greedy(model, data)
    for k in TEST_K:
        chosen = [i for i, c in enumerate(data.dev_categories) if c == f"K={k}"]
        results["item_accuracy"][k] = item_accuracy([hypotheses[i] for i in chosen],
                                                    [data.dev_targets[i] for i in chosen])  # fmt: skip
    inside = [i for i, c in enumerate(data.dev_categories) if int(c[2:]) in TRAIN_K]
    embeddings = (model.model.encoder.embeddings, model.model.decoder.embeddings)
    for offset in OFFSETS:
        for module in embeddings:
            module.position_offset = offset
        shifted = common.greedy(model, data, [data.dev_sources[i] for i in inside])
        results["shifted_exact"][offset] = (
            100.0 * sum(h == data.dev_targets[i] for h, i in zip(shifted, inside, strict=True)) / len(inside)
        )
    for module in embeddings:
        module.position_offset = 0
    return results


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

    specs = [common.Spec(name, {"position_encoding": name}, steps=STEPS, seed=seed, data=list_task, probe=probe)
             for name in ("sinusoidal", "learned") for seed in common.seeds(3)]  # fmt: skip
    groups = common.arms(common.run_all(specs))
    rows, answers = [], []
    for name, runs in groups.items():
        for k in TEST_K:
            rows.append([name, k, "yes" if k in TRAIN_K else "no",
                         common.spread([r.exact_by_category.get(f"K={k}", math.nan) for r in runs]),
                         common.spread([r.probes["item_accuracy"][k] for r in runs])])  # fmt: skip
    shift_rows = [[name, *[common.spread([r.probes["shifted_exact"][o] for r in runs]) for o in OFFSETS]]
                  for name, runs in groups.items()]  # fmt: skip
    for k in TEST_K[len(TRAIN_K) :]:
        answers.append(common.verdict("sinusoidal", [r.probes["item_accuracy"][k] for r in groups["sinusoidal"]],
                                      "learned", [r.probes["item_accuracy"][k] for r in groups["learned"]],
                                      f"item accuracy points at K={k}"))  # fmt: skip
    for name, runs in groups.items():
        answers.append(common.verdict(f"{name} at K=3", [r.probes["item_accuracy"][3] for r in runs],
                                      f"{name} at K={TEST_K[-1]}", [r.probes["item_accuracy"][TEST_K[-1]] for r in runs],
                                      "item accuracy points"))  # fmt: skip
        answers.append(
            common.verdict(
                f"{name} unshifted",
                [r.probes["shifted_exact"][0] for r in runs],
                f"{name} shifted by {OFFSETS[-1]}",
                [r.probes["shifted_exact"][OFFSETS[-1]] for r in runs],
                "exact % points",
            )
        )

    plt = common.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for p in starts:
        axes[0].plot(offsets, dots[p], label=f"p = {p}")
    axes[0].set(xlabel="offset k", ylabel="PE(p) . PE(p+k)", title=f"Sinusoids, d_model = {D_MODEL}")
    axes[0].legend()
    for name, runs in groups.items():
        values = [[r.probes["item_accuracy"][k] for r in runs] for k in TEST_K]
        line = axes[1].plot(TEST_K, [sum(v) / len(v) for v in values], "o-", label=name)
        axes[1].fill_between(TEST_K, [min(v) for v in values], [max(v) for v in values], alpha=0.25,
                             color=line[0].get_color())  # fmt: skip
        shifted = [[r.probes["shifted_exact"][o] for r in runs] for o in OFFSETS]
        axes[2].errorbar(OFFSETS, [sum(v) / len(v) for v in shifted],
                         yerr=[[sum(v) / len(v) - min(v) for v in shifted], [max(v) - sum(v) / len(v) for v in shifted]],
                         marker="o", capsize=3, label=name)  # fmt: skip
    axes[1].axvspan(0.5, TRAIN_K[-1] + 0.5, color="gray", alpha=0.15, label="trained lengths")
    axes[1].set(xlabel="numbers in the list (K)", ylabel="items right (%)", ylim=(0, 101),
                title="Length generalisation (seed band)")  # fmt: skip
    axes[1].legend(fontsize=8)
    axes[2].set(xlabel="position shift", ylabel=f"exact match, K <= {TRAIN_K[-1]} (%)", ylim=(0, 101),
                title="All positions shifted at evaluation")  # fmt: skip
    axes[2].legend(fontsize=8)
    steps = common.TINY_STEPS if args.tiny else STEPS
    common.save(
        "positions",
        {"The sinusoids' algebra": common.markdown_table(["quantity", "value"], math_rows),
         f"Lists of K numbers, trained on K <= {TRAIN_K[-1]} ({steps} steps, mean (min-max) over seeds)":
             common.markdown_table(["positions", "K", "trained length", "exact %", "items right %"], rows),
         "Positions shifted at evaluation (exact match %, K <= 3)": common.markdown_table(
             ["positions", *[f"shift {o}" for o in OFFSETS]], shift_rows)},
        {"dot_products": dots, "rotation_errors": errors, "model_vs_formula": model_error, "spread": spread,
         "runs": {name: [r.summary() for r in runs] for name, runs in groups.items()}},
        figure, args.out, answers)  # fmt: skip


if __name__ == "__main__":
    main()
