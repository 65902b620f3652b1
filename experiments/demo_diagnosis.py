"""Why the demo's outcome varied from draw to draw: the hypothesis tests of the demo recipe, on the runs they need.

    python -m experiments.demo_diagnosis checkpoints RUN_DIR [RUN_DIR ...]   # per checkpoint and per average window
    python -m experiments.demo_diagnosis spikes RUN_DIR [RUN_DIR ...]        # loss / gradient-norm spikes after warm-up
    python -m experiments.demo_diagnosis ambiguity [MODEL_DIR]               # sources with two translations
    python -m experiments.demo_diagnosis bpe [--steps 1500] [--seeds 0 1 2]  # numbers only: BPE 300 vs 1000

A RUN_DIR is a training command's --output_dir that kept its checkpoints (--average_last larger than the number of
checkpoints to study, --save_steps small); its corpus is rebuilt from its run_arguments.json (data seed, pairs) and
scored greedily, per category (numbers by digit count, full / long / medium dates), on the 2000-pair test split.
Each command prints its table and writes it to experiments/results/demo_diagnosis_<command>.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from experiments.common import RESULTS, markdown_table
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, translate
from hf_vanilla_transformer_training.average_checkpoints import average_checkpoints, complete_checkpoints
from hf_vanilla_transformer_training.data import DEMO_CATEGORIES, demo_category, load_translation_data
from hf_vanilla_transformer_training.train import loss_spikes, translation_scores

SHORT = {name: name.replace("number, ", "n").replace(" digits", "").replace("date, ", "") for name in DEMO_CATEGORIES}


def test_split(run_dir: Path) -> tuple[list[str], list[str]]:
    recorded = json.loads((run_dir / "run_arguments.json").read_text())
    seed = recorded.get("data_seed", recorded["seed"])
    data = load_translation_data(demo_pairs=recorded["demo_pairs"] or 110_000, seed=seed)
    pairs = data["test"]["translation"]
    return [p["en"] for p in pairs], [p["de"] for p in pairs]


def score(model_dir: Path, sources: list[str], references: list[str], tokenizer_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = VanillaTransformerForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        hypotheses = translate(model, tokenizer, sources, progress=False, num_beams=1)
    return translation_scores(hypotheses, references, sources)


def row(label: str, scores: dict[str, Any]) -> list[Any]:
    by_category = scores["exact_match_by_category"]
    return [
        label,
        scores["exact_match"],
        scores["chrf"],
        *(by_category.get(name, math.nan) for name in DEMO_CATEGORIES),
    ]


def checkpoints(run_dirs: list[Path], last: int) -> str:
    """Hypotheses 1 and 3: is exact match still rising at the end; do checkpoints 100-200 steps apart oscillate; does
    averaging a wide or a narrow window help?"""
    header = ["checkpoint / average", "exact %", "chrF", *SHORT.values()]
    tables = []
    for run_dir in run_dirs:
        sources, references = test_split(run_dir)
        kept = complete_checkpoints(run_dir)[-last:]
        rows = [row(c.name, score(c, sources, references, c)) for c in kept]
        steps = [int(c.name.split("-")[1]) for c in kept]
        spacing = steps[-1] - steps[-2] if len(steps) > 1 else 0
        for count in (5, 3):
            for stride in (1, 2):
                window = kept[::-1][: count * stride : stride][::-1]
                if len(window) == count and spacing:
                    with tempfile.TemporaryDirectory() as folder:
                        average_checkpoints(window, folder)
                        label = f"average of {count}, every {stride * spacing} steps, {steps[-1] - (count - 1) * stride * spacing}-{steps[-1]}"
                        rows.append(row(label, score(Path(folder), sources, references, kept[-1])))
        tables.append(f"**{run_dir}** (greedy, {len(sources)} test pairs)\n\n" + markdown_table(header, rows))
    return "\n\n".join(tables)


def spikes(run_dirs: list[Path]) -> str:
    """Hypothesis 4: spikes after the warm-up, from the newest checkpoint's log history."""
    rows = []
    for run_dir in run_dirs:
        last = complete_checkpoints(run_dir)[-1]
        state = json.loads((last / "trainer_state.json").read_text())
        recorded = json.loads((run_dir / "run_arguments.json").read_text())
        history = state["log_history"]
        found = loss_spikes(history, recorded["warmup_steps"])
        norms = [e["grad_norm"] for e in history if "grad_norm" in e and e.get("step", 0) > recorded["warmup_steps"]]
        rows.append([str(run_dir), len([e for e in history if "loss" in e]), len(found),
                     ", ".join(str(s["step"]) for s in found[:8]) or "-",
                     statistics.median(norms) if norms else math.nan, max(norms) if norms else math.nan])  # fmt: skip
    return markdown_table(["run", "logged steps", "spikes", "at steps", "median grad norm", "max grad norm"], rows)


