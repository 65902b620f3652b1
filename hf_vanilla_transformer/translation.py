"""Translating lines of text with a model folder: what transformers 5 no longer has a pipeline for.

    vanilla-transformer-translate MODEL_DIR < source.txt > hypotheses.txt
    vanilla-transformer-translate MODEL_DIR --input source.txt --output hypotheses.txt --num_beams 1

As a function: `translate(model, tokenizer, lines)`. The lines are batched by length (about `batch_tokens`
source tokens per batch) and decoded with the model's generation config (the paper's beam search unless
overridden by keyword arguments); the output keeps the input order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, each with at most `batch_tokens` padded tokens (or one line)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[i] > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def translate(
    model: Any,
    tokenizer: Any,
    lines: Sequence[str],
    batch_tokens: int = 4000,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Translates `lines`; empty lines stay empty."""
    from tqdm.auto import tqdm

    if batch_tokens < 1:
        raise ValueError(f"batch_tokens={batch_tokens} is invalid: expected an integer >= 1.")
    model.eval()
    outputs = [""] * len(lines)
    todo = [i for i, line in enumerate(lines) if line.strip()]
    encoded = {i: tokenizer(lines[i]).input_ids for i in todo}
    device = next(model.parameters()).device
    batches = length_batches([len(encoded[i]) for i in todo], batch_tokens)
    for batch in tqdm(batches, desc="translating", disable=not progress or len(batches) < 2, leave=False):
        indices = [todo[j] for j in batch]
        padded = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt").to(device)
        with torch.no_grad():
            generated = model.generate(**padded, **generate_kwargs)
        for i, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
            outputs[i] = text
    return outputs


def split_lines(text: str) -> list[str]:
    """One sentence per line, split at "\n" only: str.splitlines() also splits at U+2028, U+0085, form feeds and
    other characters that occur inside sentences, which would shift every later line against its translation."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.removesuffix("\r") for line in lines]


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder or Hub id (weights, config, code and tokenizer)")
    parser.add_argument("--input", default="-", help="a text file, one sentence per line ('-': standard input)")
    parser.add_argument("--output", default="-", help="where to write the translations ('-': standard output)")
    parser.add_argument("--batch_tokens", type=int, default=4000)
    parser.add_argument("--num_beams", type=int, default=None, help="default: the model's (paper: 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true", help="needed where this package is not imported")
    parser.add_argument(
        "--no_cpu_packing",
        action="store_true",
        help="on CPU, do not pack the decoder's large weight matrices for decoding (hf_vanilla_transformer.cpu_decoding)",
    )
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).to(args.device)
    if torch.device(args.device).type == "cpu" and not args.no_cpu_packing:
        from .cpu_decoding import pack_for_cpu_decoding

        pack_for_cpu_decoding(model)  # the same translations, faster (benchmarks/speed.py: "ours+packed")
    source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    with source:
        lines = split_lines(source.read())
    kwargs = {"num_beams": args.num_beams} if args.num_beams else {}
    hypotheses = translate(model, tokenizer, lines, batch_tokens=args.batch_tokens, **kwargs)
    text = "".join(h + "\n" for h in hypotheses)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
