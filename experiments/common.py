"""What every experiment shares: the bundled corpus and its tokenizer, a short seeded training run, its dev loss and
BLEU, and the tables and figures it writes.

A run here is the paper's recipe at a small size and a fixed budget: Adam (0.9, 0.98, 1e-9), the §5.3 schedule
through transformers' `get_inverse_sqrt_schedule` (linear warm-up, then 1/sqrt(step)), token batches of about
`max_tokens` source + target tokens (training's `TokenBatchSampler`), label smoothing from the config, greedy
decoding for the dev BLEU. It is a loop of its own rather than the Trainer because the experiments change the
model's layers in ways the Trainer should not see (no scaling, no residuals) and record per-step losses and gradient
norms; the training command (`training/train.py`) is the recipe's real path.
"""

from __future__ import annotations

import argparse
import json
import math
import random
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
DEV_PAIRS = 200
VOCAB_SIZE = 1000
TINY = {"pairs": 1_500, "dev_pairs": 16}  # --tiny: seconds, to check the code (CI), not to measure anything
tiny = False  # set by `arguments()` from --tiny


# ---- data ------------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    tokenizer: Any
    train: list[tuple[list[int], list[int]]]  # (source ids, target ids)
    dev_sources: list[str]
    dev_targets: list[str]
    dev: list[tuple[list[int], list[int]]]


def corpus() -> Corpus:
    """The bundled EN->DE corpus (numbers and dates, training/data.py) with a BPE vocabulary of VOCAB_SIZE: CORPUS_PAIRS
    pairs of which DEV_PAIRS for the dev split, or the TINY sizes with --tiny."""
    return _corpus(**TINY) if tiny else _corpus(CORPUS_PAIRS, DEV_PAIRS)