def ambiguity(model_dir: Path | None) -> str:
    """Sources of the demo corpus (as built before 0.3.0) that have two translations: "May 26, 1955" is both the long
    and the medium date. Counts them in the seed-0 corpus and, with a model, its exact match on them."""
    import random

    from babel.dates import format_date

    from hf_vanilla_transformer_training import data as demo

    # The corpus as 0.2 built it: the medium style of a May date kept its own (numeric) German form.
    def old_pair(rng: random.Random) -> tuple[str, str]:
        from num2words import num2words

        if rng.random() < 0.5:
            n = demo._number(rng)
            return num2words(n, lang="en"), num2words(n, lang="de")
        date = demo._date(rng)
        style = rng.choice(("full", "long", "medium"))
        return format_date(date, style, locale="en_US"), format_date(date, style, locale="de_DE")

    rng = random.Random(0)
    pairs: dict[str, str] = {}
    while len(pairs) < 110_000:
        source, target = old_pair(rng)
        pairs.setdefault(source, target)
    items = list(pairs.items())
    rng.shuffle(items)
    test, train = items[:2000], items[4000:]
    may = [(s, t) for s, t in train if s.startswith("May ")]
    numeric = sum(t[2] == "." for _, t in may)  # "26.05.1955" (medium) vs "26. Mai 1955" (long)
    test_may = [(s, t) for s, t in test if s.startswith("May ")]
    rows = [["training pairs", len(train)], ["of them 'May d, yyyy' (long or medium)", len(may)],
            ["  with the medium (numeric) translation", numeric], ["  with the long translation", len(may) - numeric],
            ["test pairs 'May d, yyyy'", len(test_may)]]  # fmt: skip
    if model_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = VanillaTransformerForConditionalGeneration.from_pretrained(model_dir).eval()
        with torch.inference_mode():
            hypotheses = translate(model, tokenizer, [s for s, _ in test], progress=False)
        wrong = [(s, t, h) for (s, t), h in zip(test, hypotheses, strict=True) if h != t]
        wrong_may = [w for w in wrong if w[0].startswith("May ")]
        rows += [[f"{model_dir}: test errors", len(wrong)], ["  of them on 'May d, yyyy'", len(wrong_may)],
                 ["  exact match on 'May d, yyyy'", f"{100 * (1 - len(wrong_may) / max(1, len(test_may))):.1f}%"]]  # fmt: skip
        categories: dict[str, int] = {}
        for source, _, _ in wrong:
            categories[demo_category(source)] = categories.get(demo_category(source), 0) + 1
        rows += [[f"  errors in {name}", count] for name, count in sorted(categories.items())]
    return markdown_table(["what", "count"], rows)


@functools.cache
def _numbers_corpus(vocab: int, is_tiny: bool = False):
    """The numbers of a 60,000-pair demo corpus (500 dev), with a BPE of `vocab` pieces."""
    from experiments import common
    from hf_vanilla_transformer_training.data import build_demo_corpus

    data = build_demo_corpus(num_pairs=60_000, validation_size=2_000, test_size=500, seed=0)

    def numbers(split: str) -> list[tuple[str, str]]:
        pairs = [(p["en"], p["de"]) for p in data[split]["translation"]]
        return [(s, t) for s, t in pairs if demo_category(s).startswith("number")]

    dev = numbers("validation")[:500]
    return common.make_corpus(numbers("train"), dev, vocab, [demo_category(s) for s, _ in dev])


def bpe(steps: int, seeds: list[int]) -> str:
    """Hypothesis 2 at small scale: numbers only, d_model 64, N 2, BPE 300 against 1000 pieces, paired seeds; dev NLL
    per token and exact match of the numbers."""
    from experiments import common

    rows = []
    for vocab in (300, 1000):
        corpus = _numbers_corpus(vocab)
        pieces = {p for _, t in corpus.train for p in t}
        for seed in seeds:
            run = common.train(common.Spec(f"bpe{vocab}-s{seed}", steps=steps, peak_lr=2e-3, warmup=300, seed=seed,
                                           max_tokens=2000, data=_numbers_corpus, data_args=(vocab,)))  # fmt: skip
            target_length = statistics.mean(len(t) for _, t in corpus.dev)
            rows.append([vocab, seed, len(pieces), target_length, run.dev_nll, run.exact, run.seconds])
    return markdown_table(["BPE size", "seed", "target pieces used", "mean target length", "dev NLL", "dev exact %",
                           "seconds"], rows)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("checkpoints", "spikes"):
        commands.add_parser(name).add_argument("runs", nargs="+", type=Path)
    commands.choices["checkpoints"].add_argument("--last", type=int, default=10, help="the newest N checkpoints")
    commands.choices["checkpoints"].add_argument("--tag", help="writes demo_diagnosis_checkpoints_TAG.md")
    commands.add_parser("ambiguity").add_argument("model", nargs="?", type=Path)
    bpe_parser = commands.add_parser("bpe")
    bpe_parser.add_argument("--steps", type=int, default=1500)
    bpe_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.command == "checkpoints":
        text = checkpoints(args.runs, args.last)
    elif args.command == "spikes":
        text = spikes(args.runs)
    elif args.command == "ambiguity":
        text = ambiguity(args.model)
    else:
        text = bpe(args.steps, args.seeds)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"demo_diagnosis_{args.command}" + (f"_{args.tag}" if getattr(args, "tag", None) else "")
    (RESULTS / f"{name}.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
