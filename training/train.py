"""The paper's training recipe (§5) on Seq2SeqTrainer, then checkpoint averaging and the test score (§6.1).

    vanilla-transformer-train --output_dir outputs/demo --preset demo                # the bundled corpus
    vanilla-transformer-train --dataset_name wmt14 --dataset_config_name de-en --preset base --vocab_size 37000 \\
        --max_tokens 50000 --max_steps 100000 --average_last 5 --save_minutes 10     # the paper's base run
    vanilla-transformer-train --model_name_or_path FOLDER_OR_HUB_ID --train_file train.jsonl ...   # fine-tuning
    accelerate launch --num_processes 8 -m hf_vanilla_transformer_training.train ...  # data parallel (DDP)

Every Seq2SeqTrainingArguments flag works; flags not given are the paper's: Adam(0.9, 0.98, 1e-9);
lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) with warmup 4000 (transformers' `inverse_sqrt` schedule
with that peak); label smoothing from the preset (0.1); batches of about --max_tokens source + target tokens per
optimizer step, summed over devices and gradient accumulation; beam 4 with the GNMT length penalty 0.6 for BLEU.
An output folder that holds another run is refused unless --resume_from_checkpoint last|PATH (continue, with
optimizer, scheduler and RNG state) or --overwrite_output_dir (delete that run's outputs) is given.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from huggingface_hub.errors import StrictDataclassError
from torch.utils.data import DataLoader, Sampler
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy

import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    any_config,
    paper_generation_config,
    translate,
)

from .arguments import DataTrainingArguments, ModelArguments, RunArguments, parse_arguments
from .attention_maps import attention_maps
from .average_checkpoints import (
    CHECKPOINT_NAME,
    UNCOMPARED_CONFIG_KEYS,
    average_checkpoints,
    complete_checkpoints,
    first_difference,
)
from .data import DEMO_CATEGORIES, clean_split, demo_category, load_translation_data, stratified_subset
from .model_card import check_card, render_card, result_lines
from .tokenizer import check_tokenizer_matches_config, load_tokenizer, train_bpe_tokenizer


# ---- token batching ------------------------------------------------------------------------------------------
class TokenBatchSampler(Sampler[list[int]]):
    """Batches of pairs of similar length with at most `max_tokens` padded source + target tokens each (§5.1:
    "sentence pairs were batched together by approximate sequence length"), in a random order that depends only
    on (seed, epoch), so a resumed run sees the same batches. torch and transformers batch by sentence count only.

    The number of batches per epoch is trimmed to a multiple of `multiple_of` (devices x accumulation steps) so
    that every device takes part in every optimizer step; an epoch of fewer batches than that repeats them.
    """

    def __init__(
        self,
        source_lengths: Sequence[int],
        target_lengths: Sequence[int],
        max_tokens: int,
        seed: int = 0,
        multiple_of: int = 1,
        shuffle: bool = True,
    ):
        longest = max(s + t for s, t in zip(source_lengths, target_lengths, strict=True))
        if max_tokens < longest:
            raise ValueError(f"max_tokens={max_tokens} per batch is less than the longest pair ({longest} tokens).")
        self.source_lengths, self.target_lengths = list(source_lengths), list(target_lengths)
        self.max_tokens, self.seed, self.multiple_of, self.shuffle = max_tokens, seed, multiple_of, shuffle
        self.epoch = 0
        self.batch_size = None  # dynamic batch sizes, for accelerate
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.source_lengths)))
        if self.shuffle:
            rng.shuffle(order)
        # Sort by length within large chunks: batches of similar lengths, still a different mix every epoch.
        chunk = 100 * max(1, self.max_tokens // 16)
        order = [
            i
            for start in range(0, len(order), chunk)
            for i in sorted(
                order[start : start + chunk], key=lambda i: (self.source_lengths[i], self.target_lengths[i])
            )
        ]
        batches, batch, longest_source, longest_target = [], [], 0, 0
        for i in order:
            source = max(longest_source, self.source_lengths[i])
            target = max(longest_target, self.target_lengths[i])
            if batch and (len(batch) + 1) * (source + target) > self.max_tokens:
                batches.append(batch)
                batch, source, target = [], self.source_lengths[i], self.target_lengths[i]
            batch.append(i)
            longest_source, longest_target = source, target
        if batch:
            batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        if len(batches) < self.multiple_of:  # too few for one step on every device: repeat, as DistributedSampler pads
            return [batches[i % len(batches)] for i in range(self.multiple_of)]
        return batches[: len(batches) - len(batches) % self.multiple_of]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class TokenBatchingTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose training batches come from a TokenBatchSampler."""

    def __init__(self, *args: Any, max_tokens: int, cooldown_steps: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_tokens, self.cooldown_steps = max_tokens, cooldown_steps

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The library's schedule (the paper's: --lr_scheduler_type inverse_sqrt), times a linear cool-down to 0 over
        the last --cooldown_steps steps. Deviation from the paper when --cooldown_steps > 0; the library has no
        cool-down on top of inverse_sqrt (its warmup_stable_decay holds the rate constant instead)."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.cooldown_steps and not getattr(scheduler, "cooled_down", False):
            schedules, cooldown = scheduler.lr_lambdas, self.cooldown_steps

            def cooled(schedule):
                return lambda step: schedule(step) * min(1.0, (num_training_steps - step) / cooldown)

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(scheduler.optimizer, [cooled(f) for f in schedules])
            self.lr_scheduler.cooled_down = True
        return self.lr_scheduler

    def get_train_dataloader(self) -> DataLoader:
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        devices = self.args.world_size
        accumulation = self.args.gradient_accumulation_steps
        per_batch = self.max_tokens // (devices * accumulation)  # --max_tokens is per optimizer step, in total
        if self.is_world_process_zero():
            print(f"[train] {devices} processes x {accumulation} accumulation steps: {per_batch} tokens per batch")
        sampler = TokenBatchSampler(
            [len(x) for x in dataset["input_ids"]],
            [len(x) for x in dataset["labels"]],
            max_tokens=per_batch,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            multiple_of=devices * accumulation,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    # The model's loss is the paper's label-smoothed cross-entropy (§5.4), so eval_loss is no perplexity. Evaluation
    # also reports the plain token NLL and its perplexity; the Trainer has no such metric, so it is added here.
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # fmt: skip
        self._nll = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # summed NLL, target tokens
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        total, tokens = self.accelerator.reduce(self._nll, reduction="sum").tolist()
        if tokens:
            output.metrics[f"{metric_key_prefix}_nll"] = total / tokens
            output.metrics[f"{metric_key_prefix}_perplexity"] = math.exp(min(total / tokens, 700.0))
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        # Seq2SeqTrainer.prediction_step writes GenerationConfig's defaults (max_length=20, ...) into the model's
        # generation config, which then warns "Both max_new_tokens and max_length" at every later generate() and
        # would be saved with the model. The model's own generation config is put back after each step.
        generation_config = copy.deepcopy(self.model.generation_config)
        result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        self.model.generation_config = generation_config
        if "labels" in inputs:
            # A second teacher-forced forward pass: cheap next to the beam search that prediction_step ran.
            labels = inputs["labels"]
            with torch.no_grad():
                logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            nll = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
            )
            self._nll += torch.stack([nll.double(), (labels != -100).sum().double()])
        return result

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # Resuming loads the checkpoint's state dict, which holds each tied matrix once; the Trainer warns about the
        # other names unless they are in `_keys_to_ignore_on_save`. Names tied to a loaded matrix are not missing.
        tied = getattr(self.model, "all_tied_weights_keys", None) or {}
        missing = [k for k in load_result.missing_keys if not (k in tied and tied[k] not in load_result.missing_keys)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        # A non-finite loss stops the run here, before its update reaches a checkpoint: the Trainer's own NaN filter
        # only hides it from the log (it logs the mean of the finite steps, and 'loss': 0 once all are NaN).
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteTrainingError(
                f"The training loss is {loss.item()} at step {self.state.global_step + 1}: the run diverged. Nothing of "
                f"this step was saved; the complete checkpoints {self._intact()} are from before. Lower the learning "
                "rate (--lr_scale) or lengthen the warm-up (--warmup_steps)."
            )
        return loss

    def _intact(self) -> list[str] | str:
        return [c.name for c in complete_checkpoints(self.args.output_dir, for_resume=True)] or "(none)"

    def _save_checkpoint(self, model, trial) -> None:
        # Non-finite weights (a finite loss whose gradient overflowed) are never written as a checkpoint.
        broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise NonFiniteTrainingError(
                f"{len(broken)} weight tensors are not finite at step {self.state.global_step} ({', '.join(broken[:3])}"
                f"{' ...' if len(broken) > 3 else ''}): the run diverged and checkpoint-{self.state.global_step} was "
                f"not written; the complete checkpoints {self._intact()} are from before."
            )
        # A checkpoint counts as written once its trainer_state.json (the Trainer's last file) parses, so a save
        # that fails half-way (a full disk, a kill) leaves a folder that resuming and averaging skip; the earlier
        # checkpoints are untouched. The error says so instead of a bare error from deep inside torch.save, which
        # reports a full disk as RuntimeError("... unexpected pos ...") rather than OSError.
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and not WRITE_FAILURE.search(str(error)):
                raise
            reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
            raise OSError(
                getattr(error, "errno", None) or errno.EIO,
                f"Saving checkpoint-{self.state.global_step} in {self.args.output_dir} failed ({reason}); is the disk "
                f"full? The complete checkpoints {self._intact()} are intact and a rerun resumes from the last of them.",
            ) from error


class NonFiniteTrainingError(RuntimeError):
    """The run diverged (a NaN or infinite loss or weight); nothing from it was saved or published."""


# How torch.save's zip writer and safetensors report a failed write (ENOSPC, EFBIG, EIO) as RuntimeError.
WRITE_FAILURE = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter failed|No space left|File too large")


# A logged training loss above this multiple of the first is reported (a diverging run); a run whose last logged loss
# is above it is recorded as such in results.json and not published.
LOSS_RISE_FACTOR = 1.5


class LossRiseCallback(TrainerCallback):
    """Reports, once, a training loss that rises LOSS_RISE_FACTOR times above where it started (`loss_rise`); the run
    goes on (a spike may recover), the rise is recorded in results.json, and --push_to_hub refuses a model whose last
    logged loss is that far above its first."""

    def __init__(self):
        self.reported = False
        self.spikes_reported = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            spikes = loss_spikes(state.log_history, args.warmup_steps)
            for spike in spikes[self.spikes_reported :]:
                print(
                    f"[train] WARNING: a spike at step {spike['step']}: mean loss {spike['mean_loss']:.3g} over the last "
                    f"{SPIKE_WINDOW_STEPS} steps (lowest before {spike['lowest_mean_before']:.3g}), gradient norm "
                    f"{spike['grad_norm']}.",
                    file=sys.stderr,
                )
            self.spikes_reported = len(spikes)
        if not self.reported and state.is_world_process_zero and (rise := loss_rise(state.log_history)):
            self.reported = True
            print(
                f"[train] WARNING: the training loss rose from {rise['first_loss']:.3g} to {rise['last_loss']:.3g} "
                f"at step {state.global_step}: the run may be diverging (learning rate too high, warm-up too short).",
                file=sys.stderr,
            )


# After the warm-up, a training loss (the mean over the last SPIKE_WINDOW_STEPS steps) above SPIKE_FACTOR times the
# lowest such mean before it, or a logged gradient norm above GRAD_SPIKE_FACTOR times the median of those logged before
# it, is a spike: a jump that can erase what the model learned. Reported as it happens, recorded in results.json
# (`loss_spikes`). The mean is over a window because length-sorted batches are mostly of one kind (the demo's: 71% of
# them hold numbers only or dates only, whose losses differ several-fold), so single logged losses jump by batch.
SPIKE_FACTOR = 1.25
SPIKE_WINDOW_STEPS = 200
GRAD_SPIKE_FACTOR = 10.0


def loss_spikes(log_history: list[dict[str, Any]], warmup_steps: int) -> list[dict[str, float]]:
    """The logged steps after the warm-up whose loss or gradient norm spiked (see SPIKE_FACTOR), in order."""
    import statistics

    logged = [e for e in log_history if "loss" in e]
    spikes, lowest, norms, window = [], math.inf, [], []
    for previous, entry in zip([{"step": 0}, *logged], logged, strict=False):
        step, norm = entry.get("step", 0), entry.get("grad_norm")
        window.append((step - previous.get("step", 0), entry["loss"]))
        while sum(n for n, _ in window) - window[0][0] >= SPIKE_WINDOW_STEPS:  # the shortest window of >= 200 steps
            window.pop(0)
        covered = sum(n for n, _ in window)
        mean = sum(n * loss for n, loss in window) / covered if covered else entry["loss"]
        full = covered >= SPIKE_WINDOW_STEPS or len(window) == len(logged)
        if step > warmup_steps and ((full and mean > SPIKE_FACTOR * lowest) or (
            norm is not None and len(norms) >= 5 and norm > GRAD_SPIKE_FACTOR * statistics.median(norms)
        )):  # fmt: skip
            spikes.append({"step": step, "mean_loss": mean, "lowest_mean_before": lowest, "grad_norm": norm})
        if full:
            lowest = min(lowest, mean)
        if norm is not None and math.isfinite(norm):
            norms.append(norm)
    return spikes


def loss_rise(log_history: list[dict[str, Any]]) -> dict[str, float] | None:
    """The first and last logged training losses when the last is LOSS_RISE_FACTOR times the first or more (the
    model ended far worse than it started), else None."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if len(losses) >= 2 and losses[-1] > LOSS_RISE_FACTOR * losses[0]:
        return {"first_loss": losses[0], "last_loss": losses[-1]}
    return None


class SaveEveryMinutesCallback(TrainerCallback):
    """§6.1 wrote checkpoints at 10-minute intervals; the Trainer saves by steps only."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.last >= self.seconds:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


class KeepLastCheckpointsCallback(TrainerCallback):
    """Keeps the newest `keep` complete checkpoints by step number and deletes the rest. This replaces the
    Trainer's `save_total_limit`, which orders checkpoints by folder mtime and, after a run was killed while
    deleting or saving one, can take a new checkpoint for an old one and delete it. The state file goes first, so
    a deletion cut short leaves a folder that counts as incomplete."""

    def __init__(self, keep: int):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for old in complete_checkpoints(args.output_dir)[: -self.keep]:
            (old / "trainer_state.json").unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)


