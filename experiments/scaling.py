"""Experiment 1: why attention divides by sqrt(d_k) (§3.2.1, footnote 4).

If the components of q and k are independent with mean 0 and variance 1, q.k has variance d_k: the larger d_k, the
further the softmax is pushed into regions where it is nearly one-hot and its gradient vanishes. Measured at
initialisation for d_k from 16 to 4096 (one head, d_model = d_k, the model's own attention layer and initialisation,
random unit-variance inputs of 64 positions), with and without the 1/sqrt(d_k): the variance of the Q K^T entries,
the softmax's entropy, the share of saturated rows (largest weight > 0.9999: no gradient reaches their scores) and
the median per-row norm of the softmax's Jacobian. Then training (the shared protocol) with one head at d_k 16 and
256, scaled and unscaled (3 paired seeds), plus a control (2 seeds) at 256: unscaled with W^Q initialised 1/sqrt(d_k) smaller, identical to the
scaled model at initialisation, so that what remains is the learning-rate effect of the missing factor under Adam.

    python -m experiments.scaling [--tiny]
"""

from __future__ import annotations

import math

import torch

from experiments import common
from hf_vanilla_transformer import VanillaTransformerConfig
from hf_vanilla_transformer.modeling_vanilla_transformer import VanillaTransformerAttention

D_K = (16, 32, 64, 128, 256, 512, 1024, 4096)
SATURATED = 0.9999  # a row whose largest weight exceeds this passes back (almost) no gradient
TRAIN_D_K = (16, 256)


def unscaled(model) -> None:
    """The experiment's variant: every attention layer computes softmax(Q K^T) V (no 1/sqrt(d_k))."""
    for module in model.modules():
        if isinstance(module, VanillaTransformerAttention):
            module.scaling = 1.0


