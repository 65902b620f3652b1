"""Prints Table 3's parameter counts: the built model, PAPER.md's formula, and the paper's column.

    python benchmarks/parameter_counts.py [--vocab_size 37000]

Models are built on the meta device, so the full-size rows take no memory.
"""

import argparse

import torch

from hf_vanilla_transformer import (
    PAPER_VOCAB_SIZE,
    PRESETS,
    TABLE3_REPORTED,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    paper_parameter_count,
)


def rows(vocab_size: int):
    for name in PRESETS:
        if name == "tiny":
            continue
        config = VanillaTransformerConfig.from_preset(name, vocab_size=vocab_size)
        with torch.device("meta"):
            model = VanillaTransformerForConditionalGeneration(config)
        built = sum(p.numel() for p in model.parameters())
        reported = TABLE3_REPORTED[name]["params_m"]
        formula = paper_parameter_count(config)
        difference = f"{(formula / 1e6 - reported) / reported:+.1%}" if reported else ""
        yield name, built, formula, f"{reported}M" if reported else "", difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_size", type=int, default=PAPER_VOCAB_SIZE)
    args = parser.parse_args()
    header = ("row", "model", "formula", "paper", "formula vs paper")
    print(f"Parameters at vocab_size={args.vocab_size} (row E adds its learned position tables to the model's count)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, built, formula, reported, difference in rows(args.vocab_size):
        print(f"| {name} | {built:,} | {formula:,} | {reported} | {difference} |")


if __name__ == "__main__":
    main()
