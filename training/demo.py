"""A short demonstration of the model as a Hugging Face user meets it: build from a Table 3 preset, save,
reload through the Auto classes, and translate with the paper's decoding (§6.1).

    python -m hf_vanilla_transformer_training.demo [--output_dir outputs/demo]   # make smoke

The weights are untrained (the training recipe is `training/train.py`), so the output tokens are arbitrary;
what the demo shows is that the full-size base model and a small one build, run, save and reload.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM

import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, any_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    args = parser.parse_args()
    torch.manual_seed(0)

    for preset in ("base", "tiny"):
        config = any_config(preset)  # the paper's base model, and a small non-paper size
        start = time.perf_counter()
        model = VanillaTransformerForConditionalGeneration(config).eval()
        folder = Path(args.output_dir) / preset
        model.save_pretrained(folder)
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        source = torch.randint(4, config.vocab_size, (2, 12))
        with torch.no_grad():
            same = torch.equal(
                model(input_ids=source, labels=source).logits, reloaded(input_ids=source, labels=source).logits
            )
        output = reloaded.generate(source, max_new_tokens=8)  # beam 4, GNMT length penalty 0.6
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"{preset}: {parameters:,} parameters, saved to {folder}, reload identical: {same}, "
            f"beam-4 output shape {tuple(output.shape)}, {time.perf_counter() - start:.1f} s"
        )


if __name__ == "__main__":
    main()
