"""Model cards rendered with `huggingface_hub.ModelCard` from `templates/model_card.md` (inside the package, so an
installed wheel renders cards too).

    python -m hf_vanilla_transformer_training.model_card --preset base --out model_cards/base.md  # untrained
    python -m hf_vanilla_transformer_training.model_card --preset big --out model_cards/big.md

`training/train.py` (`hf_vanilla_transformer_training.train`) writes the demo model's card (README.md in its model folder) with its measured results,
learning curve and attention maps. `check_card` validates a card offline: its metadata parses into
`ModelCardData`, names the required fields, and its `model-index` parses back into the reported results;
`ModelCard.validate()` (the Hub's own check) runs too when asked (`online=True`, as `push_to_hub.py` does).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_vanilla_transformer import (
    PAPER_VOCAB_SIZE,
    TABLE3_REPORTED,
    VanillaTransformerConfig,
    deviations_from_paper,
    paper_parameter_count,
    table3_row,
)

TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"  # package data (see pyproject.toml)
REQUIRED_METADATA = ("library_name", "pipeline_tag", "language", "license", "tags")


def paper_params(preset: str) -> str:
    """The paper's column and the formula at V = 37000, e.g. '65M (formula at V=37000: 63.1M)'."""
    formula = paper_parameter_count(VanillaTransformerConfig.from_preset(preset, vocab_size=PAPER_VOCAB_SIZE))
    return f"{TABLE3_REPORTED[preset]['params_m']}M (formula at V={PAPER_VOCAB_SIZE}: {formula / 1e6:.1f}M)"


def architecture_rows(config: VanillaTransformerConfig) -> list[tuple[str, ...]]:
    base, big = VanillaTransformerConfig.from_preset("base"), VanillaTransformerConfig.from_preset("big")
    rows = [("N (encoder / decoder layers)", "6", "6", f"{config.encoder_layers} / {config.decoder_layers}")]
    for label, key in (("d_model", "d_model"), ("d_ff", "d_ff"), ("h", "h"), ("d_k", "d_k"), ("d_v", "d_v"),
                       ("P_drop", "dropout"), ("eps_ls", "label_smoothing")):  # fmt: skip
        rows.append((label, str(getattr(base, key)), str(getattr(big, key)), str(getattr(config, key))))
    rows += [
        ("vocabulary (shared, BPE)", "~37000", "~37000", str(config.vocab_size)),
        ("positional encoding", "sinusoidal", "sinusoidal", config.position_encoding),
        ("sub-layer norm", "post-LN", "post-LN", "pre-LN" if config.norm_first else "post-LN"),
        (
            "source / target / output matrix",
            "one, shared",
            "one, shared",
            "one, shared" if config.tie_word_embeddings else "three",
        ),
        ("parameters", *(paper_params(name) for name in ("base", "big")), f"{paper_parameter_count(config):,}"),
    ]
    return rows


def render_card(
    config: VanillaTransformerConfig,
    *,
    repo_id: str,
    title: str,
    summary: str,
    training: str,
    results: str,
    limitations: str,
    languages: tuple[str, str] = ("en", "de"),
    datasets: list[str] | None = None,
    scores: dict[str, float] | None = None,
    dataset_name: str = "",
    dataset_type: str = "",
    pictures: list[tuple[str, str]] | None = None,
    example_source: str = "",
    tags: list[str] | None = None,
) -> ModelCard:
    """`scores` (BLEU, chrF, exact match, measured) become the card's `model-index`."""
    eval_results = None
    if scores:
        eval_results = [
            EvalResult(
                task_type="translation",
                task_name=f"Translation {languages[0]}-{languages[1]}",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split="test",
                metric_type=metric,
                metric_name=name,
                metric_value=round(float(scores[metric]), 2),
            )
            for metric, name in (("bleu", "sacreBLEU"), ("chrf", "chrF"), ("exact_match", "Exact match (%)"))
            if metric in scores
        ]
    card_data = ModelCardData(
        language=list(languages),
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="translation",
        tags=["translation", "transformer", "attention-is-all-you-need", "vanilla-transformer", *(tags or [])],
        datasets=datasets,
        model_name=repo_id,
        eval_results=eval_results,
    )
    if not TEMPLATE.is_file():
        raise FileNotFoundError(
            f"The model card template {TEMPLATE} is missing: the installed package is incomplete; reinstall it."
        )
    row = table3_row(config)
    table3_sentence = (
        f"The sizes are Table 3's row `{row}`." if row else "The sizes are no row of Table 3 (see the deviations)."
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=title,
        summary=summary,
        architecture=architecture_rows(config),
        table3_sentence=table3_sentence,
        deviations=deviations_from_paper(config),
        training=training,
        results=results,
        pictures=pictures or [],
        repo_id=repo_id,
        example_source=repr(example_source or "Friday, August 26, 1955"),
        limitations=limitations,
    )


