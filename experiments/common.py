"""The protocol every training experiment shares, and the tables and figures they write.

The protocol (docs/experiments.md):
- data: the bundled EN->DE corpus (numbers and dates, training/data.py), CORPUS_PAIRS pairs, a byte-level BPE of
  VOCAB_SIZE pieces (300: number words come out morpheme-like, `▁acht tausend vier hundertein undsechzig`, instead of
  1000-piece compounds that cut across digit positions and make numbers a memorisation task), DEV_PAIRS dev pairs
  stratified by category;
- a run: the paper's recipe at a small size, Adam (0.9, 0.98, 1e-9), linear warm-up of WARMUP steps then 1/sqrt(step)
  (transformers' `get_inverse_sqrt_schedule`, §5.3), token batches of ~1500 source + target tokens, at least
  6 x WARMUP steps, so that every run is compared after its rate has peaked and decayed;
- metrics: dev NLL per target token (teacher-forced, no label smoothing) as the primary metric, every EVAL_EVERY
  steps; exact match per category (greedy, at most source length + 10 new tokens) at the end; BLEU and chrF only as
  a footnote (on this corpus BLEU weighs mostly the dates and chrF mostly the numbers);
- seeds: a seed fixes the initial weights and the batch order, and each arm of a comparison runs the same seeds,
  so arms are paired; at least 2 seeds per arm, 3 for a headline claim;
- a finding: the arms' seed ranges do not overlap and the mean difference exceeds twice the pooled seed standard
  deviation (`compare`), at the budget used.

It is a loop of its own rather than the Trainer because the experiments change the model's layers in ways the
Trainer should not see (no scaling, no residuals, heads zeroed) and record per-step losses; the training command
(`training/train.py`) is the recipe's real path. Runs go to a pool of 2 processes of 1 thread each (`run_all`), two
runs at a time.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, translate

RESULTS = Path(__file__).resolve().parent / "results"
CORPUS_PAIRS = 30_000
DEV_PAIRS = 500
VOCAB_SIZE = 300
WARMUP = 100
STEPS = 6 * WARMUP  # the protocol's shortest run
PEAK_LR = 3e-3  # below the formula's 0.0125 at d_model 64 and warm-up 100 (experiment 3 sweeps it)
EVAL_EVERY = 100
MAX_TOKENS = 1500
TINY = {"pairs": 1_500, "dev_pairs": 24}  # --tiny: seconds, to check the code (CI), not to measure anything
TINY_STEPS = 6
tiny = False  # set by `arguments()` from --tiny

Pairs = list[tuple[list[int], list[int]]]


# ---- data ------------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    tokenizer: Any
    train: Pairs  # (source ids, target ids)
    dev_sources: list[str]
    dev_targets: list[str]
    dev: Pairs
    dev_categories: list[str]


def corpus(vocab_size: int = VOCAB_SIZE, is_tiny: bool | None = None) -> Corpus:
    """The bundled corpus with a BPE of `vocab_size` pieces: CORPUS_PAIRS pairs, DEV_PAIRS of them (stratified by
    category) for the dev split, or the TINY sizes with --tiny."""
    is_tiny = tiny if is_tiny is None else is_tiny
    return _corpus(TINY["pairs"], TINY["dev_pairs"], vocab_size) if is_tiny else _corpus(
        CORPUS_PAIRS, DEV_PAIRS, vocab_size)  # fmt: skip


@cache
def _corpus(pairs: int, dev_pairs: int, vocab_size: int) -> Corpus:
    from hf_vanilla_transformer_training.data import build_demo_corpus, demo_category, stratified_subset

    data = build_demo_corpus(num_pairs=pairs, validation_size=4 * dev_pairs, test_size=dev_pairs, seed=0)
    train_pairs = [(p["en"], p["de"]) for p in data["train"]["translation"]]
    dev = [(p["en"], p["de"]) for p in stratified_subset(data["validation"], dev_pairs, "en")["translation"]]
    return make_corpus(train_pairs, dev, vocab_size, [demo_category(s) or "other" for s, _ in dev])


def make_corpus(train_pairs: list[tuple[str, str]], dev: list[tuple[str, str]], vocab_size: int,
                dev_categories: list[str], tokenizer: Any = None) -> Corpus:  # fmt: skip
    """Tokenizes text pairs (training a BPE of `vocab_size` on the training side unless `tokenizer` is given)."""
    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    if tokenizer is None:
        tokenizer = train_bpe_tokenizer((text for pair in train_pairs for text in pair), vocab_size=vocab_size)
    return Corpus(tokenizer, encode(tokenizer, train_pairs), [s for s, _ in dev], [t for _, t in dev],
                  encode(tokenizer, dev), dev_categories)  # fmt: skip


def encode(tokenizer: Any, pairs: list[tuple[str, str]]) -> Pairs:
    sources = tokenizer([s for s, _ in pairs]).input_ids
    targets = tokenizer(text_target=[t for _, t in pairs]).input_ids
    return list(zip(sources, targets, strict=True))


def config(**fields: Any) -> VanillaTransformerConfig:
    """The experiments' base model, the paper's base at 1/8 of its widths and 1/3 of its depth: d_model 64, d_ff 256,
    h 4 (d_k 16), N 2, the corpus' vocabulary, P_drop 0.1, eps_ls 0.1; `fields` change it."""
    base = {"vocab_size": VOCAB_SIZE, "d_model": 64, "d_ff": 256, "h": 4, "encoder_layers": 2, "decoder_layers": 2,
            "dropout": 0.1, "label_smoothing": 0.1}  # fmt: skip
    return VanillaTransformerConfig(**{**base, **fields})


