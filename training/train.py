"""The paper's training recipe (§5) on Seq2SeqTrainer, then checkpoint averaging and the test score (§6.1).

    vanilla-transformer-train --output_dir outputs/demo --preset demo                # the bundled corpus
    vanilla-transformer-train --dataset wmt14 --dataset_config de-en --preset base --vocab_size 37000 \\
        --max_tokens 50000 --max_steps 100000 --average_last 5 --save_minutes 10     # the paper's base run
    accelerate launch --num_processes 8 -m hf_vanilla_transformer_training.train ...  # data parallel (DDP)

Defaults are the paper's: Adam(0.9, 0.98, 1e-9); lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) with
warmup 4000 (transformers' `inverse_sqrt` schedule with that peak); label smoothing from the preset (0.1);
batches of about --max_tokens source + target tokens per optimizer step, summed over devices and gradient
accumulation; beam 4 with the GNMT length penalty 0.6 for BLEU. Rerunning with the same --output_dir continues
from the last complete checkpoint (optimizer, scheduler and RNG state included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import (
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerFast,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)

import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
from hf_vanilla_transformer import (
    PRESETS,
    SMALL_CONFIGS,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    any_config,
    paper_generation_config,
    translate,
)

from .attention_maps import attention_maps
from .average_checkpoints import average_checkpoints, complete_checkpoints
from .data import clean_split, load_translation_data
from .model_card import check_card, render_card, result_lines
from .tokenizer import check_tokenizer_matches_config, train_bpe_tokenizer


# ---- token batching ------------------------------------------------------------------------------------------
class TokenBatchSampler(Sampler[list[int]]):
    """Batches of pairs of similar length with at most `max_tokens` padded source + target tokens each (§5.1:
    "sentence pairs were batched together by approximate sequence length"), in a random order that depends only
    on (seed, epoch), so a resumed run sees the same batches. torch and transformers batch by sentence count only.

    The number of batches per epoch is trimmed to a multiple of `multiple_of` (devices x accumulation steps) so
    that every device takes part in every optimizer step.
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
        usable = len(batches) - len(batches) % self.multiple_of
        return batches[:usable] if usable else batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class TokenBatchingTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose training batches come from a TokenBatchSampler."""

    def __init__(self, *args: Any, max_tokens: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_tokens = max_tokens

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

    def _save_checkpoint(self, model, trial) -> None:
        # A checkpoint counts as written once its trainer_state.json (the Trainer's last file) parses, so a save
        # that fails half-way (a full disk, a kill) leaves a folder that resuming and averaging skip; the earlier
        # checkpoints are untouched. The error says so instead of a bare OSError from deep inside torch.save.
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:
            intact = [c.name for c in complete_checkpoints(self.args.output_dir, for_resume=True)]
            raise OSError(
                error.errno,
                f"Saving checkpoint-{self.state.global_step} in {self.args.output_dir} failed ({error.strerror or error}); "
                f"the complete checkpoints {intact or '(none)'} are intact and a rerun resumes from the last of them.",
            ) from error


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


class SaveAtEndCallback(TrainerCallback):
    """The last step is always a full checkpoint (the Trainer saves only every save_steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


# ---- evaluation ----------------------------------------------------------------------------------------------
def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """sacreBLEU's BLEU and chrF on detokenized text, and the exact-match rate (percentages)."""
    import sacrebleu

    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "exact_match": 100.0 * sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references),
    }


def make_compute_metrics(tokenizer):
    def compute_metrics(prediction) -> dict[str, float]:
        predictions, labels = prediction.predictions, prediction.label_ids
        predictions = [[t for t in row if 0 <= t < len(tokenizer)] for row in predictions.tolist()]
        labels = [[t for t in row if t != -100] for row in labels.tolist()]
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return translation_scores(hypotheses, references)

    return compute_metrics