@cache
def _corpus(pairs: int, dev_pairs: int) -> Corpus:
    from hf_vanilla_transformer_training.data import build_demo_corpus
    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    data = build_demo_corpus(num_pairs=pairs, validation_size=dev_pairs, test_size=dev_pairs, seed=0)
    train_pairs = [(p["en"], p["de"]) for p in data["train"]["translation"]]
    dev_pairs_ = [(p["en"], p["de"]) for p in data["validation"]["translation"]]
    tokenizer = train_bpe_tokenizer((text for pair in train_pairs for text in pair), vocab_size=VOCAB_SIZE)

    def encode(pairs_: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        sources = tokenizer([s for s, _ in pairs_]).input_ids
        targets = tokenizer(text_target=[t for _, t in pairs_]).input_ids
        return list(zip(sources, targets, strict=True))

    return Corpus(tokenizer, encode(train_pairs), [s for s, _ in dev_pairs_], [t for _, t in dev_pairs_],
                  encode(dev_pairs_))  # fmt: skip


def config(**fields: Any) -> VanillaTransformerConfig:
    """The experiments' base model, the paper's base at 1/8 of its widths and 1/3 of its depth: d_model 64, d_ff 256,
    h 4 (d_k 16), N 2, the corpus' vocabulary, P_drop 0.1, eps_ls 0.1; `fields` change it."""
    base = {"vocab_size": VOCAB_SIZE, "d_model": 64, "d_ff": 256, "h": 4, "encoder_layers": 2, "decoder_layers": 2,
            "dropout": 0.1, "label_smoothing": 0.1}  # fmt: skip
    return VanillaTransformerConfig(**{**base, **fields})


def batches(pairs: list[tuple[list[int], list[int]]], max_tokens: int, seed: int, tokenizer: Any):
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


def collate(pairs: list[tuple[list[int], list[int]]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Padded input_ids, attention_mask and labels (-100 at padding): transformers' seq2seq collator, as training."""
    from transformers import DataCollatorForSeq2Seq

    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return dict(collator([{"input_ids": source, "labels": target} for source, target in pairs]))


# ---- a run -------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # training loss (label-smoothed) at `steps`
    diverged_at: int | None = None
    dev_nll: float = math.nan
    dev_bleu: float = math.nan
    dev_chrf: float = math.nan
    seconds: float = 0.0
    other_dev: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {"nll", "perplexity", "bleu"}
    model: Any = field(default=None, repr=False)  # the trained model

    @property
    def dev_perplexity(self) -> float:
        return math.exp(self.dev_nll) if math.isfinite(self.dev_nll) and self.dev_nll < 50 else math.inf

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "final_train_loss": self.losses[-1] if self.losses else math.nan,
                "dev_nll": self.dev_nll, "dev_perplexity": self.dev_perplexity, "dev_bleu": self.dev_bleu,
                "dev_chrf": self.dev_chrf, "diverged_at": self.diverged_at, "seconds": round(self.seconds, 1)}  # fmt: skip


def train_run(
    name: str,
    model_config: VanillaTransformerConfig,
    steps: int,
    peak_lr: float | None = None,
    warmup: int = 400,
    ramp: bool = True,
    seed: int = 0,
    max_tokens: int = 1500,
    log_every: int = 10,
    change_model: Callable[[VanillaTransformerForConditionalGeneration], None] | None = None,
    train_pairs: list[tuple[list[int], list[int]]] | None = None,
    dev: tuple[list[str], list[str], list[tuple[list[int], list[int]]]] | None = None,
    other_dev: dict[str, tuple[list[str], list[str], list[tuple[list[int], list[int]]]]] | None = None,
    data: Corpus | None = None,
) -> Run:
    """Trains a fresh model (seeded) for `steps` and evaluates it on the dev split. `peak_lr` None is §5.3's
    d_model^-0.5 * warmup^-0.5; `ramp=False` drops the warm-up ramp (the rate starts at its peak, then decays as
    1/sqrt(step) as before). A non-finite loss ends the run (`diverged_at`)."""
    from transformers import get_inverse_sqrt_schedule

    data = data or corpus()
    torch.manual_seed(seed)
    random.seed(seed)
    model = VanillaTransformerForConditionalGeneration(model_config)
    if change_model is not None:
        change_model(model)
    peak = peak_lr if peak_lr is not None else model_config.d_model**-0.5 * warmup**-0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=peak, betas=(0.9, 0.98), eps=1e-9)
    schedule = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup if ramp else 0, timescale=warmup)
    run = Run(name)
    started = time.perf_counter()
    model.train()
    stream = batches(train_pairs or data.train, max_tokens, seed, data.tokenizer)
    window: list[float] = []
    for step in range(1, steps + 1):
        loss = model(**next(stream)).loss
        if not torch.isfinite(loss):
            run.diverged_at = step
            break
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            run.steps.append(step)
            run.losses.append(sum(window) / len(window))
            window = []
    if run.diverged_at is None:
        sources, references, encoded = dev or (data.dev_sources, data.dev_targets, data.dev)
        run.dev_nll = dev_nll(model, encoded, data.tokenizer)
        run.dev_bleu, run.dev_chrf = dev_scores(model, data.tokenizer, sources, references)
        for name, (sources, references, encoded) in (other_dev or {}).items():
            nll = dev_nll(model, encoded, data.tokenizer)
            bleu, chrf = dev_scores(model, data.tokenizer, sources, references)
            run.other_dev[name] = {"nll": nll, "perplexity": math.exp(min(nll, 50)), "bleu": bleu, "chrf": chrf}
    run.seconds = time.perf_counter() - started
    run.model = model
    return run


@torch.no_grad()
def dev_nll(model, pairs: list[tuple[list[int], list[int]]], tokenizer: Any, batch: int = 64) -> float:
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


def dev_scores(model, tokenizer, sources: list[str], references: list[str]) -> tuple[float, float]:
    """sacreBLEU's BLEU and chrF of greedy translations. Many of the corpus' targets are one German word (a number
    written as one compound), which BLEU's 4-grams score 0 whatever the rest: chrF (character n-grams) is reported
    beside it."""
    import sacrebleu

    model.eval()
    # Greedy, at most 48 new tokens (the longest reference has 30): an untrained model must not decode for minutes.
    hypotheses = translate(model, tokenizer, sources, progress=False, num_beams=1, max_new_tokens=48)
    return sacrebleu.corpus_bleu(hypotheses, [references]).score, sacrebleu.corpus_chrf(hypotheses, [references]).score


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


def save(name: str, tables: dict[str, str], data: dict[str, Any], figure=None, out: Path = RESULTS) -> None:
    """Prints the tables and writes results/NAME.md (the tables), NAME.json (the numbers) and NAME.png."""
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(f"**{title}**\n\n{table}" for title, table in tables.items())
    print(text)
    (out / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=float) + "\n", encoding="utf-8")
    if figure is not None:
        figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        print(f"[{name}] wrote {out / (name + '.png')}")


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long version that checks the code (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the tables and figures go")
    args = parser.parse_args()
    global tiny
    tiny = args.tiny
    return args


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