def batches(pairs: Pairs, max_tokens: int, seed: int, tokenizer: Any):
    """Endless token batches (source ids, mask, labels), shuffled per epoch, as training/train.py makes them."""
    from hf_vanilla_transformer_training.train import TokenBatchSampler

    sampler = TokenBatchSampler([len(s) for s, _ in pairs], [len(t) for _, t in pairs], max_tokens=max_tokens,
                                seed=seed, multiple_of=1)  # fmt: skip
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for indices in sampler:
            yield collate([pairs[i] for i in indices], tokenizer)
        epoch += 1


def collate(pairs: Pairs, tokenizer: Any) -> dict[str, torch.Tensor]:
    """Padded input_ids, attention_mask and labels (-100 at padding): transformers' seq2seq collator, as training."""
    from transformers import DataCollatorForSeq2Seq

    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return dict(collator([{"input_ids": source, "labels": target} for source, target in pairs]))


# ---- a run -------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One training run, picklable so that the pool can run it: module-level functions only."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)  # config fields (config())
    steps: int = STEPS
    peak_lr: float = PEAK_LR
    warmup: int = WARMUP
    ramp: bool = True  # False: no warm-up ramp, the rate starts at its peak and decays as 1/sqrt(step/warmup)
    seed: int = 0
    max_tokens: int = MAX_TOKENS
    data: Callable[..., Corpus] | None = None  # module-level: data(*data_args, tiny) -> Corpus (default: corpus())
    data_args: tuple = ()
    change_model: Callable[[Any], None] | None = None  # applied after initialisation
    probe: Callable[[Any, Corpus], dict[str, Any]] | None = None  # run on the trained model, its result in `probes`
    snapshot_every: int = 0  # keep the weights every N steps for `probe` (model.snapshots: step -> state dict)
    decode: bool = True  # greedy exact match on the dev split at the end
    tiny: bool = False


@dataclass
class Run:
    name: str
    seed: int
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # training loss (label-smoothed) at `steps`
    eval_steps: list[int] = field(default_factory=list)
    dev_nlls: list[float] = field(default_factory=list)  # dev NLL per token at `eval_steps` (0 = initialisation)
    diverged_at: int | None = None
    exact: float = math.nan  # dev exact match, %
    exact_by_category: dict[str, float] = field(default_factory=dict)
    bleu: float = math.nan
    chrf: float = math.nan
    seconds: float = 0.0
    probes: dict[str, Any] = field(default_factory=dict)

    @property
    def dev_nll(self) -> float:
        return self.dev_nlls[-1] if self.dev_nlls and self.diverged_at is None else math.inf

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate(step: int, peak: float, warmup: int) -> float:
    """§5.3's shape at a given peak: linear warm-up to `peak` at `warmup`, then peak * sqrt(warmup / step)."""
    return peak * min(step / warmup, math.sqrt(warmup / step))