def plot_learning_curve(log_history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    valid = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    bleu = [(e["step"], e["eval_bleu"]) for e in log_history if "eval_bleu" in e]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    if train:
        loss_axis.plot(*zip(*train, strict=True), label="training loss", color="tab:blue")
    if valid:
        loss_axis.plot(*zip(*valid, strict=True), "o-", label="validation loss", color="tab:cyan")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("label-smoothed cross-entropy")
    loss_axis.legend(loc="upper left")
    if bleu:
        bleu_axis = loss_axis.twinx()
        bleu_axis.plot(*zip(*bleu, strict=True), "s-", color="tab:red", label="validation BLEU")
        bleu_axis.set_ylabel("BLEU")
        bleu_axis.legend(loc="upper right")
    loss_axis.set_title("Learning curve")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---- the run -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="demo", help="'demo' (bundled, offline) or a Hub dataset name")
    data.add_argument("--dataset_config", default=None)
    data.add_argument("--source_lang", default="en")
    data.add_argument("--target_lang", default="de")
    data.add_argument("--train_file", default=None, help=".jsonl, .tsv, or 'src.txt,tgt.txt' aligned files")
    data.add_argument("--validation_file", default=None)
    data.add_argument("--test_file", default=None)
    data.add_argument("--demo_pairs", type=int, default=110_000)
    data.add_argument("--max_chars", type=int, default=1000, help="drop pairs with a longer side (counted)")
    data.add_argument("--max_source_tokens", type=int, default=256)
    data.add_argument("--max_target_tokens", type=int, default=256)
    model = p.add_argument_group("model")
    model.add_argument(
        "--preset",
        default="base",
        choices=[*PRESETS, *SMALL_CONFIGS],
        metavar="PRESET",
        help="a Table 3 row (base, big, A-h1, ..., E-learned) or a small non-paper size (demo, tiny)",
    )
    model.add_argument("--config_overrides", default="{}", help="JSON, e.g. '{\"dropout\": 0.2}'")
    model.add_argument("--vocab_size", type=int, default=37000, help="shared BPE vocabulary (paper: ~37000)")
    model.add_argument("--tokenizer", default=None, help="an existing tokenizer folder instead of training one")
    recipe = p.add_argument_group("recipe (paper defaults)")
    recipe.add_argument("--max_tokens", type=int, default=50_000, help="source + target tokens per optimizer step")
    recipe.add_argument("--gradient_accumulation_steps", type=int, default=1)
    recipe.add_argument("--max_steps", type=int, default=100_000)
    recipe.add_argument("--warmup_steps", type=int, default=4000)
    recipe.add_argument("--learning_rate", type=float, default=None, help="peak; default d_model^-0.5 * warmup^-0.5")
    recipe.add_argument("--lr_scale", type=float, default=1.0, help="multiplies the peak learning rate")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--bf16", action="store_true")
    recipe.add_argument("--fp16", action="store_true")
    recipe.add_argument("--gradient_checkpointing", action="store_true")
    ckpt = p.add_argument_group("checkpoints and evaluation")
    ckpt.add_argument("--save_steps", type=int, default=1000)
    ckpt.add_argument("--save_minutes", type=float, default=None, help="also save every N minutes (paper: 10)")
    ckpt.add_argument("--average_last", type=int, default=5, help="average the last K checkpoints (paper: 5 / 20)")
    ckpt.add_argument("--eval_steps", type=int, default=1000)
    ckpt.add_argument("--eval_samples", type=int, default=500, help="validation pairs decoded for BLEU / chrF")
    ckpt.add_argument("--eval_batch_size", type=int, default=64)
    ckpt.add_argument("--test_samples", type=int, default=None, help="score only the first N test pairs")
    ckpt.add_argument("--logging_steps", type=int, default=50)
    ckpt.add_argument("--no_progress", action="store_true")
    ckpt.add_argument("--skip_test", action="store_true")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, vocab_size: int) -> VanillaTransformerConfig:
    """The --preset (a Table 3 row, or the demo's / the tests' small size) at the tokenizer's vocabulary size."""
    overrides = json.loads(args.config_overrides)
    return any_config(args.preset, **{"vocab_size": vocab_size, **overrides})


def prepare_tokenizer(args: argparse.Namespace, train_rows, output_dir: Path) -> PreTrainedTokenizerFast:
    folder = output_dir / "tokenizer"
    if args.tokenizer is not None:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    if (folder / "tokenizer.json").is_file():  # a resumed run keeps its vocabulary
        return AutoTokenizer.from_pretrained(folder)
    texts = (pair[lang] for pair in train_rows["translation"] for lang in (args.source_lang, args.target_lang))
    tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tokenize_split(rows, tokenizer, args: argparse.Namespace, split: str):
    def encode(batch: dict[str, list]) -> dict[str, list]:
        sources = [pair[args.source_lang] for pair in batch["translation"]]
        targets = [pair[args.target_lang] for pair in batch["translation"]]
        return {"input_ids": tokenizer(sources).input_ids, "labels": tokenizer(targets).input_ids}

    encoded = rows.map(encode, batched=True, remove_columns=rows.column_names, desc=f"tokenizing {split}")
    kept = encoded.filter(
        lambda x: len(x["input_ids"]) <= args.max_source_tokens and len(x["labels"]) <= args.max_target_tokens
    )
    if len(kept) < len(encoded):
        print(
            f"[data] {split}: dropped {len(encoded) - len(kept)} of {len(encoded)} pairs over "
            f"{args.max_source_tokens} source / {args.max_target_tokens} target tokens"
        )
    return kept