class RecordArgumentsCallback(TrainerCallback):
    """Writes OUTPUT_DIR/run_arguments.json (what a resume is compared with) at the run's first checkpoint: a run
    that stops earlier (a data error, a typo) leaves no record that would refuse the corrected rerun."""

    def __init__(self, recorded: dict[str, Any]):
        self.recorded = recorded

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / "run_arguments.json"
            path.write_text(json.dumps(self.recorded, indent=2) + "\n", encoding="utf-8")


class SaveAtEndCallback(TrainerCallback):
    """The last step is always a full checkpoint (the Trainer saves only every save_steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


# ---- evaluation ----------------------------------------------------------------------------------------------
def translation_scores(
    hypotheses: list[str], references: list[str], sources: list[str] | None = None
) -> dict[str, Any]:
    """sacreBLEU's BLEU and chrF on detokenized text, and the exact-match rate (percentages). With the `sources` of
    the demo corpus also `exact_match_by_category` (category -> percent, DEMO_CATEGORIES' order): on this corpus BLEU
    weighs mostly the dates and chrF mostly the numbers, so neither shows which half a model gets wrong."""
    import sacrebleu

    exact = [h == r for h, r in zip(hypotheses, references, strict=True)]
    scores: dict[str, Any] = {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "exact_match": 100.0 * sum(exact) / len(references),
    }
    categories = [demo_category(source) for source in sources] if sources is not None else [None]
    if None not in categories:
        hits: dict[str, list[bool]] = {name: [] for name in DEMO_CATEGORIES}
        for category, hit in zip(categories, exact, strict=True):
            hits[category].append(hit)
        scores["exact_match_by_category"] = {name: 100.0 * sum(h) / len(h) for name, h in hits.items() if h}
        scores["pairs_by_category"] = {name: len(h) for name, h in hits.items() if h}
    return scores


def category_key(category: str) -> str:
    """A metric name for a category: "number, 4 digits" -> "exact_number_4_digits"."""
    return "exact_" + re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def make_compute_metrics(tokenizer, sources: list[str] | None = None):
    """The Trainer's validation metrics; `sources` are the validation set's sources in order (the evaluation reads
    it in order), for the exact match per category (flat: `exact_number_4_digits`, ...)."""

    def compute_metrics(prediction) -> dict[str, float]:
        predictions, labels = prediction.predictions, prediction.label_ids
        predictions = [[t for t in row if 0 <= t < len(tokenizer)] for row in predictions.tolist()]
        labels = [[t for t in row if t != -100] for row in labels.tolist()]
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        in_order = sources is not None and len(sources) == len(hypotheses)
        scores = translation_scores(hypotheses, references, sources if in_order else None)
        by_category = scores.pop("exact_match_by_category", {})
        scores.pop("pairs_by_category", None)
        return {**scores, **{category_key(name): value for name, value in by_category.items()}}

    return compute_metrics


def plot_learning_curve(log_history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation NLL per token (left), validation exact match per demo category, or BLEU for
    other data (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> list[tuple[int, float]]:
        return [(e["step"], e[key]) for e in log_history if key in e]

    figure, loss_axis = plt.subplots(figsize=(8, 4.5))
    for key, style, label, color in (("loss", "-", "training loss (label-smoothed)", "tab:blue"),
                                     ("eval_loss", "o-", "validation loss (label-smoothed)", "tab:cyan"),
                                     ("eval_nll", "o--", "validation NLL per token", "tab:purple")):  # fmt: skip
        if points := series(key):
            loss_axis.plot(*zip(*points, strict=True), style, label=label, color=color)
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("nats per target token")
    loss_axis.legend(loc="upper left", fontsize=8)
    categories = [(name, series("eval_" + category_key(name))) for name in DEMO_CATEGORIES]
    categories = [(name, points) for name, points in categories if points]
    score_axis = loss_axis.twinx()
    if categories:
        for name, points in categories:
            score_axis.plot(*zip(*points, strict=True), "s-", markersize=3, label=name)
        score_axis.set_ylabel("validation exact match (%)")
        score_axis.set_ylim(0, 100)
        score_axis.legend(loc="center right", fontsize=7)
    elif bleu := series("eval_bleu"):
        score_axis.plot(*zip(*bleu, strict=True), "s-", color="tab:red", label="validation BLEU")
        score_axis.set_ylabel("BLEU")
        score_axis.legend(loc="upper right")
    loss_axis.set_title("Learning curve")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def category_table(scores: dict[str, Any]) -> str:
    """The per-category exact match of a scored split as a small text table (for the end of a demo run)."""
    lines = [f"  {'category':22s} {'pairs':>6s} {'exact match':>12s}"]
    for name, value in scores["exact_match_by_category"].items():
        lines.append(f"  {name:22s} {scores['pairs_by_category'][name]:6d} {value:11.2f}%")
    return "\n".join(lines)


# ---- the run -------------------------------------------------------------------------------------------------
RUN_OUTPUTS = ("averaged", "model", "tokenizer", "run_arguments.json", "results.json", "learning_curve.png")


def parse_args(argv: list[str] | None = None) -> RunArguments:
    """The command line as `RunArguments` (model, data, paper and Seq2SeqTrainingArguments), checked."""
    return parse_arguments(argv, description=__doc__)


def is_main_process() -> bool:
    return PartialState().is_main_process


def check_output_dir(output_dir: Path) -> None:
    """Fails before any work when the output folder cannot be created or written."""
    probe = output_dir / f".write_test_{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"Cannot write to the output folder {output_dir}: {error}") from error


LOCK_NAME = ".training.lock"


def lock_output_dir(output_dir: Path):
    """An exclusive lock on OUTPUT_DIR for as long as this run lives (the first process holds it; the operating
    system releases it when the process ends, however it ends). A second run started into the same folder is
    refused with the holder's pid, before it reads or changes anything there. Returns the open lock file (close it
    to release) or None on a non-main process."""
    import fcntl
    import socket

    if not is_main_process():
        return None
    handle = open(output_dir / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held open until the run ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SystemExit(
            f"{output_dir} is in use by a running training ({holder}); two runs in one output folder would replace "
            "each other's checkpoints and results. Wait for it, stop it, or choose another --output_dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def check_distributed_strategy() -> None:
    """accelerate enables FSDP only on GPU-class devices: launched with an FSDP config on CPU processes, it
    silently trains with plain DDP over gloo instead. Refused here rather than run another strategy than asked."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        raise SystemExit(
            "The FSDP accelerate config needs CUDA GPUs: accelerate runs FSDP only on GPU-class devices and would "
            "train these CPU processes with plain DDP instead. Use training/accelerate_configs/ddp.yaml (or "
            "`accelerate launch --multi_gpu`) on CPU."
        )


