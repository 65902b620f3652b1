"""Experiment 3: post-LN, pre-LN and the warm-up (Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture").

The paper's sub-layers are post-LN, LayerNorm(x + Sublayer(x)), trained with a 4000-step warm-up (§5.3). Xiong et
al. show that at initialisation post-LN's gradients are largest near the output, so large early steps can diverge
without a warm-up, while pre-LN (x + Sublayer(LayerNorm(x)), the config's `norm_first`) has well-behaved gradients
and trains without one. Measured on a deeper model (6 + 6 layers, d_model 64): the gradient norm of each decoder
layer's feed-forward weights at initialisation for both, and training runs of post-LN / pre-LN x warm-up / none x
two peak learning rates.

    python -m experiments.layer_norm [--tiny]
"""

from __future__ import annotations

import torch

from experiments import common
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration

DEEP = {"encoder_layers": 6, "decoder_layers": 6}


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


def outcome(run: common.Run, first_loss: float) -> str:
    if run.diverged_at is not None:
        return f"diverged (step {run.diverged_at})"
    if run.losses[-1] > 0.8 * first_loss:
        return "stalled"
    return "trained"


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    gradients = {name: layer_gradient_norms(norm_first) for name, norm_first in (("post-LN", False), ("pre-LN", True))}
    rows = [[f"decoder layer {i + 1}", gradients["post-LN"]["decoder"][i], gradients["pre-LN"]["decoder"][i]]
            for i in range(DEEP["decoder_layers"])]  # fmt: skip
    steps = 5 if args.tiny else 300
    warmup = 100
    rates = (1e-3,) if args.tiny else (1e-3, 3e-3)
    runs = []
    for norm_first in (False, True):
        for ramp in (True, False):
            for rate in rates:
                name = f"{'pre' if norm_first else 'post'}-LN, {'warm-up' if ramp else 'no warm-up'}, peak {rate:g}"
                config = common.config(norm_first=norm_first, **DEEP)
                runs.append(common.train_run(name, config, steps, peak_lr=rate, warmup=warmup, ramp=ramp))
    training_rows = []
    for run in runs:
        first = run.losses[0] if run.losses else float("nan")
        training_rows.append([run.name, outcome(run, first), run.losses[-1] if run.losses else float("nan"),
                              run.dev_perplexity, run.dev_bleu, run.dev_chrf])  # fmt: skip
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 1 + len(rates), figsize=(5 * (1 + len(rates)), 3.8))
    layers = range(1, DEEP["decoder_layers"] + 1)
    for name, norms in gradients.items():
        axes[0].plot(layers, norms["decoder"], "o-", label=name)
    axes[0].set(xlabel="decoder layer", ylabel="|grad W_1, W_2|", yscale="log", title="At initialisation (6+6 layers)")
    axes[0].legend()
    for axis, rate in zip(axes[1:], rates, strict=True):
        for run in runs:
            if f"peak {rate:g}" in run.name:
                axis.plot(run.steps, run.losses, label=run.name.rsplit(",", 1)[0])
        axis.set(xlabel="step", ylabel="training loss", title=f"Peak learning rate {rate:g}, warm-up {warmup} steps")
        axis.legend(fontsize=8)
    common.save(
        "layer_norm",
        {"Gradient norm of each decoder layer's FFN weights at initialisation": common.markdown_table(
            ["layer", "post-LN", "pre-LN"], rows),
         f"Training, 6 + 6 layers, {steps} steps": common.markdown_table(
            ["run", "outcome", "final train loss", "dev perplexity", "dev BLEU", "dev chrF"], training_rows)},
        {"gradients": gradients, "runs": {r.name: {**r.summary(), "curve": [r.steps, r.losses]} for r in runs}},
        figure, args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