def train(spec: Spec) -> Run:
    """Trains a fresh model (seeded) and evaluates it; a non-finite loss ends the run (`diverged_at`)."""
    from transformers import get_inverse_sqrt_schedule

    data = spec.data(*spec.data_args, spec.tiny) if spec.data else corpus(VOCAB_SIZE, spec.tiny)
    steps = TINY_STEPS if spec.tiny else spec.steps
    eval_every = 2 if spec.tiny else EVAL_EVERY
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    model = VanillaTransformerForConditionalGeneration(config(vocab_size=len(data.tokenizer), **spec.fields))
    if spec.change_model is not None:
        spec.change_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.peak_lr, betas=(0.9, 0.98), eps=1e-9)
    # ramp=False: transformers' schedule with no warm-up steps, 1/sqrt(step / timescale) capped at the peak.
    schedule = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=spec.warmup if spec.ramp else 0,
                                         timescale=spec.warmup)  # fmt: skip
    run = Run(spec.name, spec.seed)
    run.eval_steps.append(0)
    run.dev_nlls.append(dev_nll(model, data.dev, data.tokenizer))
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    started = time.perf_counter()
    stream = batches(data.train, spec.max_tokens, spec.seed, data.tokenizer)
    window: list[float] = []
    for step in range(1, steps + 1):
        model.train()
        loss = model(**next(stream)).loss
        if not torch.isfinite(loss):
            run.diverged_at = step
            break
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % 10 == 0 or step == steps:
            run.steps.append(step)
            run.losses.append(sum(window) / len(window))
            window = []
        if step % eval_every == 0 or step == steps:
            run.eval_steps.append(step)
            run.dev_nlls.append(dev_nll(model, data.dev, data.tokenizer))
        if spec.snapshot_every and step % (1 if spec.tiny else spec.snapshot_every) == 0:
            snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if run.diverged_at is None:
        if spec.decode:
            run.exact, run.exact_by_category, run.bleu, run.chrf = exact_match(model, data)
        model.snapshots = snapshots
        if spec.probe is not None:
            run.probes = spec.probe(model, data)
    run.seconds = time.perf_counter() - started
    return run