def check_output_dir(output_dir: Path) -> None:
    """Fails before any work when the output folder cannot be created or written."""
    probe = output_dir / ".write_test"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"Cannot write to the output folder {output_dir}: {error}") from error


def remove_incomplete_checkpoints(output_dir: Path, complete: list[Path]) -> None:
    """Deletes checkpoint folders that a killed or failed save left half-written. They hold nothing usable, and
    the Trainer must not save into them: it would overwrite their files without changing the folder's mtime, and
    its mtime-ordered rotation would then take the new checkpoint for the oldest and delete it."""
    for path in sorted(output_dir.glob("checkpoint-*")):
        if path.is_dir() and path not in complete:
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.bf16 and args.fp16:
        raise SystemExit("Give at most one of --bf16 and --fp16.")
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir)
    set_seed(args.seed)
    started = time.perf_counter()

    data = load_translation_data(
        args.dataset, args.dataset_config, args.source_lang, args.target_lang,
        args.train_file, args.validation_file, args.test_file, args.demo_pairs, args.seed,
    )  # fmt: skip
    data = {
        split: clean_split(rows, args.source_lang, args.target_lang, args.max_chars, split)
        for split, rows in data.items()
    }
    tokenizer = prepare_tokenizer(args, data["train"], output_dir)
    config = build_config(args, vocab_size=len(tokenizer))
    check_tokenizer_matches_config(tokenizer, config)

    train_set = tokenize_split(data["train"], tokenizer, args, "train")
    validation_rows = data.get("validation")
    eval_set = None
    if validation_rows is not None:
        eval_rows = validation_rows.select(range(min(args.eval_samples, len(validation_rows))))
        eval_set = tokenize_split(eval_rows, tokenizer, args, "validation")

    model = VanillaTransformerForConditionalGeneration(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    check_disk_space(output_dir, sum(p.numel() for p in model.parameters()), max(args.average_last, 1) + 1)
    peak = args.learning_rate or config.d_model**-0.5 * args.warmup_steps**-0.5  # §5.3
    peak *= args.lr_scale
    resume = complete_checkpoints(output_dir, for_resume=True)
    if int(os.environ.get("RANK", "0")) == 0:
        remove_incomplete_checkpoints(output_dir, resume)
    training_args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        learning_rate=peak,
        lr_scheduler_type="inverse_sqrt",  # linear warm-up, then peak * sqrt(warmup / step): the paper's lrate
        lr_scheduler_kwargs={"timescale": args.warmup_steps},
        warmup_steps=args.warmup_steps,
        optim="adamw_torch",  # with weight_decay 0 this is Adam, as in §5.3
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-9,
        weight_decay=0.0,
        max_grad_norm=0.0,  # the paper does not clip gradients
        label_smoothing_factor=0.0,  # smoothing is in the model's loss (config.label_smoothing)
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        per_device_eval_batch_size=args.eval_batch_size,
        bf16=args.bf16,
        fp16=args.fp16,
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=args.eval_steps,
        predict_with_generate=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=None,  # KeepLastCheckpointsCallback keeps average_last + 1 checkpoints
        logging_steps=args.logging_steps,
        report_to=[],
        seed=args.seed,
        disable_tqdm=args.no_progress,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        remove_unused_columns=True,
        use_cpu=not torch.cuda.is_available(),
    )
    callbacks = [SaveAtEndCallback(), KeepLastCheckpointsCallback(max(args.average_last, 1) + 1)] + (
        [SaveEveryMinutesCallback(args.save_minutes)] if args.save_minutes else []
    )
    trainer = TokenBatchingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(tokenizer),
        callbacks=callbacks,
        max_tokens=args.max_tokens,
    )

    last_state = json.loads((resume[-1] / "trainer_state.json").read_text()) if resume else None
    done = last_state is not None and last_state["global_step"] >= args.max_steps
    if resume and trainer.is_world_process_zero():
        print(
            f"[train] {resume[-1].name} is at max_steps: nothing to train"
            if done
            else f"[train] resuming from {resume[-1]}"
        )
    if done:
        # The Trainer, resumed at max_steps, would take one more step before it checks; a finished run only
        # repeats the averaging and the test.
        trainer.state.global_step = args.max_steps
        trainer.state.log_history = last_state["log_history"]
    else:
        trainer.train(resume_from_checkpoint=str(resume[-1]) if resume else None)
    trainer.accelerator.wait_for_everyone()

    results: dict[str, Any] = {"steps": trainer.state.global_step}
    if trainer.is_world_process_zero():
        results.update(finish(args, trainer, tokenizer, data, output_dir, started))
    trainer.accelerator.wait_for_everyone()
    return results


