"""Checkpoint averaging (§6.1: the base models average the last 5 checkpoints, the big ones the last 20).

    vanilla-transformer-average-checkpoints OUTPUT_DIR --last 5 --into averaged/
    vanilla-transformer-average-checkpoints --checkpoints ckpt-a ckpt-b --into averaged/

Each input is a folder written by `save_pretrained` (a Trainer `checkpoint-N` folder is one). The result is a
folder that `from_pretrained` loads: the first checkpoint's config and code files with the averaged weights.
transformers and accelerate have no checkpoint averaging, so it is written here (as fairseq's
`average_checkpoints.py` does for fairseq).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
# What a checkpoint folder holds besides the model: the weights (averaged, written anew) and the Trainer's state,
# which belongs to one checkpoint only. Every other file (config, generation config, code, tokenizer files of any
# kind: tokenizer.json, vocab.json, source.spm / target.spm, ..., a README) is the model's and is copied.
NOT_COPIED = re.compile(
    r"^((model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?|trainer_state\.json|optimizer\.pt"
    r"|scheduler\.pt|scaler\.pt|training_args\.bin|rng_state(_\d+)?\.pth|.*\.tmp)$"
)
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's checkpoint folders; nothing else is one


def complete_checkpoints(output_dir: str | Path, for_resume: bool = False) -> list[Path]:
    """The `checkpoint-N` folders of a run that were written to the end, oldest first.

    The Trainer writes `trainer_state.json` last, so a folder whose state file is present and parses holds its
    weights (and, for resuming, its optimizer and scheduler state); a run killed while saving leaves a folder
    without it, which is skipped.
    """
    output_dir = Path(output_dir)
    needed = [WEIGHTS] + (["optimizer.pt", "scheduler.pt"] if for_resume else [])
    # The Trainer writes rng_state.pth (one process) or rng_state_<rank>.pth (several) before trainer_state.json.
    found = []
    for path in output_dir.iterdir() if output_dir.is_dir() else []:
        match = CHECKPOINT_NAME.match(path.name)
        if not (match and path.is_dir() and all((path / name).is_file() for name in needed)):
            continue
        if for_resume and not any(path.glob("rng_state*.pth")):
            continue
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


# Config entries that are bookkeeping, not the model (the Trainer turns use_cache off while training).
UNCOMPARED_CONFIG_KEYS = {"transformers_version", "architectures", "auto_map", "_name_or_path", "dtype", "use_cache"}


def first_difference(
    ours: dict[str, Any], theirs: dict[str, Any], ignore: Collection[str] = (), alphabetical: bool = False
) -> str | None:
    """The first key whose value differs (absent counts as a value): in `ours`' order then `theirs`', or sorted."""
    keys = [*ours, *(k for k in theirs if k not in ours)]
    for key in sorted(keys) if alphabetical else keys:
        if key not in ignore and ours.get(key, "(absent)") != theirs.get(key, "(absent)"):
            return key
    return None


def check_same_config(paths: list[Path]) -> None:
    """Averaging is only meaningful for checkpoints of one model: the first differing config field is named."""
    configs = []
    for path in paths:
        file = path / "config.json"
        configs.append(json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None)
    first = configs[0]
    for path, config in zip(paths[1:], configs[1:], strict=True):
        if first is None or config is None:
            continue
        key = first_difference(first, config, ignore=UNCOMPARED_CONFIG_KEYS, alphabetical=True)
        if key is not None:
            raise ValueError(
                f"{path} has {key}={config.get(key)!r} but {paths[0]} has {key}={first.get(key)!r}: checkpoints "
                "of different models cannot be averaged."
            )


def average_checkpoints(checkpoints: list[str | Path], into: str | Path, overwrite: bool = False) -> Path:
    """Averages the weights of `checkpoints` (in float64, stored in each tensor's own dtype) into `into`, with the
    first checkpoint's other files (config, code, tokenizer). A non-empty `into` is refused unless `overwrite`."""
    if not checkpoints:
        raise ValueError("No checkpoints to average.")
    paths = [Path(c) for c in checkpoints]
    for path in paths:
        if not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} has no {WEIGHTS}; expected a folder written by save_pretrained.")
    into = Path(into)
    for path in paths:
        if into.resolve() == path.resolve():
            raise ValueError(f"--into {into} is one of the checkpoints being averaged; write the average elsewhere.")
    if (into / "trainer_state.json").exists() or (into / "optimizer.pt").exists():
        raise ValueError(
            f"--into {into} is a training checkpoint (it has trainer_state.json / optimizer.pt): its weights would no "
            "longer match its optimizer state. Write the average to a new folder."
        )
    if not overwrite and into.is_dir() and any(into.iterdir()):
        raise ValueError(
            f"--into {into} already holds files; pass --overwrite to replace them, or choose a new folder."
        )
    check_same_config(paths)
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        state = load_file(path / WEIGHTS)
        if total and set(state) != set(total):
            raise ValueError(f"{path} holds other tensors than {paths[0]}: {sorted(set(state) ^ set(total))[:5]}")
        for name, tensor in state.items():
            if name in total and tensor.shape != total[name].shape:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} in {path}, {tuple(total[name].shape)} in {paths[0]}."
                )
            dtypes[name] = tensor.dtype
            total[name] = total.get(name, 0) + tensor.to(torch.float64)
    into.mkdir(parents=True, exist_ok=True)
    for item in paths[0].iterdir():
        if item.is_file() and not NOT_COPIED.match(item.name):
            shutil.copy2(item, into / item.name)
    averaged = {name: (tensor / len(paths)).to(dtypes[name]).contiguous() for name, tensor in total.items()}
    temporary = into / (WEIGHTS + ".tmp")
    save_file(averaged, temporary, metadata={"format": "pt"})
    temporary.replace(into / WEIGHTS)  # never a half-written weights file
    return into


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", nargs="?", help="a training run's folder with checkpoint-N folders")
    parser.add_argument(
        "--last", type=int, default=5, help="average the last N complete checkpoints (paper: 5 base, 20 big)"
    )
    parser.add_argument("--checkpoints", nargs="+", help="explicit checkpoint folders instead of output_dir")
    parser.add_argument("--into", required=True, help="the folder to write the averaged model to")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --into folder")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last {args.last}: expected an integer >= 1.")
    if args.checkpoints:
        chosen = args.checkpoints
    elif args.output_dir:
        found = complete_checkpoints(args.output_dir)
        if not found:
            raise SystemExit(f"No complete checkpoint-N folders in {args.output_dir}.")
        if len(found) < args.last:
            raise SystemExit(
                f"Not averaged: {args.output_dir} has {len(found)} complete checkpoint(s), fewer than --last "
                f"{args.last}; pass --last {len(found)} to average them all."
            )
        chosen = found[-args.last :]
    else:
        raise SystemExit("Give a training output folder or --checkpoints.")
    try:
        average_checkpoints(chosen, args.into, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"Not averaged: {error}") from error
    print(f"Averaged {len(chosen)} checkpoints ({', '.join(Path(c).name for c in chosen)}) into {args.into}")


if __name__ == "__main__":
    main()
