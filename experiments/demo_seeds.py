"""`make demo` over seeds: the demo recipe's outcome as a distribution, not one draw.

    python -m experiments.demo_seeds [--weight_seeds 0 1 2] [--corpus_seeds 0 1] [--parallel 2] -- DEMO_ARGS...

Runs the training command with DEMO_ARGS (the Makefile's, `make demo-seeds`) once per weight seed (`--seed`: the
initial weights, dropout) and corpus seed (`--data_seed`: the corpus, its split, the BPE vocabulary, the batch
order), each into outputs/demo-seeds/corpus<D>-weights<S> (a rerun continues or only rescores). `--parallel 2` runs two
at a time with one thread each (on 2 cores, more throughput than one at a time with two threads; float rounding
differs from a two-thread run, which is one more perturbation the recipe must absorb). Then it scores each run's
last checkpoint like the published averaged model (the model's own decoding, the 2000-pair test split) and writes
experiments/results/demo_seeds.{md,json}: per run, per category, and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.common import RESULTS, markdown_table
from experiments.demo_diagnosis import test_split
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, translate
from hf_vanilla_transformer_training.average_checkpoints import complete_checkpoints
from hf_vanilla_transformer_training.data import DEMO_CATEGORIES, NUMBER_CATEGORIES
from hf_vanilla_transformer_training.train import category_key, translation_scores

OUTPUTS = Path("outputs/demo-seeds")
# The definition of a recipe with margin, on the published (averaged) model and the full test split.
TARGETS = {"min_exact": 97.0, "mean_exact": 98.0, "min_category": 95.0, "min_chrf": 99.0, "max_spread": 1.5,
           "averaged_vs_last": -0.3}  # fmt: skip
# Not a target: "the last two validations within 0.5 points" (the review's convergence check). The recipe ends with a
# cool-down, which lifts the last validation by several points over the one before by design; the table shows the
# difference, and "averaged >= last checkpoint" and the spread judge whether the run settled.


def run_one(args: list[str], corpus_seed: int, weight_seed: int, threads: int) -> subprocess.Popen:
    folder = OUTPUTS / f"corpus{corpus_seed}-weights{weight_seed}"
    command = [sys.executable, "-m", "hf_vanilla_transformer_training.train", *args, "--output_dir", str(folder),
               "--seed", str(weight_seed), "--data_seed", str(corpus_seed), "--disable_tqdm", "true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "train.log").open("w")
    print(f"[demo-seeds] start {folder} ({threads} thread(s))", flush=True)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def last_checkpoint_scores(folder: Path) -> dict[str, Any]:
    """The last checkpoint, decoded as the published model is (its generation config: beam 4, §6.1)."""
    from transformers import AutoTokenizer, GenerationConfig

    last = complete_checkpoints(folder)[-1]
    sources, references = test_split(folder)
    model = VanillaTransformerForConditionalGeneration.from_pretrained(last).eval()
    model.generation_config = GenerationConfig.from_pretrained(folder / "model")
    with torch.inference_mode():
        hypotheses = translate(model, AutoTokenizer.from_pretrained(last), sources, progress=False)
    return {"checkpoint": last.name, **translation_scores(hypotheses, references, sources)}


def floor_categories(scores: dict[str, Any]) -> dict[str, float]:
    """The categories the floor applies to (the review's: numbers, full, long, medium dates): the number categories
    pooled by their pair counts. Numbers of 1-3 digits alone are 18 test pairs (one error is 5.6 points, and each is
    in the corpus once, so never seen in training), too few for a floor of their own; the tables show them."""
    by_category, pairs = scores["exact_match_by_category"], scores["pairs_by_category"]
    numbers = [c for c in by_category if c in NUMBER_CATEGORIES]
    pooled = sum(by_category[c] * pairs[c] for c in numbers) / sum(pairs[c] for c in numbers)
    return {"numbers": pooled, **{c: v for c, v in by_category.items() if c not in NUMBER_CATEGORIES}}


def summarise(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    exact = [r["test"]["exact_match"] for r in rows]
    floors = [min(floor_categories(r["test"]).values()) for r in rows]
    checks = {
        f"every run >= {TARGETS['min_exact']}% exact": min(exact) >= TARGETS["min_exact"],
        f"mean >= {TARGETS['mean_exact']}% exact": statistics.mean(exact) >= TARGETS["mean_exact"],
        f"every category (numbers, full, long, medium) >= {TARGETS['min_category']}% in every run": min(floors)
        >= TARGETS["min_category"],
        f"chrF >= {TARGETS['min_chrf']} in every run": min(r["test"]["chrf"] for r in rows) >= TARGETS["min_chrf"],
        f"spread (max - min exact) <= {TARGETS['max_spread']} points": max(exact) - min(exact) <= TARGETS["max_spread"],
        f"averaged >= last checkpoint {TARGETS['averaged_vs_last']} points": all(
            r["test"]["exact_match"] - r["last_checkpoint"]["exact_match"] >= TARGETS["averaged_vs_last"] for r in rows
        ),
        "no loss spike after the warm-up": all(not r["loss_spikes"] for r in rows),
    }
    per_run = markdown_table(
        ["corpus seed", "weight seed", "exact %", "chrF", "BLEU", "last checkpoint exact %", "averaged - last",
         "last two validations differ", "spikes"],
        [[r["corpus_seed"], r["weight_seed"], r["test"]["exact_match"], r["test"]["chrf"], r["test"]["bleu"],
          r["last_checkpoint"]["exact_match"], r["test"]["exact_match"] - r["last_checkpoint"]["exact_match"],
          r["converged_by"], len(r["loss_spikes"])] for r in rows],
    )  # fmt: skip
    per_category = markdown_table(
        ["corpus seed", "weight seed", "numbers (pooled)", *DEMO_CATEGORIES],
        [[r["corpus_seed"], r["weight_seed"], floor_categories(r["test"])["numbers"],
          *(r["test"]["exact_match_by_category"].get(c) for c in DEMO_CATEGORIES)] for r in rows],
    )  # fmt: skip
    summary = markdown_table(
        ["runs", "mean exact %", "min exact %", "max - min", "min category % (numbers pooled)", "min chrF"],
        [[len(rows), statistics.mean(exact), min(exact), max(exact) - min(exact),
          min(floors), min(r["test"]["chrf"] for r in rows)]],
    )  # fmt: skip
    targets = markdown_table(["target", "met"], [[name, "met" if ok else "**not met**"] for name, ok in checks.items()])
    text = (f"**Summary** (the published averaged model of each run, {rows[0]['test']['pairs']} test pairs)\n\n{summary}"
            f"\n\n**Per run**\n\n{per_run}\n\n**Exact match per category (%)**\n\n{per_category}\n\n**Targets**\n\n{targets}")  # fmt: skip
    return text, {"targets": TARGETS, "checks": checks, "runs": rows}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weight_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corpus_seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--parallel", type=positive, default=2, help="runs at a time (each with cores / parallel threads)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:]
    ours, demo_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)  # a misspelt option of ours is an error here, not a training argument
    for name in ("weight_seeds", "corpus_seeds"):
        if len(set(getattr(args, name))) != len(getattr(args, name)):
            parser.error(f"--{name} {' '.join(map(str, getattr(args, name)))}: a seed twice would share its run folder")
    started = time.perf_counter()
    grid = [(c, w) for c in args.corpus_seeds for w in args.weight_seeds]
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    pending, running = list(grid), []
    try:
        while pending or running:
            while pending and len(running) < args.parallel:
                seeds = pending.pop(0)
                running.append((seeds, run_one(demo_args, *seeds, threads)))
            time.sleep(5)
            for item in [r for r in running if r[1].poll() is not None]:
                running.remove(item)
                (corpus_seed, weight_seed), process = item
                if process.returncode != 0:
                    raise SystemExit(
                        f"[demo-seeds] corpus {corpus_seed} weights {weight_seed} failed: see its train.log"
                    )
                print(f"[demo-seeds] done corpus{corpus_seed}-weights{weight_seed}", flush=True)
    finally:  # a failed or interrupted sweep stops the runs it started (each resumes from its last checkpoint)
        for _, process in running:
            if process.poll() is None:
                process.terminate()
                process.wait()
    rows = []
    for corpus_seed, weight_seed in grid:
        folder = OUTPUTS / f"corpus{corpus_seed}-weights{weight_seed}"
        results = json.loads((folder / "results.json").read_text())
        validations = [e for e in results["log_history"] if "eval_exact_match" in e]
        converged_by = (
            abs(validations[-1]["eval_exact_match"] - validations[-2]["eval_exact_match"]) if len(validations) > 1
            else None
        )  # fmt: skip
        rows.append({
            "corpus_seed": corpus_seed, "weight_seed": weight_seed, "test": results["test"],
            "last_checkpoint": last_checkpoint_scores(folder),
            "converged_by": converged_by, "loss_spikes": results.get("loss_spikes", []),
            "validation_curve": [{"step": e["step"], "exact_match": e["eval_exact_match"],
                                  **{c: e.get("eval_" + category_key(c)) for c in DEMO_CATEGORIES}}
                                 for e in validations],
        })  # fmt: skip
    text, data = summarise(rows)
    text += f"\n\nMeasured by `python -m experiments.demo_seeds {' '.join(sys.argv[1:])}` ({time.perf_counter() - started:.0f} s)."
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_seeds.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "demo_seeds.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