def finish(args, trainer, tokenizer, data, output_dir: Path, started: float) -> dict[str, Any]:
    """Averages the last checkpoints into the Hub-ready model folder, scores it on the test split, writes the
    learning curve and results.json."""
    checkpoints = complete_checkpoints(output_dir)[-args.average_last :]
    model_dir = output_dir / "model"
    average_checkpoints(checkpoints, output_dir / "averaged")
    model = VanillaTransformerForConditionalGeneration.from_pretrained(output_dir / "averaged")
    # Seq2SeqTrainer writes transformers' defaults (max_length=20, ...) into the generation config it evaluates
    # with; the published model gets the paper's decoding (§6.1) and nothing else.
    model.generation_config = paper_generation_config(model.config)
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
    if not args.skip_test and "test" in data:
        test = data["test"]
        if args.test_samples:
            test = test.select(range(min(args.test_samples, len(test))))
        pairs = test["translation"]
        sources = [p[args.source_lang] for p in pairs]
        references = [p[args.target_lang] for p in pairs]
        start = time.perf_counter()
        hypotheses = translate(model, tokenizer, sources)
        scores = translation_scores(hypotheses, references)
        results["test"] = {**scores, "pairs": len(pairs), "decode_seconds": round(time.perf_counter() - start, 1)}
        results["test_examples"] = [
            {"source": s, "reference": r, "hypothesis": h}
            for s, r, h in list(zip(sources, references, hypotheses, strict=True))[:10]
        ]
        print(
            f"[test] {len(pairs)} pairs, averaged model of {len(checkpoints)} checkpoints: "
            f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  exact match {scores['exact_match']:.2f}%"
        )
        pictures = attention_maps(model, tokenizer, sources[0], model_dir)
        write_demo_card(args, model, results, checkpoints, pictures, model_dir, example=sources[0])
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (model_dir / "results.json").write_text(
        json.dumps({k: v for k, v in results.items() if k != "log_history"}, indent=2, ensure_ascii=False)
    )
    return results


def write_demo_card(args, model, results, checkpoints, pictures, model_dir: Path, example: str) -> None:
    """The model folder's README.md: a model card with the measured test scores, the learning curve and the
    attention maps."""
    test = results["test"]
    dataset = (
        "bundled demo corpus (numbers and dates, num2words + Babel CLDR)" if args.dataset == "demo" else args.dataset
    )
    card = render_card(
        model.config,
        repo_id=f"vanilla-transformer-{args.preset}-{args.source_lang}-{args.target_lang}",
        title=f"Transformer ({args.preset}), {args.source_lang} -> {args.target_lang}",
        summary=f"Trained on the {dataset}: {results['parameters']:,} parameters, {results['steps']} steps, the "
        f"average of the last {len(checkpoints)} checkpoints.",
        training=(
            f"`vanilla-transformer-train {' '.join(sys.argv[1:]) if sys.argv[1:] else '(defaults)'}`\n\n"
            f"Adam (0.9, 0.98, 1e-9); the inverse-square-root schedule with {args.warmup_steps} warm-up steps and "
            f"peak {results['peak_learning_rate']:.3g}; label smoothing {model.config.label_smoothing}; batches of "
            f"at most {args.max_tokens} source + target tokens; {results['steps']} steps on {results['device']}, "
            f"{results['train_seconds']:.0f} s from the corpus to the last checkpoint; checkpoints every {args.save_steps} steps, "
            f"the last {len(checkpoints)} averaged ({', '.join(c.name for c in checkpoints)})."
        ),
        results=(
            f"Decoded with the paper's beam search (beam 4, GNMT length penalty 0.6, maximum length = source "
            f"length + 50), scored with sacreBLEU on detokenized text:\n\n{result_lines(test)}"
        ),
        limitations=(
            "A demonstration model: it translates English number words and dates of the form the corpus has "
            "(years 1000-2999, numbers below ten million) and nothing else. It shows the architecture, the recipe "
            "and the Hugging Face integration working end to end on a CPU."
            if args.dataset == "demo"
            else "Trained for the data named above; judge it on your own data before use."
        ),
        languages=(args.source_lang, args.target_lang),
        datasets=None if args.dataset == "demo" else [args.dataset],
        scores=test,
        dataset_name=dataset,
        dataset_type="demo" if args.dataset == "demo" else args.dataset,
        pictures=[("learning curve", "learning_curve.png")] + [(p.stem.replace("_", " "), p.name) for p in pictures],
        example_source=example,
    )
    card.save(model_dir / "README.md")
    check_card(model_dir / "README.md")


def cli() -> None:
    main()


if __name__ == "__main__":
    sys.exit(cli())
