"""The training command's arguments: transformers' `Seq2SeqTrainingArguments` (every Trainer flag), plus model and
data arguments named as in transformers' `examples/pytorch/translation/run_translation.py`, plus the paper's own
(`PaperArguments`). Flags that are not given take the paper's recipe (`PAPER_TRAINING_DEFAULTS`), not the
Trainer's defaults.

Everything here is checked before any data is read, any corpus built or any tokenizer trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import HfArgumentParser, SchedulerType, Seq2SeqTrainingArguments

from hf_vanilla_transformer import PRESETS, SMALL_CONFIGS, VanillaTransformerConfig, any_config

from .data import LOCAL_DATA_SUFFIXES


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune an existing model of this project (a folder or a Hub id, e.g. one written by "
            "vanilla-transformer-convert) with its own tokenizer, instead of building --preset."
        },
    )
    preset: str = field(
        default="base",
        metadata={
            "help": "A new model: a Table 3 row (base, big, A-h1, ..., E-learned) or a small non-paper size "
            "(demo, tiny). Not with --model_name_or_path.",
            "choices": [*PRESETS, *SMALL_CONFIGS],
            "metavar": "PRESET",
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON of config fields, e.g. '{\"dropout\": 0.2}'. With --model_name_or_path only the "
            f"fields that leave the weights' shapes alone: {', '.join(sorted(('dropout', 'attention_dropout', 'activation_dropout', 'label_smoothing')))}."
        },
    )
    vocab_size: int = field(
        default=37000, metadata={"help": "The shared BPE vocabulary trained for a new model (paper: ~37000)."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "An existing tokenizer (folder or Hub id) instead of training one / the model's own."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    model_revision: str = field(default="main", metadata={"help": "The Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "The Hub token (default: the one `hf auth` saved)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow a Hub folder's own code files to run (not needed for this project's models)."},
    )

    def hub_kwargs(self) -> dict[str, Any]:
        """The from_pretrained keywords that pick the Hub revision, cache and token."""
        return {"revision": self.model_revision, "cache_dir": self.cache_dir, "token": self.token}


@dataclass
class DataTrainingArguments:
    source_lang: str = field(default="en", metadata={"help": "The source language key, e.g. en."})
    target_lang: str = field(default="de", metadata={"help": "The target language key, e.g. de."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset in the translation layout (e.g. wmt14). Default: the bundled demo corpus."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's config, e.g. de-en."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON / JSON lines ({'translation': {'en': ..., 'de': ...}} or {'en': ..., 'de': ...} per "
            "row), CSV / TSV with a header naming the language columns, or two aligned text files as "
            "'train.en,train.de'."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "As --train_file."})
    test_file: str | None = field(default=None, metadata={"help": "As --train_file."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Tokenize again instead of using the cache."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenizing."})
    max_source_length: int = field(
        default=256, metadata={"help": "Sources are truncated to this many tokens (</s> included)."}
    )
    max_target_length: int = field(
        default=256, metadata={"help": "Targets are truncated to this many tokens (</s> included)."}
    )
    drop_long_pairs: bool = field(
        default=False,
        metadata={"help": "Drop pairs over --max_source_length / --max_target_length instead of truncating them."},
    )
    max_chars: int = field(
        default=1000, metadata={"help": "Drop pairs with a side longer than this many characters (counted)."}
    )
    source_prefix: str | None = field(
        default=None, metadata={"help": "Text put before every source (e.g. a task prefix), as run_translation."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_samples: int | None = field(
        default=500, metadata={"help": "Validation pairs decoded for BLEU / chrF at each evaluation."}
    )
    max_predict_samples: int | None = field(default=None, metadata={"help": "Score only the first N test pairs."})
    num_beams: int | None = field(
        default=None,
        metadata={"help": "Beam size for evaluation and the test score (default: the model's, the paper's 4)."},
    )
    demo_pairs: int = field(default=110_000, metadata={"help": "Size of the bundled demo corpus."})


@dataclass
class PaperArguments:
    max_tokens: int = field(
        default=50_000,
        metadata={"help": "Padded source + target tokens per optimizer step, summed over devices and accumulation."},
    )
    lr_scale: float = field(default=1.0, metadata={"help": "Multiplies the peak learning rate."})
    average_last: int = field(
        default=5, metadata={"help": "Average the last K checkpoints into the published model (paper: 5 / 20)."}
    )
    save_minutes: float | None = field(default=None, metadata={"help": "Also save every N minutes (paper: 10)."})
    cooldown_steps: int = field(
        default=0,
        metadata={
            "help": "Deviation from the paper when > 0: over the last N steps the learning rate falls linearly from "
            "the schedule's value to 0 (a cool-down; the paper's rate stays at 1/sqrt(step) to the end)."
        },
    )
    skip_test: bool = field(default=False, metadata={"help": "Do not score the test split."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in a folder that holds another run: its checkpoint-N, averaged/, model/ "
            "and tokenizer/ are deleted first (nothing else)."
        },
    )


# The paper's recipe (§5.3, §5.4, §6.1) where Seq2SeqTrainingArguments' defaults differ. `learning_rate` is absent:
# not given, it is the formula's peak d_model^-0.5 * warmup^-0.5 (times --lr_scale).
PAPER_TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 100_000,
    "warmup_steps": 4000,
    "lr_scheduler_type": "inverse_sqrt",  # linear warm-up, then peak * sqrt(warmup / step): the paper's lrate
    "optim": "adamw_torch",  # with weight_decay 0 this is Adam
    "adam_beta1": 0.9,
    "adam_beta2": 0.98,
    "adam_epsilon": 1e-9,
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,  # the paper does not clip gradients
    "save_strategy": "steps",
    "save_steps": 1000,
    "eval_strategy": "steps",
    "eval_steps": 1000,
    "logging_steps": 50,
    "per_device_eval_batch_size": 64,
    "predict_with_generate": True,
    "report_to": "none",
    "seed": 0,
    "ddp_find_unused_parameters": False,
}
# Overrides that keep every weight's shape, so they apply to an existing model.
TRAINING_TIME_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "label_smoothing")


@dataclass
class RunArguments:
    model: ModelArguments
    data: DataTrainingArguments
    paper: PaperArguments
    training: Seq2SeqTrainingArguments
    given: set[str]  # the options the command line named (the rest are defaults)
    overrides: dict[str, Any]

    def recorded(self) -> dict[str, Any]:
        """What defines the model, its tokenizer, its data and its schedule: a resumed run must agree on all of it
        (written to OUTPUT_DIR/run_arguments.json)."""
        t = self.training
        return {
            "model_name_or_path": self.model.model_name_or_path,
            "preset": None if self.model.model_name_or_path else self.model.preset,
            "config_overrides": self.overrides,
            "vocab_size": None
            if (self.model.model_name_or_path or self.model.tokenizer_name)
            else self.model.vocab_size,
            "tokenizer_name": self.model.tokenizer_name,
            "source_lang": self.data.source_lang,
            "target_lang": self.data.target_lang,
            "source_prefix": self.data.source_prefix,
            "dataset_name": self.data.dataset_name,
            "dataset_config_name": self.data.dataset_config_name,
            "train_file": self.data.train_file,
            "demo_pairs": None if (self.data.dataset_name or self.data.train_file) else self.data.demo_pairs,
            "max_source_length": self.data.max_source_length,
            "max_target_length": self.data.max_target_length,
            "drop_long_pairs": self.data.drop_long_pairs,
            "max_chars": self.data.max_chars,
            "max_train_samples": self.data.max_train_samples,
            "max_tokens": self.paper.max_tokens,
            "learning_rate": t.learning_rate,
            "lr_scheduler_type": SchedulerType(t.lr_scheduler_type).value,
            "warmup_steps": t.warmup_steps,
            "seed": t.seed,
            **({"cooldown_steps": self.paper.cooldown_steps} if self.paper.cooldown_steps else {}),
            # the corpus, its split, the BPE and the batch order (absent when not given: runs recorded before it)
            **({"data_seed": t.data_seed} if t.data_seed is not None else {}),
        }


def make_parser(description: str | None = None) -> HfArgumentParser:
    parser = HfArgumentParser(
        (ModelArguments, DataTrainingArguments, PaperArguments, Seq2SeqTrainingArguments),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--max_st` is no `--max_steps`: every given flag is named in full (see given_options)
    )
    # Without a GPU the run is on CPU (so --bf16 means CPU bf16, and several processes all-reduce over gloo).
    parser.set_defaults(**PAPER_TRAINING_DEFAULTS, use_cpu=not torch.cuda.is_available())
    for action in parser._actions:
        if action.dest == "data_seed":  # the Trainer's help names the samplers only; here it also makes the corpus
            action.help = (
                "The bundled corpus, its split, the BPE vocabulary and the batch order (default: --seed); --seed "
                "alone then draws the initial weights and dropout."
            )
    return parser


def given_options(parser: HfArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options named on the command line (`--flag value`, `--flag=value`, `--no_flag`)."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
    return given


def parse_arguments(argv: list[str] | None = None, description: str | None = None) -> RunArguments:
    """Parses and checks the command line (or a single .json file of arguments, as run_translation accepts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(description)
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            values = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SystemExit(f"Cannot read the arguments file {argv[0]}: {error}") from error
        if not isinstance(values, dict):
            raise SystemExit(f"The arguments file {argv[0]} holds a {type(values).__name__}; expected a JSON object.")
        argv = [item for key, value in values.items() if value is not None for item in _as_flags(key, value)]
    model, data, paper, training = parser.parse_args_into_dataclasses(args=argv)
    given = given_options(parser, argv)
    overrides = check_arguments(model, data, paper, training, given)
    return RunArguments(model, data, paper, training, given, overrides)


def _as_flags(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [f"--{key}", str(value)]
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    return [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]


def parse_overrides(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"--config_overrides {text!r} is not valid JSON ({error}); expected e.g. '{{\"dropout\": 0.2}}'."
        ) from None
    if not isinstance(overrides, dict):
        raise SystemExit(f"--config_overrides {text!r} is a {type(overrides).__name__}; expected a JSON object.")
    known = {f.name for f in dataclasses.fields(VanillaTransformerConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SystemExit(
            f"--config_overrides names {', '.join(map(repr, unknown))}, which VanillaTransformerConfig does not have; "
            f"its fields are: {', '.join(sorted(known))}."
        )
    return overrides


def check_report_to(report_to: list[str] | None) -> None:
    """An experiment tracker that is not installed is named before any data is read (the Trainer's callback would
    fail only once the data and the tokenizer are ready)."""
    from transformers.integrations import get_available_reporting_integrations

    wanted = [name for name in report_to or [] if name not in ("none", "all")]
    missing = [name for name in wanted if name not in get_available_reporting_integrations()]
    if missing:
        raise SystemExit(
            f"--report_to {' '.join(missing)}: not installed here; install it (pip install {' '.join(missing)}) or "
            "drop it (the learning curve is written without it)."
        )


def check_arguments(model, data, paper, training, given: set[str]) -> dict[str, Any]:
    """Refuses contradictory or invalid arguments by name, and fills the paper's values for the ones not given."""
    overrides = parse_overrides(model.config_overrides)
    if model.model_name_or_path is not None:
        if "preset" in given:
            raise SystemExit(
                "Give --model_name_or_path (fine-tune an existing model) or --preset (a new one), not both."
            )
        if "vocab_size" in given:
            raise SystemExit("--vocab_size trains a new vocabulary; with --model_name_or_path the model's own is used.")
        shape_changing = sorted(set(overrides) - set(TRAINING_TIME_FIELDS))
        if shape_changing:
            raise SystemExit(
                f"--config_overrides {', '.join(shape_changing)} would change the weights of --model_name_or_path "
                f"{model.model_name_or_path}; only {', '.join(TRAINING_TIME_FIELDS)} can be changed for fine-tuning."
            )
    else:
        try:  # the preset and overrides at the requested vocabulary: invalid values fail here, before any data
            any_config(model.preset, **{"vocab_size": model.vocab_size, **overrides})
        except (ValueError, TypeError, StrictDataclassError) as error:
            raise SystemExit(f"--preset {model.preset} with --config_overrides {overrides}: {error}") from error
    check_report_to(training.report_to)
    if data.dataset_name is not None and data.train_file is not None:
        raise SystemExit("Give --dataset_name or --train_file, not both.")
    if data.train_file is None and (data.validation_file or data.test_file):
        raise SystemExit("--validation_file / --test_file need --train_file.")
    for name in ("train_file", "validation_file", "test_file"):
        spec = getattr(data, name)
        if spec is not None:
            check_data_file(name, spec)
    for name in ("max_source_length", "max_target_length", "max_chars", "demo_pairs"):
        if getattr(data, name) < 1:
            raise SystemExit(f"--{name} {getattr(data, name)} is invalid: expected an integer >= 1.")
    if data.num_beams is not None and data.num_beams < 1:
        raise SystemExit(f"--num_beams {data.num_beams} is invalid: expected an integer >= 1.")
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
        if getattr(data, name) is not None and getattr(data, name) < 1:
            raise SystemExit(f"--{name} {getattr(data, name)} is invalid: expected an integer >= 1.")
    for flag, value in (("--max_tokens", paper.max_tokens), ("--average_last", paper.average_last)):
        if value < 1:
            raise SystemExit(f"{flag} {value} is invalid: expected an integer >= 1.")
    if paper.lr_scale <= 0:
        raise SystemExit(f"--lr_scale {paper.lr_scale} is invalid: expected a number > 0.")
    if paper.save_minutes is not None and paper.save_minutes <= 0:
        raise SystemExit(f"--save_minutes {paper.save_minutes} is invalid: expected a number > 0.")
    if not given & {"do_train", "do_eval", "do_predict"}:
        # run_translation does nothing without a --do_* flag; the paper's recipe does all three by default.
        training.do_train = training.do_eval = training.do_predict = True
    # Flags of the Trainer that this recipe replaces: refused by name rather than silently ignored.
    replaced = {
        "per_device_train_batch_size": "training batches are made of --max_tokens tokens (§5.1's token batching)",
        "group_by_length": "training batches already group pairs of similar length (--max_tokens)",
        "save_total_limit": "the last --average_last + 1 checkpoints are kept (ordered by step, not mtime)",
        "load_best_model_at_end": "the published model is the average of the last --average_last checkpoints",
    }
    for name in sorted(given & set(replaced)):
        raise SystemExit(f"--{name} does not apply to this command: {replaced[name]}.")
    if model.tokenizer_name is not None and "vocab_size" in given:
        raise SystemExit("--vocab_size trains a new vocabulary; with --tokenizer_name that tokenizer's is used.")
    for name in ("model_name_or_path", "tokenizer_name"):
        if getattr(model, name) is not None:  # the tokenizer comes from --tokenizer_name, else from the model
            needs_tokenizer = name == "tokenizer_name" or model.tokenizer_name is None
            check_local_folder(name, getattr(model, name), needs_tokenizer)
    if training.push_to_hub and (
        paper.skip_test or not training.do_predict or (data.train_file and not data.test_file)
    ):
        raise SystemExit(
            "--push_to_hub publishes the model with a card of its test scores: it needs a test split scored "
            "(--do_predict, no --skip_test, and --test_file with local data)."
        )
    if "num_train_epochs" in given and "max_steps" not in given:
        training.max_steps = -1  # --num_train_epochs decides the length, as with the Trainer
    no_steps = training.max_steps == 0 or (training.max_steps < 0 and training.num_train_epochs <= 0)
    if training.do_train and no_steps:
        raise SystemExit(
            f"--max_steps {training.max_steps} / --num_train_epochs {training.num_train_epochs}: nothing to train; "
            "give --max_steps >= 1 (or --num_train_epochs > 0 without --max_steps), or leave out --do_train."
        )
    inverse_sqrt = SchedulerType(training.lr_scheduler_type) == SchedulerType.INVERSE_SQRT
    if 0 < training.warmup_steps < 1 and ("learning_rate" not in given or inverse_sqrt):
        raise SystemExit(
            f"--warmup_steps {training.warmup_steps} is a ratio in transformers 5; the paper's schedule and peak "
            "learning rate need a number of steps (e.g. --warmup_steps 4000)."
        )
    if inverse_sqrt and "lr_scheduler_kwargs" not in given:
        if training.warmup_steps <= 0:
            raise SystemExit(
                f"--warmup_steps {training.warmup_steps}: the paper's schedule divides by the warm-up length; "
                "give --warmup_steps >= 1, or another --lr_scheduler_type with a --learning_rate."
            )
        training.lr_scheduler_kwargs = {"timescale": int(training.warmup_steps)}
    for flag, seed in (("--seed", training.seed), ("--data_seed", training.data_seed)):
        if seed is not None and not 0 <= seed < 2**32:
            raise SystemExit(f"{flag} {seed}: expected a seed from 0 to 2**32 - 1.")
    if paper.cooldown_steps and training.max_steps <= 0:
        raise SystemExit(
            f"--cooldown_steps {paper.cooldown_steps} needs --max_steps (the cool-down ends at the last step); "
            "give the run's length in steps instead of --num_train_epochs."
        )
    if not 0 <= paper.cooldown_steps <= max(training.max_steps, 0):
        raise SystemExit(
            f"--cooldown_steps {paper.cooldown_steps}: expected a number of steps from 0 to --max_steps "
            f"({training.max_steps})."
        )
    if "learning_rate" not in given:
        if training.warmup_steps <= 0:
            raise SystemExit("The paper's peak learning rate needs --warmup_steps >= 1; or give --learning_rate.")
        training.learning_rate = None  # filled from d_model once the model's config is known
    return overrides


# What a tokenizer folder holds besides tokenizer_config.json: a fast tokenizer's tokenizer.json, or the vocabulary
# files of a slow one (MarianTokenizer: *.spm and vocab.json; FairseqBPETokenizer: vocab-src.json, merges.txt).
TOKENIZER_FILES = ("tokenizer.json", "*.spm", "*.model", "vocab*.json", "vocab*.txt", "merges.txt")


def check_local_folder(name: str, value: str, needs_tokenizer: bool) -> None:
    """--model_name_or_path / --tokenizer_name given as a path (not a Hub id): it must be a folder, holding a
    readable tokenizer where the run takes its tokenizer from it; checked before any data is read."""
    path = Path(value).expanduser()
    looks_local = path.is_absolute() or value.startswith((".", "~")) or path.exists()
    if not looks_local:
        return  # a Hub id, resolved (or refused) by the library
    if not path.is_dir():
        raise SystemExit(f"--{name} {value}: no such folder.")
    if not needs_tokenizer:
        return
    if not (path / "tokenizer_config.json").is_file() or not any(any(path.glob(f)) for f in TOKENIZER_FILES):
        raise SystemExit(
            f"--{name} {value} holds no tokenizer (tokenizer_config.json and one of {', '.join(TOKENIZER_FILES)}); "
            f"it has {sorted(p.name for p in path.iterdir())[:12]}. Save the tokenizer there with "
            "tokenizer.save_pretrained, or give --tokenizer_name."
        )
    tokenizer_json = path / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            json.loads(tokenizer_json.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise SystemExit(f"--{name} {value}: tokenizer.json is damaged or truncated ({error}).") from error


def check_data_file(name: str, spec: str) -> None:
    parts = spec.split(",")
    if len(parts) == 2:  # two aligned text files
        paths = [Path(p) for p in parts]
    elif len(parts) == 1:
        paths = [Path(spec)]
        if paths[0].suffix not in LOCAL_DATA_SUFFIXES:
            raise SystemExit(
                f"--{name} {spec}: unknown data file type {paths[0].suffix!r}; expected one of "
                f"{', '.join(LOCAL_DATA_SUFFIXES)}, or two aligned text files as 'SOURCE,TARGET'."
            )
    else:
        raise SystemExit(f"--{name} {spec}: expected one file, or two aligned text files as 'SOURCE,TARGET'.")
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--{name}: the data file {path} does not exist.")
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as error:
            raise SystemExit(f"--{name}: cannot read {path} ({error}).") from error