def previous_run_outputs(output_dir: Path) -> list[Path]:
    """What an earlier run of this command left in `output_dir`: its checkpoint-<step> folders and RUN_OUTPUTS."""
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found) + [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def resolve_resume(run: RunArguments, output_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a new run. A folder that holds another run is refused unless
    --resume_from_checkpoint or --overwrite_output_dir says what to do with it. (A tokenizer/ alone is what a run
    stopped before its first checkpoint leaves; a new run trains it again.)"""
    spec = run.training.resume_from_checkpoint
    previous = [p for p in previous_run_outputs(output_dir) if p.name != "tokenizer"]
    names = ", ".join(p.name for p in previous[:6]) + (", ..." if len(previous) > 6 else "")
    if run.paper.overwrite_output_dir:
        if spec is not None:
            raise SystemExit(
                "Give --resume_from_checkpoint (continue) or --overwrite_output_dir (start again), not both."
            )
        check_inputs_survive(run, previous_run_outputs(output_dir))
        return None
    outside = spec not in (None, "last") and Path(spec).resolve().parent != output_dir.resolve()
    if spec is None or outside:
        if previous:
            raise SystemExit(
                f"{output_dir} holds another run ({names}). Give --resume_from_checkpoint last to continue it (or "
                "--resume_from_checkpoint PATH for one checkpoint), --overwrite_output_dir to start again (deletes "
                "those), or another --output_dir."
            )
        return None
    if spec == "last":
        found = complete_checkpoints(output_dir, for_resume=True)
        written = complete_checkpoints(output_dir)  # trainer_state.json written: a save that finished
        if not found and written:
            raise SystemExit(
                f"--resume_from_checkpoint last: {output_dir} has checkpoints ({', '.join(c.name for c in written)}) "
                "but none holds the optimizer, scheduler and RNG state in the files this command resumes from "
                "(saved with --save_only_model, or sharded by FSDP / DeepSpeed). Resume with the launcher that wrote "
                "them, or start again with --overwrite_output_dir."
            )
        if not found and previous:
            raise SystemExit(
                f"--resume_from_checkpoint last: {output_dir} holds another run's outputs ({names}) but no checkpoint "
                "to resume from; give --overwrite_output_dir to start again (deletes them) or another --output_dir."
            )
        if not found:
            print(f"[train] --resume_from_checkpoint last: no complete checkpoint in {output_dir}, a new run starts")
        return found[-1] if found else None
    path = Path(spec)
    if not path.is_dir():
        raise SystemExit(
            f"--resume_from_checkpoint {spec}: no such folder (expected a checkpoint-<step> folder or 'last')."
        )
    if path.resolve() not in [c.resolve() for c in complete_checkpoints(path.parent, for_resume=True)]:
        raise SystemExit(
            f"--resume_from_checkpoint {spec} is not a complete checkpoint: expected a checkpoint-<step> folder with "
            "model.safetensors, optimizer.pt, scheduler.pt, rng_state*.pth and a readable trainer_state.json."
        )
    step = int(CHECKPOINT_NAME.match(path.name).group(1))
    newer = [c.name for c in complete_checkpoints(output_dir) if int(CHECKPOINT_NAME.match(c.name).group(1)) > step]
    if newer:
        raise SystemExit(
            f"--resume_from_checkpoint {spec}: {output_dir} has newer checkpoints ({', '.join(newer)}) that the resumed "
            "run would overwrite; move them away or resume from the last one."
        )
    return path


def check_inputs_survive(run: RunArguments, doomed: list[Path]) -> None:
    """--overwrite_output_dir must not delete what this run reads (a model, tokenizer or data file inside the
    previous run's outputs)."""
    inputs = [run.model.model_name_or_path, run.model.tokenizer_name, run.data.train_file, run.data.validation_file,
              run.data.test_file]  # fmt: skip
    paths = [Path(part) for spec in inputs if spec for part in spec.split(",") if Path(part).exists()]
    for path in paths:
        for gone in doomed:
            if path.resolve() == gone.resolve() or gone.resolve() in path.resolve().parents:
                raise SystemExit(
                    f"--overwrite_output_dir would delete {gone}, which this run reads ({path}); copy it elsewhere "
                    "first or choose another --output_dir."
                )


def overwrite_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: deletes exactly what an earlier run of this command wrote (RUN_OUTPUTS and its
    checkpoint-<step> folders), nothing else in the folder."""
    for path in previous_run_outputs(output_dir):
        print(f"[train] --overwrite_output_dir: deleting {path}")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_recorded_arguments(run: RunArguments, output_dir: Path, checkpoint: Path | None) -> None:
    """A resumed run must be the run that wrote the checkpoint: the arguments that define the model, tokenizer,
    data and schedule are compared with the ones recorded when it started; the first difference is named."""
    recorded_file = (checkpoint.parent if checkpoint is not None else output_dir) / "run_arguments.json"
    if not recorded_file.is_file():
        return
    recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    ours = json.loads(json.dumps(run.recorded()))  # the JSON round trip of what would be written
    key = first_difference(ours, recorded)
    if key is not None:
        raise SystemExit(
            f"Cannot resume: this run's {key} is {ours.get(key)!r} but the run in {recorded_file.parent} used "
            f"{recorded.get(key)!r} ({recorded_file}). Give the same value, or start again with "
            "--overwrite_output_dir or another --output_dir."
        )


def check_checkpoint_matches(checkpoint: Path, config: VanillaTransformerConfig, tokenizer) -> None:
    """The checkpoint's config and tokenizer must be this run's, or resuming trains something else than asked."""
    saved, ours = VanillaTransformerConfig.from_pretrained(checkpoint).to_dict(), config.to_dict()
    key = first_difference(saved, ours, ignore=UNCOMPARED_CONFIG_KEYS, alphabetical=True)
    if key is not None:
        raise SystemExit(
            f"Cannot resume from {checkpoint}: its config has {key}={saved.get(key)!r} but this run's arguments "
            f"give {key}={ours.get(key)!r}."
        )
    saved_tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    theirs, mine = saved_tokenizer.get_vocab(), tokenizer.get_vocab()
    if theirs != mine:
        differing = next((t for t in sorted(set(theirs) | set(mine)) if theirs.get(t) != mine.get(t)), None)
        raise SystemExit(
            f"Cannot resume from {checkpoint}: its tokenizer differs from this run's ({len(theirs)} vs {len(mine)} "
            f"tokens; {differing!r} has id {theirs.get(differing)} there and {mine.get(differing)} here)."
        )


def load_source_config(model_args: ModelArguments, overrides: dict[str, Any]) -> VanillaTransformerConfig:
    """--model_name_or_path's config, with the training-time overrides; a model of another kind is refused."""
    hub = model_args.hub_kwargs()
    path = model_args.model_name_or_path
    try:
        found = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code, **hub)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model_name_or_path {path}: cannot load its config ({error}).") from error
    if found.model_type != VanillaTransformerConfig.model_type:
        kind = {"marian": "marian", "fsmt": "fairseq"}.get(found.model_type, "marian|fairseq")
        raise SystemExit(
            f"--model_name_or_path {path} is a {found.model_type!r} model, not one of this project "
            f"({VanillaTransformerConfig.model_type!r}). Convert it first: vanilla-transformer-convert {kind} "
            f"{path} OUTPUT, then give OUTPUT."
        )
    try:
        return VanillaTransformerConfig.from_pretrained(path, **hub, **overrides)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise SystemExit(f"--config_overrides {overrides} for --model_name_or_path {path}: {error}") from error


def initial_config(run: RunArguments) -> VanillaTransformerConfig:
    """The model's config before the tokenizer exists (a new model's vocabulary size is set from it later)."""
    if run.model.model_name_or_path is not None:
        return load_source_config(run.model, run.overrides)
    return any_config(run.model.preset, **{"vocab_size": run.model.vocab_size, **run.overrides})


def prepare_tokenizer(run: RunArguments, train_rows, output_dir: Path, resume: Path | None):
    """--tokenizer_name, else --model_name_or_path's own tokenizer, else the run's BPE vocabulary: a resumed run
    takes the one saved in its checkpoint; a new run trains it (the first process; the others load its copy in
    OUTPUT_DIR/tokenizer)."""
    model_args = run.model
    hub = model_args.hub_kwargs()
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source is not None:
        try:
            return load_tokenizer(source, trust_remote_code=model_args.trust_remote_code, **hub)
        except (OSError, ValueError) as error:
            raise SystemExit(f"Cannot load the tokenizer of {source}: {error}") from error
    if resume is not None:
        return AutoTokenizer.from_pretrained(resume)
    folder = output_dir / "tokenizer"
    if not is_main_process():
        return AutoTokenizer.from_pretrained(folder)
    langs = (run.data.source_lang, run.data.target_lang)
    texts = (pair[lang] for pair in train_rows["translation"] for lang in langs)
    started = time.perf_counter()
    print(f"[tokenizer] training a {model_args.vocab_size}-piece BPE vocabulary on the {len(train_rows)} training "
          f"pairs (both languages) ...", flush=True)  # fmt: skip
    tokenizer = train_bpe_tokenizer(texts, vocab_size=model_args.vocab_size)
    tokenizer.save_pretrained(folder)
    print(f"[tokenizer] done in {time.perf_counter() - started:.0f} s: {folder}", flush=True)
    return tokenizer


def tokenize_split(rows, tokenizer, data_args: DataTrainingArguments, split: str):
    """run_translation's preprocessing: the optional source prefix, sources and targets (`text_target`, so a
    tokenizer with a separate target vocabulary encodes the labels with it) truncated to --max_source_length /
    --max_target_length, or with --drop_long_pairs the longer pairs dropped."""
    prefix = data_args.source_prefix or ""
    truncate = not data_args.drop_long_pairs

    def encode(batch: dict[str, list]) -> dict[str, list]:
        sources = [prefix + pair[data_args.source_lang] for pair in batch["translation"]]
        targets = [pair[data_args.target_lang] for pair in batch["translation"]]
        inputs = tokenizer(sources, max_length=data_args.max_source_length, truncation=truncate)
        labels = tokenizer(text_target=targets, max_length=data_args.max_target_length, truncation=truncate)
        return {"input_ids": inputs.input_ids, "labels": labels.input_ids}

    encoded = rows.map(
        encode,
        batched=True,
        remove_columns=rows.column_names,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"tokenizing {split}",
    )
    limits = (data_args.max_source_length, data_args.max_target_length)
    if truncate:
        at_limit = sum(
            len(s) >= limits[0] or len(t) >= limits[1]
            for s, t in zip(encoded["input_ids"], encoded["labels"], strict=True)
        )
        if at_limit:
            print(
                f"[data] {split}: {at_limit} of {len(encoded)} pairs reach --max_source_length {limits[0]} / "
                f"--max_target_length {limits[1]} (longer ones are truncated; --drop_long_pairs drops them)"
            )
        return encoded
    kept = encoded.filter(lambda x: len(x["input_ids"]) <= limits[0] and len(x["labels"]) <= limits[1])
    if len(kept) < len(encoded):
        print(
            f"[data] {split}: dropped {len(encoded) - len(kept)} of {len(encoded)} pairs over {limits[0]} source / "
            f"{limits[1]} target tokens"
        )
    if len(kept) == 0:
        raise SystemExit(f"The {split!r} split is empty after dropping the pairs over the length limits.")
    return kept


def check_batch_size(train_set, max_tokens: int, training: Seq2SeqTrainingArguments) -> None:
    """Every batch must hold the longest pair: --max_tokens is split over processes and accumulation steps."""
    share = training.world_size * training.gradient_accumulation_steps
    longest = max(len(s) + len(t) for s, t in zip(train_set["input_ids"], train_set["labels"], strict=True))
    if max_tokens // share < longest:
        raise SystemExit(
            f"--max_tokens {max_tokens} over {training.world_size} processes x {training.gradient_accumulation_steps} "
            f"accumulation steps is {max_tokens // share} tokens per batch, less than the longest training pair "
            f"({longest} source + target tokens). Raise --max_tokens, or lower --max_source_length / "
            "--max_target_length (or --drop_long_pairs)."
        )


def remove_incomplete_checkpoints(output_dir: Path) -> None:
    """Deletes this run's checkpoint-<step> folders that a killed or failed save left half-written: those whose
    trainer_state.json (the Trainer's last file) is missing or unreadable. They hold nothing usable, and the
    Trainer must not save into them: it would overwrite their files without changing the folder's mtime, and its
    mtime-ordered rotation would then take the new checkpoint for the oldest and delete it. Only folders named
    exactly checkpoint-<digits> are touched; a finished save is never deleted."""
    written = complete_checkpoints(output_dir)
    for path in sorted(output_dir.iterdir()):
        if path.is_dir() and CHECKPOINT_NAME.match(path.name) and path not in written:
            print(f"[train] removing the incomplete checkpoint {path.name} (a save that did not finish)")
            shutil.rmtree(path)


def check_disk_space(output_dir: Path, parameters: int, checkpoints_kept: int) -> None:
    """Fails before training when the checkpoints cannot fit: each holds the fp32 weights and Adam's two
    moments (12 bytes a parameter), `checkpoints_kept` + 1 of them exist at once, plus the averaged and final
    model folders."""
    needed = parameters * 12 * (checkpoints_kept + 1) + parameters * 4 * 2
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise SystemExit(
            f"Not enough disk space in {output_dir}: {free:,} bytes free, about {needed:,} needed for "
            f"{checkpoints_kept + 1} checkpoints of {parameters:,} parameters and the final model."
        )


def peak_learning_rate(given: float | None, d_model: int, warmup_steps: float, lr_scale: float) -> float:
    """§5.3: lrate peaks at d_model^-0.5 * warmup^-0.5 (at step = warmup); --learning_rate replaces the formula;
    --lr_scale multiplies either."""
    return (given if given is not None else d_model**-0.5 * warmup_steps**-0.5) * lr_scale


def main(argv: list[str] | None = None) -> dict[str, Any]:
    run = parse_args(argv)
    check_distributed_strategy()
    output_dir = Path(run.training.output_dir)
    check_output_dir(output_dir)
    lock = lock_output_dir(output_dir)
    try:
        return run_in(run, output_dir)
    finally:
        if lock is not None:
            lock.close()


def run_in(run: RunArguments, output_dir: Path) -> dict[str, Any]:
    """The run, once this process holds OUTPUT_DIR's lock."""
    model_args, data_args, paper, training = run.model, run.data, run.paper, run.training
    resume = resolve_resume(run, output_dir)
    config = initial_config(run)  # --model_name_or_path's config is read (and checked) before any data
    training.learning_rate = peak_learning_rate(training.learning_rate, config.d_model, training.warmup_steps,
                                                paper.lr_scale)  # fmt: skip
    check_recorded_arguments(run, output_dir, resume)
    PartialState().wait_for_everyone()  # every process has checked the folder before the first one changes it
    if is_main_process() and paper.overwrite_output_dir:
        overwrite_previous_run(output_dir)
    set_seed(training.seed)
    started = time.perf_counter()

    try:  # the data's own errors (unreadable files, missing language columns, empty splits): one line each
        data = load_translation_data(
            data_args.dataset_name, data_args.dataset_config_name, data_args.source_lang, data_args.target_lang,
            data_args.train_file, data_args.validation_file, data_args.test_file, data_args.demo_pairs,
            training.data_seed if training.data_seed is not None else training.seed,
            cache_dir=model_args.cache_dir, token=model_args.token,
        )  # fmt: skip
        data = {
            split: clean_split(rows, data_args.source_lang, data_args.target_lang, data_args.max_chars, split)
            for split, rows in data.items()
        }
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"[train] data: {error}") from error
    if data_args.max_train_samples is not None:
        data["train"] = data["train"].select(range(min(data_args.max_train_samples, len(data["train"]))))
    with training.main_process_first(local=False, desc="the tokenizer"):  # trained once, by the first process
        tokenizer = prepare_tokenizer(run, data["train"], output_dir, resume)
    if model_args.model_name_or_path is None:
        config = any_config(model_args.preset, **{"vocab_size": len(tokenizer), **run.overrides})
    check_tokenizer_matches_config(tokenizer, config)
    if resume is not None:
        check_checkpoint_matches(resume, config, tokenizer)

    train_set = tokenize_split(data["train"], tokenizer, data_args, "train") if training.do_train else None
    if train_set is not None:
        check_batch_size(train_set, paper.max_tokens, training)
    eval_set, eval_sources = None, None
    if training.do_eval and data.get("validation") is not None:
        rows = stratified_subset(data["validation"], data_args.max_eval_samples or len(data["validation"]),
                                 data_args.source_lang)  # fmt: skip
        eval_set = tokenize_split(rows, tokenizer, data_args, "validation")
        eval_sources = [(data_args.source_prefix or "") + p[data_args.source_lang] for p in rows["translation"]]

    if model_args.model_name_or_path is not None:
        model = VanillaTransformerForConditionalGeneration.from_pretrained(
            model_args.model_name_or_path, config=config, **model_args.hub_kwargs()
        )
    else:
        model = VanillaTransformerForConditionalGeneration(config)
        model.generation_config = paper_generation_config(config)
    check_disk_space(output_dir, sum(p.numel() for p in model.parameters()), paper.average_last + 1)
    if training.resume_from_checkpoint is not None and is_main_process():
        remove_incomplete_checkpoints(output_dir)

    if eval_set is None or "eval_strategy" not in run.given:
        training.eval_strategy = IntervalStrategy.STEPS if eval_set is not None else IntervalStrategy.NO
    if data_args.num_beams is not None:
        training.generation_num_beams = data_args.num_beams
    push, training.push_to_hub = training.push_to_hub, False  # the averaged model/ is what gets published, below
    callbacks = [
        SaveAtEndCallback(),
        KeepLastCheckpointsCallback(paper.average_last + 1),
        RecordArgumentsCallback(run.recorded()),
        LossRiseCallback(),
    ] + ([SaveEveryMinutesCallback(paper.save_minutes)] if paper.save_minutes else [])
    trainer = TokenBatchingTrainer(
        model=model,
        args=training,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(tokenizer, eval_sources),
        callbacks=callbacks,
        max_tokens=paper.max_tokens,
        cooldown_steps=paper.cooldown_steps,
    )

    if training.do_train:
        train(trainer, resume, training)
    elif eval_set is not None:
        trainer.evaluate()
    trainer.accelerator.wait_for_everyone()

    results: dict[str, Any] = {"steps": trainer.state.global_step}
    if trainer.is_world_process_zero():
        results.update(finish(run, trainer, tokenizer, data, output_dir, started))
        if push:
            if rise := results.get("loss_rise"):
                raise SystemExit(
                    f"Not published: the training loss ended far above where it started ({rise['first_loss']:.3g} -> "
                    f"{rise['last_loss']:.3g}), so the run diverged; {output_dir / 'model'} is kept for inspection."
                )
            publish(output_dir / "model", training, token=model_args.token)
    trainer.accelerator.wait_for_everyone()
    return results


def train(trainer: TokenBatchingTrainer, resume: Path | None, training: Seq2SeqTrainingArguments) -> None:
    """Trains, from `resume` if given; a checkpoint that is already at the end is not trained further."""
    state = json.loads((resume / "trainer_state.json").read_text()) if resume is not None else None
    target = training.max_steps if training.max_steps > 0 else (state or {}).get("max_steps", 0)
    done = state is not None and target > 0 and state["global_step"] >= target
    if resume is not None and trainer.is_world_process_zero():
        print(f"[train] {resume.name} is at max_steps: nothing to train" if done else f"[train] resuming from {resume}")
    if done:
        # The Trainer, resumed at max_steps, would take one more step before it checks; a finished run only
        # repeats the averaging and the test.
        trainer.state.global_step = state["global_step"]
        trainer.state.log_history = state["log_history"]
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)


