"""Translating lines of text with a model folder: what transformers 5 no longer has a pipeline for.

    vanilla-transformer-translate MODEL_DIR < source.txt > hypotheses.txt
    vanilla-transformer-translate MODEL_DIR --input source.txt --output hypotheses.txt --num_beams 1

As a function: `translate(model, tokenizer, lines)`. The lines are batched by length (about `batch_tokens`
source tokens per batch) and decoded with the model's generation config (the paper's beam search unless
overridden by keyword arguments); the output keeps the input order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
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


# The longest source line `translate` accepts by default, in tokens: decoding time grows with the source length (the
# paper's limit is source length + 50 new tokens), so a 20,000-character line would decode for minutes.
MAX_SOURCE_TOKENS = 1024


def translate(
    model: Any,
    tokenizer: Any,
    lines: Sequence[str],
    batch_tokens: int = 4000,
    progress: bool = True,
    max_source_tokens: int | None = MAX_SOURCE_TOKENS,
    **generate_kwargs: Any,
) -> list[str]:
    """Translates `lines`; empty lines stay empty. A line of more than `max_source_tokens` tokens is refused, naming
    it, before anything is decoded (None: no limit)."""
    from tqdm.auto import tqdm

    if batch_tokens < 1:
        raise ValueError(f"batch_tokens={batch_tokens} is invalid: expected an integer >= 1.")
    if max_source_tokens is not None and max_source_tokens < 1:
        raise ValueError(f"max_source_tokens={max_source_tokens} is invalid: expected an integer >= 1 or None.")
    model.eval()
    outputs = [""] * len(lines)
    todo = [i for i, line in enumerate(lines) if line.strip()]
    encoded = {i: tokenizer(lines[i]).input_ids for i in todo}
    too_long = [i for i in todo if max_source_tokens is not None and len(encoded[i]) > max_source_tokens]
    if too_long:
        listed = ", ".join(f"line {i + 1} ({len(encoded[i])} tokens)" for i in too_long[:5])
        raise ValueError(
            f"{len(too_long)} line(s) are longer than max_source_tokens={max_source_tokens}: {listed}"
            f"{' ...' if len(too_long) > 5 else ''}. Split them, or raise the limit (--max_source_tokens)."
        )
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


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); invalid bytes are an error naming the line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"{name} is not UTF-8 text: line {line}, column {column} has the byte 0x{data[error.start]:02x} "
            f"({error.reason})."
        ) from error


def check_output_path(output: str) -> None:
    """Before any decoding: the output file can be written (its folder exists and is writable; it is not a folder
    and, if it exists, is writable). The file itself is written only when all lines are translated."""
    path = Path(os.path.realpath(output))  # a symbolic link is checked (and later written) at its target
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"--output {output} is a folder; expected a file path.")
    if not folder.is_dir():
        raise ValueError(f"--output {output}: the folder {folder} does not exist.")
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output} cannot be written (permission denied).")


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path` and renames it over `path`: a failure leaves the old file. A
    symbolic link is followed (the file it points to is replaced, the link stays); an existing path that is not a
    regular file (a FIFO, /dev/stdout, a device) is written in place."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
        return
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder or Hub id (weights, config, code and tokenizer)")
    parser.add_argument("--input", default="-", help="a text file, one sentence per line ('-': standard input)")
    parser.add_argument("--output", default="-", help="where to write the translations ('-': standard output)")
    parser.add_argument("--batch_tokens", type=int, default=4000)
    parser.add_argument(
        "--max_source_tokens", type=int, default=MAX_SOURCE_TOKENS, help="refuse longer lines (0: no limit)"
    )
    parser.add_argument("--num_beams", type=int, default=None, help="default: the model's (paper: 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true", help="needed where this package is not imported")
    parser.add_argument(
        "--no_cpu_packing",
        action="store_true",
        help="on CPU, do not pack the decoder's large weight matrices for decoding (hf_vanilla_transformer.cpu_decoding)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="on CPU, compute the linear layers in int8 (torch's dynamic quantization): faster, not exact",
    )
    args = parser.parse_args(argv)
    if args.int8 and torch.device(args.device).type != "cpu":
        raise SystemExit(f"vanilla-transformer-translate: --int8 runs on CPU only, but --device is {args.device!r}.")
    try:  # everything about the input and output is checked before the model is loaded
        if args.output != "-":
            check_output_path(args.output)
        if args.input == "-":
            lines = split_lines(decode_text(sys.stdin.buffer.read(), "standard input"))
        else:
            lines = split_lines(decode_text(Path(args.input).read_bytes(), args.input))
    except (OSError, ValueError) as error:
        raise SystemExit(f"vanilla-transformer-translate: {error}") from error

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).to(args.device)
    if args.int8:  # instead of the packed fp32 layout
        from .cpu_decoding import quantize_for_cpu_decoding

        model = quantize_for_cpu_decoding(model)
    elif torch.device(args.device).type == "cpu" and not args.no_cpu_packing:
        from .cpu_decoding import pack_for_cpu_decoding

        pack_for_cpu_decoding(model)  # the same translations, faster (benchmarks/speed.py: "ours+packed")
    kwargs = {"num_beams": args.num_beams} if args.num_beams is not None else {}
    try:
        hypotheses = translate(
            model, tokenizer, lines, batch_tokens=args.batch_tokens,
            max_source_tokens=args.max_source_tokens or None, **kwargs,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"vanilla-transformer-translate: {error}") from error
    text = "".join(h + "\n" for h in hypotheses)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            write_atomically(args.output, text)
        except OSError as error:
            raise SystemExit(
                f"vanilla-transformer-translate: writing {args.output} failed ({error}); it was left as it was."
            ) from error


if __name__ == "__main__":
    main()
