"""Experiment 1: why attention divides by sqrt(d_k) (§3.2.1, footnote 4).

If the components of q and k are independent with mean 0 and variance 1, q.k has variance d_k: the larger d_k, the
further the softmax is pushed into regions where it is nearly one-hot and its gradient vanishes. Measured at
initialisation for d_k from 16 to 1024 (one head, d_model = d_k, the model's own attention layer and
initialisation, random unit-variance inputs of 64 positions), with and without the 1/sqrt(d_k): the variance of the
Q K^T entries, the softmax's entropy and largest weight, the gradient the softmax passes back to the scores and the
gradient norm reaching W^Q. Then a short training run of
the small model with one head (d_k = 64) with and without the scaling.

    python -m experiments.scaling [--tiny]
"""

from __future__ import annotations

import math

import torch

from experiments import common
from hf_vanilla_transformer import VanillaTransformerConfig
from hf_vanilla_transformer.modeling_vanilla_transformer import VanillaTransformerAttention

D_K = (16, 32, 64, 128, 256, 512, 1024)


def unscaled(model) -> None:
    """The experiment's variant: every attention layer computes softmax(Q K^T) V (no 1/sqrt(d_k))."""
    for module in model.modules():
        if isinstance(module, VanillaTransformerAttention):
            module.scaling = 1.0


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the attention distributions in the last dimension."""
    return -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1).mean()


def at_initialisation(d_k: int, scaled: bool, positions: int = 64, batch: int = 8, seed: int = 0) -> dict[str, float]:
    """One head of the model's attention layer (eager, d_model = d_k, Xavier-uniform projections, zero biases) on
    random unit-variance inputs; the loss is a fixed random projection of its output."""
    torch.manual_seed(seed)
    config = VanillaTransformerConfig(vocab_size=8, d_model=d_k, d_ff=4, h=1, dropout=0.0)
    config._attn_implementation = "eager"
    layer = VanillaTransformerAttention(config, layer_idx=0, is_causal=False, is_cross_attention=False)
    for projection in (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj):
        torch.nn.init.xavier_uniform_(projection.weight)  # the model's initialisation (_init_weights)
        torch.nn.init.zeros_(projection.bias)
    if not scaled:
        layer.scaling = 1.0
    x = torch.randn(batch, positions, d_k)
    # Eq. 1 step by step, to reach the scores' gradient; checked against the layer's own output.
    scores = layer.q_proj(x) @ layer.k_proj(x).transpose(-1, -2) * layer.scaling  # (B, T, T)
    scores.retain_grad()
    weights = torch.softmax(scores, dim=-1)
    output = layer.o_proj(weights @ layer.v_proj(x))
    with torch.no_grad():
        torch.testing.assert_close(output, layer(x)[0], rtol=1e-4, atol=1e-4)
    (output * torch.randn_like(output)).sum().backward()
    return {
        "score_variance": scores.var().item(),
        "entropy": entropy(weights).item(),
        "max_weight": weights.max(-1).values.mean().item(),
        "grad_norm_scores": scores.grad.norm().item(),  # what the softmax passes back
        "grad_norm_WQ": layer.q_proj.weight.grad.norm().item(),
    }


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    d_ks = D_K[:3] if args.tiny else D_K
    rows, data = [], {"initialisation": {}, "training": {}}
    for d_k in d_ks:
        with_scale, without = at_initialisation(d_k, True), at_initialisation(d_k, False)
        data["initialisation"][d_k] = {"scaled": with_scale, "unscaled": without}
        rows.append([d_k, without["score_variance"], with_scale["score_variance"], without["entropy"],
                     with_scale["entropy"], without["max_weight"], with_scale["max_weight"],
                     without["grad_norm_scores"], with_scale["grad_norm_scores"], without["grad_norm_WQ"],
                     with_scale["grad_norm_WQ"]])  # fmt: skip
    header = ["d_k", "var QK^T", "var QK^T/sqrt(d_k)", f"entropy (uniform {math.log(64):.2f})", "entropy scaled",
              "max weight", "max weight scaled", "|dL/dscores|", "|dL/dscores| scaled", "|dL/dW^Q|",
              "|dL/dW^Q| scaled"]  # fmt: skip
    steps = 5 if args.tiny else 300
    runs = []
    for scaled in (True, False):
        name = "1/sqrt(d_k)" if scaled else "no scaling"
        runs.append(common.train_run(name, common.config(h=1), steps, change_model=None if scaled else unscaled))
        data["training"][name] = {**runs[-1].summary(), "curve": [runs[-1].steps, runs[-1].losses]}
    training = common.markdown_table(
        ["attention", "final train loss", "dev perplexity", "dev BLEU", "dev chrF"],
        [[r.name, r.losses[-1], r.dev_perplexity, r.dev_bleu, r.dev_chrf] for r in runs],
    )
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for key, label in (("scaled", "with 1/sqrt(d_k)"), ("unscaled", "without")):
        axes[0].plot(d_ks, [data["initialisation"][d][key]["entropy"] for d in d_ks], "o-", label=label)
        axes[1].plot(d_ks, [data["initialisation"][d][key]["grad_norm_scores"] for d in d_ks], "o-", label=label)
    axes[0].axhline(math.log(64), color="gray", ls=":", label="uniform")
    axes[0].set(xscale="log", xlabel="d_k", ylabel="softmax entropy (nats)", title="Attention at initialisation")
    axes[1].set(xscale="log", yscale="log", xlabel="d_k", ylabel="|dL/d scores|", title="Gradient through the softmax")
    for run in runs:
        axes[2].plot(run.steps, run.losses, label=run.name)
    axes[2].set(xlabel="step", ylabel="training loss", title="Training, one head, d_k = 64")
    for axis in axes:
        axis.legend()
    common.save("scaling", {"At initialisation (64 positions, one head, d_model = d_k)": common.markdown_table(
        header, rows), f"Training ({steps} steps)": training}, data, figure, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