def publish(model_dir: Path, training: Seq2SeqTrainingArguments, token: str | None = None) -> None:
    """--push_to_hub: the averaged model folder, checked and uploaded by push_to_hub.py (the Trainer's own push
    would send the last raw checkpoint's folder instead)."""
    from .push_to_hub import upload

    repo_id = training.hub_model_id or Path(training.output_dir).resolve().name
    upload(model_dir, repo_id, private=bool(training.hub_private_repo), token=training.hub_token or token)


def finish(run: RunArguments, trainer, tokenizer, data, output_dir: Path, started: float) -> dict[str, Any]:
    """Averages the last checkpoints into the Hub-ready model folder (or, without training, takes the given
    model), scores it on the test split, writes the learning curve and results.json."""
    data_args, paper = run.data, run.paper
    checkpoints = complete_checkpoints(output_dir)[-paper.average_last :] if run.training.do_train else []
    model_dir = output_dir / "model"
    if checkpoints:
        average_checkpoints(checkpoints, output_dir / "averaged", overwrite=True)  # this run's own folder
        model = VanillaTransformerForConditionalGeneration.from_pretrained(output_dir / "averaged")
        # Seq2SeqTrainer writes transformers' defaults (max_length=20, ...) into the generation config it evaluates
        # with; the published model gets the source model's decoding, or for a new model the paper's (§6.1).
        model.generation_config = copy.deepcopy(trainer.model.generation_config)
    else:
        model = trainer.model
    if model_dir.is_dir():  # this command's own output, made again: no card or picture of an earlier run stays
        shutil.rmtree(model_dir)
    model.save_pretrained(model_dir)  # weights, config with auto_map, code files, generation config
    tokenizer.save_pretrained(model_dir)
    plot_learning_curve(trainer.state.log_history, output_dir / "learning_curve.png")
    plot_learning_curve(trainer.state.log_history, model_dir / "learning_curve.png")
    results: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "averaged_checkpoints": [c.name for c in checkpoints],
        "train_seconds": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_learning_rate": trainer.args.learning_rate,
        "device": f"{trainer.args.world_size} x {trainer.args.device.type}",
        "log_history": trainer.state.log_history,
    }
    results["loss_spikes"] = loss_spikes(trainer.state.log_history, run.training.warmup_steps)
    if rise := loss_rise(trainer.state.log_history):
        results["loss_rise"] = rise
        print(f"[train] WARNING: the last logged training loss {rise['last_loss']:.3g} is far above the first "
              f"{rise['first_loss']:.3g}: the run diverged.", file=sys.stderr)  # fmt: skip
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evaluations:
        results["validation"] = {k[5:]: v for k, v in evaluations[-1].items() if k.startswith("eval_")}
    if run.training.do_predict and not paper.skip_test and "test" in data:
        test = data["test"]
        if data_args.max_predict_samples:
            test = test.select(range(min(data_args.max_predict_samples, len(test))))
        pairs = test["translation"]
        prefix = data_args.source_prefix or ""
        sources = [prefix + p[data_args.source_lang] for p in pairs]
        references = [p[data_args.target_lang] for p in pairs]
        start = time.perf_counter()
        # --num_beams, else the model's own decoding (for a new model the paper's beam 4); --generation_num_beams is
        # the validation's (the Trainer's) alone.
        beams = {"num_beams": data_args.num_beams} if data_args.num_beams else {}
        hypotheses = translate(model, tokenizer, sources, **beams)
        scores = translation_scores(hypotheses, references, [p[data_args.source_lang] for p in pairs])
        results["test"] = {**scores, "pairs": len(pairs), "decode_seconds": round(time.perf_counter() - start, 1)}
        results["test_examples"] = [
            {"source": s, "reference": r, "hypothesis": h}
            for s, r, h in list(zip(sources, references, hypotheses, strict=True))[:10]
        ]
        described = f"averaged model of {len(checkpoints)} checkpoints" if checkpoints else "the given model"
        print(
            f"[test] {len(pairs)} pairs, {described}: "
            f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  exact match {scores['exact_match']:.2f}%"
        )
        if "exact_match_by_category" in scores:
            print(category_table(scores))
        pictures = attention_maps(model, tokenizer, sources[0], model_dir)
        write_demo_card(run, model, results, checkpoints, pictures, model_dir, example=sources[0])
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (model_dir / "results.json").write_text(
        json.dumps({k: v for k, v in results.items() if k != "log_history"}, indent=2, ensure_ascii=False)
    )
    return results


