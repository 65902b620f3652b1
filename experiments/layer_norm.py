"""Experiment 3: post-LN, pre-LN and the warm-up (Xiong et al. 2020; Liu et al. 2020; Wortsman et al. 2023).

The paper's sub-layers are post-LN, LayerNorm(x + Sublayer(x)), trained with a 4000-step warm-up (§5.3). Xiong et
al. show that at initialisation post-LN's gradients are largest near the output, so large early steps can diverge
without a warm-up, while pre-LN (x + Sublayer(LayerNorm(x)), the config's `norm_first`) has well-behaved gradients.
Measured at initialisation: the gradient norm of each decoder layer's feed-forward weights (6 + 6 layers); token
distinctness through the encoder (experiment 4's measure); and Liu et al.'s (Admin) output-change probe, the
relative change of the decoder output for one fixed small random change of every weight matrix, against depth.
Then training as a learning-rate sensitivity sweep (Wortsman et al.'s small-scale method): final dev NLL against the
peak rate for post-LN / pre-LN x warm-up / none at 4 + 4 layers, one seed per point and seeds 2 and 3 at the rate
where the arms split most, beside the target-language-model plateau.

    python -m experiments.layer_norm [--tiny]
"""

from __future__ import annotations

import math

import torch

from experiments import common
from experiments.residuals import token_distinctness
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration

DEEP = {"encoder_layers": 6, "decoder_layers": 6}
SWEEP_LAYERS = {"encoder_layers": 4, "decoder_layers": 4}
RATES = (1e-3, 3e-3, 1e-2)
DEPTHS = (2, 4, 6, 8, 12)
ARMS = {"post-LN, warm-up": (False, True), "post-LN, no warm-up": (False, False),
        "pre-LN, warm-up": (True, True), "pre-LN, no warm-up": (True, False)}  # fmt: skip


def layer_gradient_norms(norm_first: bool, batches: int = 4, seed: int = 0, **fields) -> dict[str, list[float]]:
    """Per layer, the gradient norm of the FFN weights (W_1 and W_2 together), averaged over a few batches, at
    initialisation (dropout off)."""
    data = common.corpus()
    torch.manual_seed(seed)
    model = VanillaTransformerForConditionalGeneration(
        common.config(norm_first=norm_first, dropout=0.0, **{**DEEP, **fields})
    )
    stream = common.batches(data.train, 1500, seed, data.tokenizer)
    for _ in range(batches):
        model(**next(stream)).loss.backward()
    norms = {}
    for stack in ("encoder", "decoder"):
        layers = getattr(model.model, stack).layers
        norms[stack] = [
            (
                torch.cat([layer.ffn.fc1.weight.grad.flatten(), layer.ffn.fc2.weight.grad.flatten()]).norm() / batches
            ).item()
            for layer in layers
        ]
    return norms


