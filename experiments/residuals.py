"""Experiment 4: what the residual connections buy (§3.1: "We employ a residual connection around each of the two
sub-layers, followed by layer normalization").

The same deeper model as experiment 3 (6 + 6 layers, post-LN as in the paper) with every sub-layer's residual
connection removed, LayerNorm(Sublayer(x)) instead of LayerNorm(x + Sublayer(x)): the gradient norm reaching each
encoder layer at initialisation, and a training run of each.

    python -m experiments.residuals [--tiny]
"""

from __future__ import annotations

import torch

from experiments import common
from experiments.layer_norm import DEEP
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.modeling_vanilla_transformer import VanillaTransformerResidual

PEAK = 1e-3


def without_residual(residual: VanillaTransformerResidual, x: torch.Tensor, sublayer) -> torch.Tensor:
    """The experiment's variant of a sub-layer: LayerNorm(Dropout(Sublayer(x))), no `x +`."""
    return residual.layer_norm(residual.dropout(sublayer(x)))


def remove_residuals(model) -> None:
    for module in model.modules():
        if isinstance(module, VanillaTransformerResidual):
            module.forward = without_residual.__get__(module)


def encoder_gradient_norms(residual: bool, batches: int = 4, seed: int = 0) -> list[float]:
    """Per encoder layer, the gradient norm of all its weights at initialisation (dropout off)."""
    data = common.corpus()
    torch.manual_seed(seed)
    model = VanillaTransformerForConditionalGeneration(common.config(dropout=0.0, **DEEP))
    if not residual:
        remove_residuals(model)
    stream = common.batches(data.train, 1500, seed, data.tokenizer)
    for _ in range(batches):
        model(**next(stream)).loss.backward()
    return [
        (torch.cat([p.grad.flatten() for p in layer.parameters()]).norm() / batches).item()
        for layer in model.model.encoder.layers
    ]


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    norms = {"residual": encoder_gradient_norms(True), "no residual": encoder_gradient_norms(False)}
    rows = [
        [f"encoder layer {i + 1}", norms["residual"][i], norms["no residual"][i]] for i in range(DEEP["encoder_layers"])
    ]
    steps = 5 if args.tiny else 300
    # The rate at which experiment 3's post-LN model of this depth trains (the formula's peak, 0.0125 at warm-up 100,
    # trains neither variant in this budget).
    runs = [
        common.train_run("residual (paper)", common.config(**DEEP), steps, peak_lr=PEAK, warmup=100),
        common.train_run("no residual", common.config(**DEEP), steps, peak_lr=PEAK, warmup=100,
                         change_model=remove_residuals),
    ]  # fmt: skip
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, values in norms.items():
        axes[0].plot(range(1, len(values) + 1), values, "o-", label=name)
    axes[0].set(xlabel="encoder layer", ylabel="|grad| of the layer's weights", yscale="log",
                title="At initialisation (6+6 layers, post-LN)")  # fmt: skip
    axes[0].legend()
    for run in runs:
        axes[1].plot(run.steps, run.losses, label=run.name)
    axes[1].set(xlabel="step", ylabel="training loss", title=f"Training, peak learning rate {PEAK:g}")
    axes[1].legend()
    common.save(
        "residuals",
        {"Gradient norm of each encoder layer's weights at initialisation": common.markdown_table(
            ["layer", "with residuals", "without"], rows),
         f"Training, 6 + 6 layers, {steps} steps, peak learning rate {PEAK:g}": common.markdown_table(
            ["model", "final train loss", "dev perplexity", "dev BLEU", "dev chrF"],
            [[r.name, r.losses[-1] if r.losses else float("nan"), r.dev_perplexity, r.dev_bleu, r.dev_chrf]
             for r in runs])},
        {"gradients": norms, "runs": {r.name: {**r.summary(), "curve": [r.steps, r.losses]} for r in runs}},
        figure, args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