def unscaled_small_query(model) -> None:
    """The control: no 1/sqrt(d_k), but W^Q (and its bias) 1/sqrt(d_k) smaller, so the scores at initialisation are
    those of the scaled model."""
    unscaled(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, VanillaTransformerAttention):
                module.q_proj.weight.mul_(module.d_k**-0.5)
                module.q_proj.bias.mul_(module.d_k**-0.5)


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the attention distributions in the last dimension."""
    return -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1).mean()


def jacobian_norms(weights: torch.Tensor) -> torch.Tensor:
    """Per row p, the Frobenius norm of the softmax's Jacobian diag(p) - p p^T:
    sqrt(sum p_i^2 - 2 sum p_i^3 + (sum p_i^2)^2). 0 for a one-hot row."""
    squares = (weights**2).sum(-1)
    return (squares - 2 * (weights**3).sum(-1) + squares**2).clamp_min(0).sqrt()


def saturated_share(weights: torch.Tensor) -> float:
    """The share of rows whose largest weight exceeds SATURATED."""
    return (weights.max(-1).values > SATURATED).float().mean().item()


def at_initialisation(d_k: int, scaled: bool, positions: int = 64, batch: int = 8, seed: int = 0) -> dict[str, float]:
    """One head of the model's attention layer (eager, d_model = d_k, Xavier-uniform projections, zero biases) on
    random unit-variance inputs."""
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
    with torch.no_grad():
        scores = layer.q_proj(x) @ layer.k_proj(x).transpose(-1, -2) * layer.scaling  # (B, T, T), Eq. 1 by hand
        weights = torch.softmax(scores, dim=-1)
        torch.testing.assert_close(layer.o_proj(weights @ layer.v_proj(x)), layer(x)[0], rtol=1e-4, atol=1e-4)
    return {
        "score_variance": scores.var().item(),
        "entropy": entropy(weights).item(),
        "saturated_rows": saturated_share(weights),
        "median_jacobian_norm": jacobian_norms(weights).median().item(),
    }


@torch.no_grad()
def trained_saturation(model, data: common.Corpus) -> dict[str, float]:
    """The share of saturated rows of the trained model's encoder self-attention and cross-attention on the dev
    split (real query rows only)."""
    model.eval()
    model.config._attn_implementation = "eager"
    inputs = common.collate(data.dev[:200], data.tokenizer)
    outputs = model(**inputs, output_attentions=True)
    source_rows = inputs["attention_mask"].bool()  # (B, S)
    target_rows = inputs["labels"] != -100  # (B, T)
    encoder = torch.cat([a.transpose(1, 2)[source_rows] for a in outputs.encoder_attentions])
    cross = torch.cat([a.transpose(1, 2)[target_rows] for a in outputs.cross_attentions])
    return {"encoder_saturated": saturated_share(encoder), "cross_saturated": saturated_share(cross)}


ARMS = {"scaled": None, "unscaled": unscaled, "unscaled, W^Q / sqrt(d_k)": unscaled_small_query}


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    d_ks = D_K[:3] if args.tiny else D_K
    rows, data = [], {"initialisation": {}, "training": {}}
    for d_k in d_ks:
        scaled, plain = at_initialisation(d_k, True), at_initialisation(d_k, False)
        data["initialisation"][d_k] = {"scaled": scaled, "unscaled": plain}
        rows.append([d_k, plain["score_variance"] / d_k, scaled["score_variance"], 100 * plain["saturated_rows"],
                     100 * scaled["saturated_rows"], plain["median_jacobian_norm"], scaled["median_jacobian_norm"],
                     plain["entropy"], scaled["entropy"]])  # fmt: skip
    header = ["d_k", "var QK^T / d_k", "var QK^T/sqrt(d_k)", "saturated rows % (unscaled)", "saturated rows % (scaled)",
              "median row Jacobian (unscaled)", "median row Jacobian (scaled)", "entropy (unscaled)",
              "entropy (scaled)"]  # fmt: skip

    specs = [common.Spec(f"d_k {d_k}, {arm}", {"h": 1, "d_k": d_k}, seed=seed, change_model=change,
                         probe=trained_saturation)
             for d_k in TRAIN_D_K for arm, change in ARMS.items() if d_k == 256 or arm != "unscaled, W^Q / sqrt(d_k)"
             for seed in common.seeds(3 if arm != "unscaled, W^Q / sqrt(d_k)" else 2)]  # fmt: skip
    groups = common.arms(common.run_all(specs))
    data["training"] = {name: [r.summary() for r in runs] for name, runs in groups.items()}
    training_rows, answers = [], []
    for name, runs in groups.items():
        training_rows.append([name, common.spread([r.dev_nll for r in runs]), common.spread([r.exact for r in runs]),
                              common.spread([100 * r.probes.get("encoder_saturated", math.nan) for r in runs]),
                              common.spread([100 * r.probes.get("cross_saturated", math.nan) for r in runs])])  # fmt: skip
    for d_k in TRAIN_D_K:
        base = [r.dev_nll for r in groups[f"d_k {d_k}, scaled"]]
        for arm in list(ARMS)[1:]:
            if f"d_k {d_k}, {arm}" in groups:
                answers.append(common.verdict(f"d_k {d_k} scaled", base, f"d_k {d_k} {arm}",
                                              [r.dev_nll for r in groups[f"d_k {d_k}, {arm}"]]))  # fmt: skip

    plt = common.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("scaled", "with 1/sqrt(d_k)"), ("unscaled", "without")):
        axes[0].plot(d_ks, [100 * data["initialisation"][d][key]["saturated_rows"] for d in d_ks], "o-", label=label)
    axes[0].set(
        xscale="log", xlabel="d_k", ylabel="saturated softmax rows (%)", title="At initialisation (64 positions)"
    )
    axes[0].legend()
    for axis, d_k in zip(axes[1:], TRAIN_D_K, strict=True):
        for arm in ARMS:
            if f"d_k {d_k}, {arm}" in groups:
                common.band(axis, groups[f"d_k {d_k}, {arm}"], arm)
        axis.set(xlabel="step", ylabel="dev NLL per token", yscale="log", title=f"Training, one head, d_k = {d_k}")
        axis.legend(fontsize=8)
    steps = specs[0].steps if not args.tiny else common.TINY_STEPS
    common.save("scaling", {
        "At initialisation (one head, d_model = d_k, 8 x 64 x 64 scores)": common.markdown_table(header, rows),
        f"Training ({steps} steps, warm-up {common.WARMUP}, peak {common.PEAK_LR:g}; mean (min-max) over seeds)":
            common.markdown_table(["arm", "dev NLL", "dev exact %", "saturated encoder rows %",
                                   "saturated cross rows %"], training_rows)}, data, figure, args.out, answers)  # fmt: skip


if __name__ == "__main__":
    main()
