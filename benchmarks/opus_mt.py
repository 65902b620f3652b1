"""A converted OPUS-MT-shaped model, decoded by this project, by MarianMTModel and by CTranslate2 (fp32 and int8).

    python benchmarks/opus_mt.py                       # base size (Helsinki-NLP/opus-mt-* shape), batches 1 and 8
    python benchmarks/opus_mt.py --size tiny --rounds 1 --batches 2   # seconds (the test runs this)

The model is a random `MarianMTModel` of OPUS-MT's shape (Transformer-base: d_model 512, 6+6 layers, 8 heads,
d_ff 2048, swish, [sin | cos] sinusoids, a final_logits_bias, 58101 shared tokens), converted with
`hf_vanilla_transformer.convert.marian_to_ours` and exported with `export_ctranslate2` (fp32 and int8); no download.
Every contender decodes the same source batch to the same fixed length (no end-of-sentence), greedy and beam 4, in
alternating rounds; the table gives the median tokens/s and each one's ratio to MarianMTModel. Token agreement is the
share of output tokens equal to ours (fp32) in the greedy run at the largest batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contenders import export_ctranslate2  # noqa: E402
from speed import cpu_name  # noqa: E402

from hf_vanilla_transformer import pack_for_cpu_decoding  # noqa: E402
from hf_vanilla_transformer.convert import marian_to_ours  # noqa: E402

SIZES = {
    "base": {"vocab_size": 58101, "d_model": 512, "layers": 6, "heads": 8, "d_ff": 2048},
    "tiny": {"vocab_size": 300, "d_model": 32, "layers": 2, "heads": 4, "d_ff": 64},
}
SOURCE_LENGTH = 24


def opus_mt_shaped(size: str) -> MarianMTModel:
    s = SIZES[size]
    config = MarianConfig(
        vocab_size=s["vocab_size"], d_model=s["d_model"], encoder_layers=s["layers"], decoder_layers=s["layers"],
        encoder_attention_heads=s["heads"], decoder_attention_heads=s["heads"], encoder_ffn_dim=s["d_ff"],
        decoder_ffn_dim=s["d_ff"], activation_function="swish", scale_embedding=True, max_position_embeddings=512,
        pad_token_id=s["vocab_size"] - 1, decoder_start_token_id=s["vocab_size"] - 1, eos_token_id=0,
        forced_eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
    model.generation_config.bad_words_ids = None
    model.generation_config.max_length = None
    return model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="base")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None, help="write the table (markdown) and json here")
    args = parser.parse_args(argv)
    import ctranslate2

    threads = torch.get_num_threads()
    marian = opus_mt_shaped(args.size)
    ours = marian_to_ours(marian)
    packed = copy.deepcopy(ours)
    has_packed = pack_for_cpu_decoding(packed)
    folder = tempfile.TemporaryDirectory()
    translators = {}
    for quantization in ("float32", "int8"):
        path = Path(folder.name) / quantization
        tokens = export_ctranslate2(ours, path, quantization=quantization)
        translators[f"ctranslate2 {'fp32' if quantization == 'float32' else 'int8'}"] = ctranslate2.Translator(
            str(path), device="cpu", compute_type=quantization, inter_threads=1, intra_threads=threads
        )
    index = {token: i for i, token in enumerate(tokens)}

    def run(name: str, input_ids: torch.Tensor, beams: int, new_tokens: int) -> list[list[int]]:
        common = {"num_beams": beams, "max_new_tokens": new_tokens, "eos_token_id": None, "do_sample": False}
        with torch.inference_mode():
            if name in ("ours", "ours+packed"):
                model = ours if name == "ours" else packed
                return model.generate(input_ids, **common)[:, 1:].tolist()
            if name == "marian":
                return marian.generate(input_ids, **common)[:, 1:].tolist()
        source = [[tokens[i] for i in row] for row in input_ids.tolist()]
        results = translators[name].translate_batch(
            source, beam_size=beams, max_decoding_length=new_tokens, min_decoding_length=new_tokens
        )
        return [[index[t] for t in r.hypotheses[0]] for r in results]

    names = ["ours", *(["ours+packed"] if has_packed else []), "marian", *translators]
    vocab = marian.config.vocab_size
    rows, agreement = [], {}
    for batch_size in args.batches:
        generator = torch.Generator().manual_seed(batch_size)
        input_ids = torch.randint(2, vocab - 1, (batch_size, SOURCE_LENGTH), generator=generator)
        input_ids[:, -1] = 0  # </s>, as the tokenizer ends a source
        for beams in (1, 4):
            times = {name: [] for name in names}
            outputs = {}
            for name in names:
                run(name, input_ids[:, :4], beams, 2)  # warm-up
            for _ in range(args.rounds):
                for name in names:
                    start = time.perf_counter()
                    outputs[name] = run(name, input_ids, beams, args.new_tokens)
                    times[name].append(time.perf_counter() - start)
            speed = {name: batch_size * args.new_tokens / statistics.median(t) for name, t in times.items()}
            rows.append((batch_size, beams, speed))
            if beams == 1:
                total = batch_size * args.new_tokens
                agreement = {
                    name: sum(
                        a == b for x, y in zip(outputs["ours"], out, strict=True) for a, b in zip(x, y, strict=True)
                    )
                    / total
                    for name, out in outputs.items()
                }
    header = (
        f"OPUS-MT-shaped {args.size} model ({SIZES[args.size]}), converted; {cpu_name()}, {threads} threads, torch "
        f"{torch.__version__}, ctranslate2 {ctranslate2.__version__}; {args.new_tokens} new tokens, source length "
        f"{SOURCE_LENGTH}, median of {args.rounds} rounds.\n"
        f"Command: python benchmarks/opus_mt.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    )
    lines = [header, "", "| batch | beams | " + " | ".join(f"{n} tok/s (x Marian)" for n in names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    for batch_size, beams, speed in rows:
        cells = [f"{speed[n]:.0f} ({speed[n] / speed['marian']:.2f}x)" for n in names]
        lines.append(f"| {batch_size} | {beams} | " + " | ".join(cells) + " |")
    lines += ["", "Greedy token agreement with ours (fp32): " + ", ".join(f"{n} {a:.1%}" for n, a in agreement.items())]
    text = "\n".join(lines)
    print(text)
    results = {
        "size": args.size,
        "rows": [{"batch": b, "beams": k, "tokens_per_s": s} for b, k, s in rows],
        "agreement": agreement,
    }
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "opus_mt.md").write_text(text + "\n")
        (args.output / "opus_mt.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
