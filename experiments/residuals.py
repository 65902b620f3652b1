"""Experiment 4: what the residual connections buy (§3.1: "We employ a residual connection around each of the two
sub-layers, followed by layer normalization").

The variant removes every sub-layer's residual connection: LayerNorm(Sublayer(x)) instead of LayerNorm(x +
Sublayer(x)) (pre-LN: Sublayer(LayerNorm(x)) instead of x + Sublayer(LayerNorm(x))). Measured at initialisation
(forward only, dropout off): token distinctness, the share of the encoder output that differs between the tokens of
a sentence, |H - mean_t H|^2 / |H|^2, after each of 1..12 layers, post-LN and pre-LN, with and without residuals
(rank collapse: Dong et al. 2021, Noci et al. 2022). Then training (the shared protocol) at N = 1 and 2 layers per
stack, with and without residuals, 3 paired seeds, beside the target-language-model plateau: a model trained on
empty sources, what a decoder reaches that ignores the encoder.

    python -m experiments.residuals [--tiny]
"""

from __future__ import annotations

import torch

from experiments import common
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.modeling_vanilla_transformer import VanillaTransformerResidual

DEPTH = 12
TRAIN_LAYERS = (1, 2)


def without_residual(residual: VanillaTransformerResidual, x: torch.Tensor, sublayer) -> torch.Tensor:
    """The experiment's variant of a sub-layer: LayerNorm(Dropout(Sublayer(x))), or with norm_first
    Dropout(Sublayer(LayerNorm(x))); no `x +`."""
    if residual.norm_first:
        return residual.dropout(sublayer(residual.layer_norm(x)))
    return residual.layer_norm(residual.dropout(sublayer(x)))


def remove_residuals(model) -> None:
    for module in model.modules():
        if isinstance(module, VanillaTransformerResidual):
            module.forward = without_residual.__get__(module)


@torch.no_grad()
def token_distinctness(norm_first: bool, residual: bool, layers: int = DEPTH, seed: int = 0) -> list[float]:
    """After each encoder layer at initialisation (dropout off), the mean over 64 dev sentences of
    |H - mean_t H|^2 / |H|^2 over the sentence's real tokens: 1 - (share of the common vector)."""
    data = common.corpus()
    torch.manual_seed(seed)
    model = VanillaTransformerForConditionalGeneration(common.config(
        norm_first=norm_first, dropout=0.0, encoder_layers=layers, decoder_layers=1)).eval()  # fmt: skip
    if not residual:
        remove_residuals(model)
    inputs = common.collate(data.dev[:64], data.tokenizer)
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in model.model.encoder.layers]
    model.model.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    for hook in hooks:
        hook.remove()
    mask = inputs["attention_mask"].unsqueeze(-1).float()  # (B, S, 1)
    shares = []
    for hidden in outputs:
        mean = (hidden * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        specific = (((hidden - mean) ** 2) * mask).sum((1, 2))
        total = ((hidden**2) * mask).sum((1, 2))
        shares.append((specific / total).mean().item())
    return shares


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    variants = {(norm, res): token_distinctness(norm, res) for norm in (False, True) for res in (True, False)}
    label = {(False, True): "post-LN, residual (paper)", (False, False): "post-LN, no residual",
             (True, True): "pre-LN, residual", (True, False): "pre-LN, no residual"}  # fmt: skip
    init_rows = [[label[key], *values[:4], values[5], values[-1]] for key, values in variants.items()]

    specs = [common.Spec(f"N {n}, {'residual' if res else 'no residual'}",
                         {"encoder_layers": n, "decoder_layers": n}, seed=seed,
                         change_model=None if res else remove_residuals, decode=True)
             for n in TRAIN_LAYERS for res in (True, False) for seed in common.seeds(3)]  # fmt: skip
    specs.append(common.Spec("target LM (empty sources)", seed=0, data=common.blank_sources, decode=False))
    groups = common.arms(common.run_all(specs))
    plateau = groups.pop("target LM (empty sources)")[0].dev_nll
    rows = [[name, common.spread([r.dev_nll for r in runs]), common.spread([r.exact for r in runs])]
            for name, runs in groups.items()]  # fmt: skip
    rows.append(["target-LM plateau (empty sources, 1 seed)", f"{plateau:.3f}", "-"])
    answers = [common.verdict(f"N {n} residual", [r.dev_nll for r in groups[f"N {n}, residual"]],
                              f"N {n} no residual", [r.dev_nll for r in groups[f"N {n}, no residual"]])
               for n in TRAIN_LAYERS]  # fmt: skip
    for name, runs in groups.items():
        below = sum(r.dev_nll < plateau - 0.1 for r in runs)
        answers.append(f"{name}: {below} of {len(runs)} seeds end below the target-LM plateau ({plateau:.3f}) - 0.1")

    plt = common.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, values in variants.items():
        axes[0].plot(range(1, len(values) + 1), values, "o-", label=label[key])
    axes[0].set(xlabel="encoder layer", ylabel="token-specific share", yscale="log", ylim=(1e-4, 1.2),
                title="Token distinctness at initialisation")  # fmt: skip
    axes[0].legend(fontsize=8)
    for name, runs in groups.items():
        common.band(axes[1], runs, name)
    axes[1].axhline(plateau, color="gray", ls="--", label="target-LM plateau")
    axes[1].set(xlabel="step", ylabel="dev NLL per token", yscale="log", title="Training (shared protocol)")
    axes[1].legend(fontsize=8)
    steps = common.TINY_STEPS if args.tiny else common.STEPS
    common.save(
        "residuals",
        {"Token distinctness of the encoder output at initialisation (d_model 64)": common.markdown_table(
            ["model", "layer 1", "layer 2", "layer 3", "layer 4", "layer 6", f"layer {DEPTH}"], init_rows),
         f"Training, {steps} steps (mean (min-max) over seeds)": common.markdown_table(
            ["model", "dev NLL", "dev exact %"], rows)},
        {"distinctness": {label[k]: v for k, v in variants.items()}, "plateau": plateau,
         "runs": {name: [r.summary() for r in runs] for name, runs in groups.items()}},
        figure, args.out, answers)  # fmt: skip


if __name__ == "__main__":
    main()