def check_card(path: str | Path, online: bool = False) -> ModelCard:
    """Loads a card and checks its metadata (offline; with `online`, also by the Hub); raises ValueError naming
    what is wrong."""
    card = ModelCard.load(path)
    metadata = card.data.to_dict()
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
    if missing:
        raise ValueError(f"The model card {path} lacks metadata: {', '.join(missing)}.")
    if metadata["library_name"] != "transformers" or metadata["pipeline_tag"] != "translation":
        raise ValueError(f"The model card {path} must have library_name transformers and pipeline_tag translation.")
    if "model-index" in metadata:
        try:
            name, results = model_index_to_eval_results(metadata["model-index"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"The model card {path} has a model-index that does not parse: {error}") from error
        if not results:
            raise ValueError(f"The model card {path} has an empty model-index.")
    if online:  # the Hub's own validation: a ValueError when the Hub rejects the metadata
        try:
            card.validate()
        except ValueError as error:
            raise ValueError(f"The Hub rejects the model card {path}: {error}") from error
    return card


UNTRAINED_LIMITATIONS = (
    "This card describes an architecture, not trained weights: a model built from it translates nothing until it "
    "is trained (`vanilla-transformer-train --preset {preset} ...`, see the package README). Trained on WMT14 "
    "EN-DE with the paper's recipe, the paper reports {bleu} BLEU on newstest2014 (tokenized, compound-split BLEU; "
    "sacreBLEU on detokenized text is up to ~1.5 lower)."
)


def preset_card(preset: str) -> ModelCard:
    config = VanillaTransformerConfig.from_preset(preset, vocab_size=37000)
    paper_bleu = {"base": "27.3", "big": "28.4"}.get(preset, "the Table 3")
    return render_card(
        config,
        repo_id=f"vanilla-transformer-{preset}-untrained",
        title=f"Transformer ({preset}), untrained",
        summary=f"The paper's {preset} model (Table 3) at the paper's 37000-token shared vocabulary: "
        f"{paper_parameter_count(config):,} parameters. **Untrained**: this card documents the architecture.",
        training="Not trained. The paper's recipe: WMT14 EN-DE (4.5M pairs), Adam (0.9, 0.98, 1e-9), the "
        "warm-up-4000 inverse-square-root schedule, label smoothing 0.1, batches of ~25000 source + 25000 target "
        f"tokens, {'100K' if preset != 'big' else '300K'} steps, averaging the last "
        f"{'5' if preset != 'big' else '20'} checkpoints.",
        results="None measured: the weights are untrained. Paper (Table 2, newstest2014): base 27.3 BLEU EN-DE, "
        "38.1 EN-FR; big 28.4 EN-DE, 41.8 EN-FR.",
        limitations=UNTRAINED_LIMITATIONS.format(preset=preset, bleu=paper_bleu),
        datasets=["wmt14"],
        tags=["untrained"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=["base", "big"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    card = preset_card(args.preset)
    card.save(args.out)
    check_card(args.out)
    print(f"Wrote {args.out}")


def result_lines(scores: dict[str, Any]) -> str:
    return (
        f"| split | pairs | sacreBLEU | chrF | exact match |\n|---|---|---|---|---|\n"
        f"| test | {scores['pairs']} | {scores['bleu']:.2f} | {scores['chrf']:.2f} | {scores['exact_match']:.2f}% |"
    )


if __name__ == "__main__":
    main()