def write_demo_card(run: RunArguments, model, results, checkpoints, pictures, model_dir: Path, example: str) -> None:
    """The model folder's README.md: a model card with the measured test scores, the learning curve and the
    attention maps."""
    data_args, training = run.data, run.training
    test = results["test"]
    demo = data_args.dataset_name is None and data_args.train_file is None
    dataset = (
        "bundled demo corpus (numbers and dates, num2words + Babel CLDR)"
        if demo
        else data_args.dataset_name or f"local files ({Path(data_args.train_file).name}, ...)"
    )
    source = run.model.model_name_or_path
    name = Path(source).name if source else run.model.preset
    languages = f"{data_args.source_lang}-{data_args.target_lang}"
    averaged = (
        f"the last {len(checkpoints)} averaged ({', '.join(c.name for c in checkpoints)})"
        if checkpoints
        else "no training (the given model)"
    )
    card = render_card(
        model.config,
        repo_id=f"vanilla-transformer-{name}-{languages}",
        title=f"Transformer ({name}), {data_args.source_lang} -> {data_args.target_lang}",
        summary=(f"Fine-tuned from `{source}`" if source else "Trained")
        + f" on the {dataset}: {results['parameters']:,} parameters, {results['steps']} steps, {averaged}.",
        training=(
            f"`vanilla-transformer-train {' '.join(sys.argv[1:]) if sys.argv[1:] else '(defaults)'}`\n\n"
            f"{training.optim.value} ({training.adam_beta1}, {training.adam_beta2}, {training.adam_epsilon}); the "
            f"{training.lr_scheduler_type.value} schedule with {training.warmup_steps:g} warm-up steps and "
            f"peak {results['peak_learning_rate']:.3g}; label smoothing {model.config.label_smoothing}; batches of "
            f"at most {run.paper.max_tokens} source + target tokens; {results['steps']} steps on {results['device']}, "
            f"{results['train_seconds']:.0f} s from the corpus to the last checkpoint; checkpoints every "
            f"{training.save_steps} steps, {averaged}."
        ),
        results=(
            f"Decoded with the model's generation config ({describe_decoding(model.generation_config)}), scored "
            f"with sacreBLEU on detokenized text:\n\n{result_lines(test)}"
        ),
        limitations=(
            "A demonstration model: it translates English number words and dates of the form the corpus has "
            "(years 1000-2999, numbers below ten million) and nothing else. It shows the architecture, the recipe "
            "and the Hugging Face integration working end to end on a CPU."
            if demo
            else "Trained for the data named above; judge it on your own data before use."
        ),
        languages=(data_args.source_lang, data_args.target_lang),
        datasets=[data_args.dataset_name] if data_args.dataset_name else None,
        scores=test,
        dataset_name=dataset,
        dataset_type="demo" if demo else (data_args.dataset_name or "local"),
        pictures=[("learning curve", "learning_curve.png")] + [(p.stem.replace("_", " "), p.name) for p in pictures],
        example_source=example,
    )
    card.save(model_dir / "README.md")
    check_card(model_dir / "README.md")


def describe_decoding(generation_config) -> str:
    """E.g. 'beam 4, GNMT length penalty 0.6, maximum length = source length + 50' (the paper's, §6.1)."""
    parts = [f"beam {generation_config.num_beams}" if generation_config.num_beams > 1 else "greedy"]
    if generation_config.num_beams > 1:
        kind = "GNMT" if getattr(generation_config, "length_penalty_type", None) == "gnmt" else "transformers'"
        parts.append(f"{kind} length penalty {generation_config.length_penalty}")
    over = getattr(generation_config, "max_new_tokens_over_source", None)
    if over is not None:
        parts.append(f"maximum length = source length + {over}")
    elif generation_config.max_new_tokens is not None:
        parts.append(f"at most {generation_config.max_new_tokens} new tokens")
    return ", ".join(parts)


def cli() -> None:
    try:
        main()
    except (NonFiniteTrainingError, OSError) as error:  # named errors of the run itself: the message, no traceback
        raise SystemExit(f"[train] stopped: {error}") from error


if __name__ == "__main__":
    sys.exit(cli())