@torch.no_grad()
def output_change(norm_first: bool, layers: int, scale: float = 0.01, seeds: int = 3) -> float:
    """|F(x, W + dW) - F(x, W)| / |F(x, W)| for the decoder output F at initialisation (dropout off), dW a random
    change of every weight matrix of `scale` times its own standard deviation; mean over `seeds` changes."""
    data = common.corpus()
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(common.config(
        norm_first=norm_first, dropout=0.0, encoder_layers=layers, decoder_layers=layers)).eval()  # fmt: skip
    inputs = common.collate(data.dev[:32], data.tokenizer)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(inputs.pop("labels"))

    def output() -> torch.Tensor:
        return model.model(**inputs, decoder_input_ids=decoder_input_ids).last_hidden_state

    before = output()
    original = {name: p.clone() for name, p in model.named_parameters()}
    changes = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))
        after = output()
        changes.append(((after - before).norm() / before.norm()).item())
        for name, p in model.named_parameters():
            p.copy_(original[name])
    return sum(changes) / len(changes)


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    gradients = {name: layer_gradient_norms(norm_first) for name, norm_first in (("post-LN", False), ("pre-LN", True))}
    distinct = {name: token_distinctness(norm_first, True, 6) for name, norm_first in (("post-LN", False),
                                                                                        ("pre-LN", True))}  # fmt: skip
    depths = DEPTHS[:2] if args.tiny else DEPTHS
    change = {name: [output_change(norm_first, n) for n in depths] for name, norm_first in (("post-LN", False),
                                                                                             ("pre-LN", True))}  # fmt: skip
    init_rows = [[f"layer {i + 1}", gradients["post-LN"]["decoder"][i], gradients["pre-LN"]["decoder"][i],
                  distinct["post-LN"][i], distinct["pre-LN"][i]] for i in range(DEEP["decoder_layers"])]  # fmt: skip
    change_rows = [[n, change["post-LN"][i], change["pre-LN"][i]] for i, n in enumerate(depths)]

    rates = RATES[:1] if args.tiny else RATES
    sweep = [common.Spec(f"{arm} @ {rate:g}", {**SWEEP_LAYERS, "norm_first": norm_first}, peak_lr=rate, ramp=ramp)
             for arm, (norm_first, ramp) in ARMS.items() for rate in rates]  # fmt: skip
    sweep.append(common.Spec("target LM (empty sources)", {**SWEEP_LAYERS}, data=common.blank_sources, decode=False))
    runs = {spec.name: run for spec, run in zip(sweep, common.run_all(sweep), strict=True)}
    plateau = runs.pop("target LM (empty sources)").dev_nll

    def nll(run: common.Run) -> float:
        return run.dev_nll if math.isfinite(run.dev_nll) else 2 * plateau  # diverged: drawn above the plateau

    # The rate where the four arms' final dev NLL spread most: two more seeds there (3 per arm for the headline).
    split = max(rates, key=lambda rate: max(nll(runs[f"{a} @ {rate:g}"]) for a in ARMS)
                - min(nll(runs[f"{a} @ {rate:g}"]) for a in ARMS))  # fmt: skip
    seconds = [common.Spec(f"{arm} @ {split:g}", {**SWEEP_LAYERS, "norm_first": norm_first}, peak_lr=split,
                           ramp=ramp, seed=seed)
               for arm, (norm_first, ramp) in ARMS.items() for seed in common.seeds(3)[1:] or (1,)]  # fmt: skip
    second = common.arms(common.run_all(seconds))  # name -> the extra seeds' runs
    sweep_rows, answers = [], []
    for arm in ARMS:
        sweep_rows.append(
            [
                arm,
                *[
                    common.spread(
                        [runs[f"{arm} @ {rate:g}"].dev_nll]
                        + ([r.dev_nll for r in second[f"{arm} @ {rate:g}"]] if rate == split else [])
                    )
                    for rate in rates
                ],
            ]
        )
        sweep_rows[-1].append(
            ", ".join(
                f"{rate:g}: step {runs[f'{arm} @ {rate:g}'].diverged_at}"
                for rate in rates
                if runs[f"{arm} @ {rate:g}"].diverged_at
            )
            or "none"
        )
    sweep_rows.append(["target-LM plateau (empty sources)", *[f"{plateau:.3f}"] * len(rates), "-"])

    def at_split(arm: str) -> list[float]:
        return [runs[f"{arm} @ {split:g}"].dev_nll] + [r.dev_nll for r in second[f"{arm} @ {split:g}"]]

    answers.append(
        f"the arms split most at peak {split:g}; there, with {1 + len(second[next(iter(second))])} paired seeds:"
    )
    answers.append(
        common.verdict(
            "post-LN warm-up", at_split("post-LN, warm-up"), "post-LN no warm-up", at_split("post-LN, no warm-up")
        )
    )
    answers.append(
        common.verdict(
            "pre-LN warm-up", at_split("pre-LN, warm-up"), "pre-LN no warm-up", at_split("pre-LN, no warm-up")
        )
    )
    answers.append(
        common.verdict("post-LN warm-up", at_split("post-LN, warm-up"), "pre-LN warm-up", at_split("pre-LN, warm-up"))
    )
    for arm in ARMS:
        learned = [f"{rate:g}" for rate in rates if nll(runs[f"{arm} @ {rate:g}"]) < plateau - 0.1]
        answers.append(f"{arm}: below the plateau - 0.1 at peak {', '.join(learned) or 'no rate'} (1 seed per rate)")
    answers.append(
        f"token distinctness after layer 6 at initialisation: post-LN {distinct['post-LN'][5]:.3f}, "
        f"pre-LN {distinct['pre-LN'][5]:.3f}"
    )

    plt = common.pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(19, 4))
    layers = range(1, DEEP["decoder_layers"] + 1)
    for name, norms in gradients.items():
        axes[0].plot(layers, norms["decoder"], "o-", label=name)
        axes[1].plot(layers, distinct[name], "o-", label=name)
        axes[2].plot(depths, change[name], "o-", label=name)
    axes[0].set(xlabel="decoder layer", ylabel="|grad W_1, W_2|", yscale="log", title="Gradients at init (6+6)")
    axes[1].set(xlabel="encoder layer", ylabel="token-specific share", yscale="log", title="Token distinctness at init")
    axes[2].set(xlabel="layers per stack N", ylabel="relative output change", title="Output change for a fixed dW")
    for arm in ARMS:
        values = [nll(runs[f"{arm} @ {rate:g}"]) for rate in rates]
        line = axes[3].plot(rates, values, "o-", label=arm)
        for run in second[f"{arm} @ {split:g}"]:
            axes[3].plot([split], [nll(run)], "x", color=line[0].get_color())
        for rate, value in zip(rates, values, strict=True):
            if runs[f"{arm} @ {rate:g}"].diverged_at:
                axes[3].plot([rate], [value], "v", color="red", markersize=10)
    axes[3].axhline(plateau, color="gray", ls="--", label="target-LM plateau")
    axes[3].set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="final dev NLL per token",
                title="Learning-rate sensitivity, 4+4 layers (x: more seeds)")  # fmt: skip
    for axis in axes:
        axis.legend(fontsize=8)
    steps = common.TINY_STEPS if args.tiny else common.STEPS
    common.save(
        "layer_norm",
        {"At initialisation, 6 + 6 layers: FFN gradient norm per decoder layer, token distinctness per encoder layer":
            common.markdown_table(["layer", "grad post-LN", "grad pre-LN", "distinct post-LN", "distinct pre-LN"],
                                  init_rows),
         "Output change for a fixed random change of 1% of each weight's SD, against depth": common.markdown_table(
             ["N", "post-LN", "pre-LN"], change_rows),
         f"Final dev NLL against the peak rate, 4 + 4 layers, {steps} steps (warm-up {common.WARMUP} or none)":
            common.markdown_table(["arm", *[f"peak {r:g}" for r in rates], "diverged"], sweep_rows)},
        {"gradients": gradients, "distinctness": distinct, "output_change": dict(zip(depths, zip(*change.values(), strict=True), strict=True)),
         "plateau": plateau, "split_rate": split, "runs": {n: r.summary() for n, r in runs.items()},
         "more_seeds": {n: [r.summary() for r in rs] for n, rs in second.items()}},
        figure, args.out, answers)  # fmt: skip


if __name__ == "__main__":
    main()
