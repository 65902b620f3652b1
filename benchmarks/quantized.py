"""Translation quality and speed of a trained model in fp32, bf16 and int8: this model (PyTorch) and CTranslate2.

    python benchmarks/quantized.py                  # the model `make demo` trained (outputs/demo/model), its test split
    python benchmarks/quantized.py --model DIR --pairs 500 --output /tmp/quantized

Every engine and precision translates the same sentences of the demo corpus's test split (the split `make demo`
scored, rebuilt from the run's run_arguments.json) with greedy search, the same tokenizer and the same output limit;
the table gives sacreBLEU's BLEU and chrF, chrF minus the same engine's fp32 chrF, and new tokens per second over
the whole split (the outputs re-tokenized and counted alike for every engine). Greedy search is the same algorithm in
both engines, so the two fp32 rows must agree (the share of identical outputs is printed).

- this model: `translate()` (batches of about --batch_tokens source tokens), in float32, in bfloat16 (the weights
  cast), and in int8 (torch's dynamic int8 quantization of every linear layer, as in speed.py's "ours int8");
- CTranslate2: the model exported by `hf_vanilla_transformer.convert.export_ctranslate2`, loaded with
  compute_type float32, bfloat16 and int8, in a process of its own (see contenders.CTranslate2Process), batches of
  the same number of tokens. A compute type CTranslate2 does not support on this CPU is listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from contenders import CTranslate2Process  # noqa: E402
from speed import CPU, int8_model, machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHRF_TOLERANCE = 0.3  # issue 16: int8 within 0.3 chrF of fp32


def test_split(model_dir: Path, pairs: int | None) -> tuple[list[str], list[str], str]:
    """Sources and references of the demo test split the run that trained `model_dir` was scored on."""
    from hf_vanilla_transformer_training.data import load_translation_data

    settings = {"demo_pairs": 110_000, "seed": 0, "source_lang": "en", "target_lang": "de"}
    arguments = model_dir.parent / "run_arguments.json"
    if arguments.is_file():
        recorded = json.loads(arguments.read_text(encoding="utf-8"))
        if recorded.get("dataset_name") not in (None, "demo") or recorded.get("train_file"):
            raise SystemExit(f"{model_dir} was not trained on the demo corpus ({arguments}); this script scores that.")
        settings.update({key: recorded[key] for key in settings if recorded.get(key) is not None})
    data = load_translation_data(
        demo_pairs=settings["demo_pairs"], seed=settings["seed"],
        source_lang=settings["source_lang"], target_lang=settings["target_lang"],
    )  # fmt: skip
    rows = data["test"]["translation"][:pairs] if pairs else data["test"]["translation"]
    note = f"demo corpus test split, {len(rows)} pairs (demo_pairs={settings['demo_pairs']}, seed={settings['seed']})"
    return [r[settings["source_lang"]] for r in rows], [r[settings["target_lang"]] for r in rows], note


def run_ours(model, tokenizer, sources: list[str], batch_tokens: int) -> tuple[list[str], float]:
    from hf_vanilla_transformer.translation import translate

    translate(model, tokenizer, sources[:8], batch_tokens=batch_tokens, progress=False, num_beams=1)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        hypotheses = translate(model, tokenizer, sources, batch_tokens=batch_tokens, progress=False, num_beams=1)
    return hypotheses, time.perf_counter() - start


def run_ctranslate2(process, tokenizer, model_config, sources: list[str], batch_tokens: int) -> tuple[list[str], float]:
    """Greedy search with the model's own output limit (source length + max_new_tokens_over_source)."""
    encoded = [tokenizer(line).input_ids for line in sources]
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in encoded]
    extra = getattr(model_config, "max_new_tokens_over_source", None) or 50
    limit = max(len(ids) for ids in encoded) + extra
    options = {"beam_size": 1, "max_decoding_length": limit, "max_batch_size": batch_tokens, "batch_type": "tokens"}
    process.translate_tokens(tokens[:8], **options)  # warm-up
    outputs, seconds = process.translate_tokens(tokens, **options)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs], seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "outputs" / "demo" / "model")
    parser.add_argument("--pairs", type=int, help="only the first PAIRS pairs of the test split (default: all)")
    parser.add_argument("--batch_tokens", type=int, default=4000)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} holds no model (no config.json): train one first with `make demo`.")
    from transformers import AutoTokenizer

    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
    from hf_vanilla_transformer_training.train import translation_scores

    model = VanillaTransformerForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    sources, references, split = test_split(args.model, args.pairs)
    machine = machine_description(CPU)
    print(f"[quantized] {machine}; {split}", flush=True)

    results: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}

    def record(engine: str, precision: str, hypotheses: list[str], seconds: float) -> None:
        new_tokens = sum(len(tokenizer(h).input_ids) for h in hypotheses)
        scored = translation_scores(hypotheses, references)  # the scores the training command reports
        row = {"bleu": scored["bleu"], "chrf": scored["chrf"], "tokens_per_s": new_tokens / seconds, "seconds": seconds}
        results[f"{engine} {precision}"] = row
        outputs[f"{engine} {precision}"] = hypotheses
        print(f"  {engine:12s} {precision:5s} BLEU {row['bleu']:5.1f} chrF {row['chrf']:5.1f} "
              f"{row['tokens_per_s']:8.1f} new tokens/s", flush=True)  # fmt: skip

    record("this model", "fp32", *run_ours(model, tokenizer, sources, args.batch_tokens))
    bf16 = VanillaTransformerForConditionalGeneration.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    record("this model", "bf16", *run_ours(bf16, tokenizer, sources, args.batch_tokens))
    del bf16
    record("this model", "int8", *run_ours(int8_model(model), tokenizer, sources, args.batch_tokens))

    skipped = {}
    try:
        import ctranslate2
    except ImportError as error:
        skipped["ctranslate2"] = f"ctranslate2 is not installed ({error})"
    else:
        supported = ctranslate2.get_supported_compute_types("cpu")
        for precision, compute_type in (("fp32", "float32"), ("bf16", "bfloat16"), ("int8", "int8")):
            if compute_type not in supported:
                skipped[f"ctranslate2 {precision}"] = (
                    f"CTranslate2 does not support {compute_type} on this CPU (supported: {sorted(supported)})"
                )
                continue
            process = CTranslate2Process(model, compute_type, torch.get_num_threads(), "cpu", tokenizer=tokenizer)
            try:
                record("ctranslate2", precision, *run_ctranslate2(process, tokenizer, model.config, sources,
                                                                  args.batch_tokens))  # fmt: skip
            finally:
                process.close()

    same = None
    if "ctranslate2 fp32" in outputs:
        pairs = zip(outputs["this model fp32"], outputs["ctranslate2 fp32"], strict=True)
        same = sum(a == b for a, b in pairs) / len(sources)
        print(f"[quantized] fp32 outputs identical in both engines: {same:.1%}")

    command = " ".join(["python benchmarks/quantized.py", *(sys.argv[1:] if argv is None else argv)])
    where = args.model.resolve().relative_to(ROOT) if args.model.resolve().is_relative_to(ROOT) else args.model
    lines = [
        f"Measured by `{command}` on {machine}, with {where}; {split}; greedy search; sacreBLEU BLEU and chrF; new "
        "tokens per second over the whole split.",
        "",
        "| engine | precision | BLEU | chrF | chrF - fp32 chrF | new tokens/s | / fp32 of the engine |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, row in results.items():
        engine, precision = name.rsplit(" ", 1)
        fp32 = results[f"{engine} fp32"]
        lines.append(
            f"| {engine} | {precision} | {row['bleu']:.2f} | {row['chrf']:.2f} | {row['chrf'] - fp32['chrf']:+.2f} | "
            f"{row['tokens_per_s']:.0f} | {row['tokens_per_s'] / fp32['tokens_per_s']:.2f} |"
        )
    for name, reason in skipped.items():
        lines += ["", f"{name} skipped: {reason}."]
    checks = []
    if same is not None:
        checks.append(f"fp32 outputs identical in both engines: {same:.1%} of the sentences")
    if "this model int8" in results:
        drop = results["this model fp32"]["chrf"] - results["this model int8"]["chrf"]
        verdict = "met" if drop <= CHRF_TOLERANCE else "**not met**"
        checks.append(f"this model int8 chrF within {CHRF_TOLERANCE} of fp32: {-drop:+.2f}, {verdict}")
    if "this model int8" in results and "ctranslate2 int8" in results:
        ratio = results["this model int8"]["tokens_per_s"] / results["ctranslate2 int8"]["tokens_per_s"]
        checks.append(f"this model int8 / CTranslate2 int8, new tokens/s on this split: {ratio:.2f}")
    lines += [""] + [f"- {check}" for check in checks]
    markdown = "\n".join(lines) + "\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "quantized.md").write_text(markdown)
    summary = {"machine": machine, "split": split, "results": results, "skipped": skipped, "identical_fp32": same}
    (args.output / "quantized.json").write_text(json.dumps(summary, indent=1))
    print(markdown)
    return summary


if __name__ == "__main__":
    main()
