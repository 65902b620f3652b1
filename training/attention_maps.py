"""Attention heatmaps for one sentence, as in the paper's Figures 3-5: encoder self-attention and decoder
cross-attention of the last layer, a few heads each, with the tokens on the axes.

    python -m hf_vanilla_transformer_training.attention_maps MODEL_DIR "Friday, August 26, 1955" --out_dir pictures/
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch


def attention_maps(model, tokenizer, source: str, out_dir: str | Path, heads: int = 4) -> list[Path]:
    """Translates `source`, then runs the pair once more with eager attention to read the weights. Writes
    `attention_encoder.png` and `attention_cross.png` into `out_dir` and returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # only eager attention returns its weights
    model.eval()
    try:
        batch = tokenizer([source], return_tensors="pt")
        with torch.no_grad():
            target = model.generate(**batch)
            outputs = model(**batch, decoder_input_ids=target, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    source_tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    target_tokens = tokenizer.convert_ids_to_tokens(target[0])
    pictures = []
    for name, weights, rows, columns, title in (
        ("attention_encoder.png", outputs.encoder_attentions[-1][0], source_tokens, source_tokens,
         "Encoder self-attention, last layer"),
        ("attention_cross.png", outputs.cross_attentions[-1][0], target_tokens, source_tokens,
         "Decoder cross-attention (target rows, source columns), last layer"),
    ):  # fmt: skip
        shown = min(heads, weights.shape[0])
        figure, axes = plt.subplots(1, shown, figsize=(3.2 * shown + 1, 3.6), squeeze=False)
        for head, axis in enumerate(axes[0]):
            axis.imshow(weights[head].float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            axis.set_title(f"head {head + 1}", fontsize=9)
            axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
            axis.set_yticks(range(len(rows)), rows if head == 0 else [""] * len(rows), fontsize=7)
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=110)
        plt.close(figure)
        pictures.append(out_dir / name)
    return pictures


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    # The installed package registers the Auto classes, so the folder's code is not needed; where only transformers
    # is installed (this file run as a script) the folder's code runs, if trusted.
    with contextlib.suppress(ImportError):
        import hf_vanilla_transformer  # noqa: F401
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("source")
    parser.add_argument("--out_dir", default=".")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let the folder's own code files run (not needed where this package is installed)",
    )
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    for path in attention_maps(model, tokenizer, args.source, args.out_dir, args.heads):
        print(path)


if __name__ == "__main__":
    main()