@torch.no_grad()
def dev_nll(model, pairs: Pairs, tokenizer: Any, batch: int = 100) -> float:
    """The plain token-level cross-entropy (no label smoothing), teacher-forced, per target token."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(pairs), batch):
        inputs = collate(pairs[start : start + batch], tokenizer)
        logits = model(**inputs).logits
        labels = inputs["labels"]
        total += F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum").item()
        tokens += int((labels != -100).sum())
    return total / tokens


def greedy(model, data: Corpus, sources: list[str] | None = None, **generate: Any) -> list[str]:
    """Translations of the dev sources (or `sources`), at most source length + 10 new tokens: a model that has not
    learned must not decode for minutes."""
    sources = data.dev_sources if sources is None else sources
    longest = max(len(ids) for ids in data.tokenizer(sources).input_ids)
    options = {"num_beams": 1, **generate}
    model.eval()
    return translate(model, data.tokenizer, sources, progress=False, max_new_tokens=longest + 10, **options)


def exact_match(model, data: Corpus, **generate: Any) -> tuple[float, dict[str, float], float, float]:
    """Exact match (%) overall and per category, BLEU and chrF (footnote) of the dev split."""
    import sacrebleu

    hypotheses = greedy(model, data, **generate)
    hits = [h == r for h, r in zip(hypotheses, data.dev_targets, strict=True)]
    by: dict[str, list[bool]] = {}
    for category, hit in zip(data.dev_categories, hits, strict=True):
        by.setdefault(category, []).append(hit)
    return (100.0 * sum(hits) / len(hits), {c: 100.0 * sum(h) / len(h) for c, h in by.items()},
            sacrebleu.corpus_bleu(hypotheses, [data.dev_targets]).score,
            sacrebleu.corpus_chrf(hypotheses, [data.dev_targets]).score)  # fmt: skip


def _worker_start() -> None:
    torch.set_num_threads(1)


def blank_sources(is_tiny: bool) -> Corpus:
    """The shared corpus with every source replaced by the empty sentence: what a model trained on it reaches is the
    plateau where the decoder is only a language model of the targets."""
    data = corpus(VOCAB_SIZE, is_tiny)
    eos = [data.tokenizer.eos_token_id]
    return Corpus(data.tokenizer, [(eos, t) for _, t in data.train], data.dev_sources, data.dev_targets,
                  [(eos, t) for _, t in data.dev], data.dev_categories)  # fmt: skip


_pool = None


def run_all(specs: list[Spec]) -> list[Run]:
    """The runs, in order, on a pool of 2 single-threaded processes (one pool for all experiments of a process)."""
    global _pool
    import concurrent.futures
    import multiprocessing

    if _pool is None:
        workers = int(os.environ.get("EXPERIMENT_WORKERS", "2"))
        _pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start
        )
        atexit.register(_pool.shutdown)
    for spec in specs:
        spec.tiny = tiny
    started = time.perf_counter()
    runs = list(_pool.map(train, specs))
    print(f"[runs] {len(runs)} runs in {time.perf_counter() - started:.0f} s wall", flush=True)
    return runs


# ---- the protocol's comparison ------------------------------------------------------------------------------------
def compare(a: list[float], b: list[float]) -> dict[str, Any]:
    """A difference between two arms' per-seed values is a finding when their ranges do not overlap and the mean
    difference exceeds twice the pooled seed standard deviation. One seed per arm is never a finding."""
    diff = statistics.mean(b) - statistics.mean(a)
    if len(a) < 2 or len(b) < 2:
        return {"difference": diff, "pooled_sd": math.nan, "finding": False}
    finite = all(math.isfinite(v) for v in (*a, *b))
    pooled = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2) if finite else math.nan
    apart = max(a) < min(b) or max(b) < min(a)
    return {"difference": diff, "pooled_sd": pooled, "finding": bool(apart and (not finite or abs(diff) > 2 * pooled))}


def spread(values: list[float]) -> str:
    """'mean (min-max)' of per-seed values."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return f"{len(values) - len(finite)} of {len(values)} diverged" + (
            f"; others {statistics.mean(finite):.3f}" if finite else ""
        )
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def verdict(a_name: str, a: list[float], b_name: str, b: list[float], unit: str = "dev NLL") -> str:
    """One line: the difference of the means, the pooled SD and whether it is a finding."""
    result = compare(a, b)
    word = "finding" if result["finding"] else "not a finding"
    return (f"{b_name} - {a_name}: {result['difference']:+.3f} {unit} (pooled seed SD {result['pooled_sd']:.3f}, "
            f"{len(a)}+{len(b)} seeds): {word}")  # fmt: skip


def band(axis, runs: list[Run], label: str, color=None, key: str = "dev_nlls") -> None:
    """Mean curve of `runs` (paired seeds) with the min-max band."""
    steps = runs[0].eval_steps
    curves = [r.dev_nlls for r in runs if r.diverged_at is None and len(r.dev_nlls) == len(steps)]
    if not curves:
        axis.plot([], [], label=f"{label} (diverged)", color=color)
        return
    columns = list(zip(*curves, strict=True))
    line = axis.plot(steps, [statistics.mean(c) for c in columns], label=f"{label} ({len(curves)} seeds)", color=color)
    axis.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns], alpha=0.25,
                      color=line[0].get_color())  # fmt: skip


def arms(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by name (one entry per seed)."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.name, []).append(run)
    return grouped


# ---- output ------------------------------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            if math.isinf(value):
                return "inf"
            return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.2f}"
        return str(value).replace("|", "\\|")  # a norm's bars would end the cell

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, tables: dict[str, str], data: dict[str, Any], figure=None, out: Path = RESULTS,
         answers: list[str] = ()) -> None:  # fmt: skip
    """Prints the tables and writes results/NAME.md (the tables and the computed answers), NAME.json and NAME.png."""
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(f"**{title}**\n\n{table}" for title, table in tables.items())
    if answers:
        text += "\n\n" + "\n".join(f"- {line}" for line in answers)
    print(text)
    (out / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=_jsonable) + "\n", encoding="utf-8")
    if figure is not None:
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
        print(f"[{name}] wrote {out / (name + '.png')}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Run):
        return value.summary()
    return float(value)


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long version that checks the code (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the tables and figures go")
    args, _ = parser.parse_known_args()
    global tiny
    tiny = args.tiny
    return args


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seeds(count: int) -> tuple[int, ...]:
    """The paired seeds of an arm (one with --tiny)."""
    return (0,) if tiny else tuple(range(count))
