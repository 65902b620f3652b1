"""Uploads a model folder to the Hugging Face Hub, after checking that it is complete.

    vanilla-transformer-push-to-hub outputs/demo/model --repo_id me/vanilla-transformer-demo --dry_run
    vanilla-transformer-push-to-hub outputs/demo/model --repo_id me/vanilla-transformer-demo [--private]

(or `python -m hf_vanilla_transformer_training.push_to_hub ...`).

The folder must hold the weights, the config (with an `auto_map`), the four code files, the tokenizer, the
generation config and a model card whose metadata validates; anything missing stops the upload before any
network call. `--dry_run` prints exactly the files that would be sent and their sizes, and sends nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REQUIRED = {
    "model.safetensors": "the weights",
    "config.json": "the model config",
    "generation_config.json": "the generation config (the paper's decoding)",
    "configuration_vanilla_transformer.py": "the config code (for trust_remote_code)",
    "modeling_vanilla_transformer.py": "the modeling code (for trust_remote_code)",
    "generation_vanilla_transformer.py": "the decoding code the modeling code imports (for trust_remote_code)",
    "loss_vanilla_transformer.py": "the loss code the modeling code imports (for trust_remote_code)",
    "tokenizer.json": "the tokenizer",
    "tokenizer_config.json": "the tokenizer config",
    "README.md": "the model card",
}
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM")
UPLOADED_SUFFIXES = (".safetensors", ".json", ".py", ".md", ".png", ".txt", ".model")


def check_model_folder(folder: str | Path, online: bool = False) -> list[Path]:
    """Raises ValueError naming everything missing or invalid; returns the files to upload."""
    from .model_card import check_card

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    missing = [f"{name} ({what})" for name, what in REQUIRED.items() if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} cannot be published; it lacks: {'; '.join(missing)}.")
    config = json.loads((folder / "config.json").read_text())
    absent = [c for c in AUTO_CLASSES if c not in config.get("auto_map", {})]
    if absent:
        raise ValueError(
            f"{folder}/config.json has no auto_map entry for {', '.join(absent)}: save it with save_pretrained."
        )
    check_card(folder / "README.md", online=online)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in UPLOADED_SUFFIXES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry_run", action="store_true", help="list the files and sizes; upload nothing")
    parser.add_argument("--commit_message", default="Upload the Transformer (Vaswani et al. 2017)")
    args = parser.parse_args(argv)
    try:
        files = check_model_folder(args.folder, online=not args.dry_run)
    except ValueError as error:
        raise SystemExit(f"Not uploaded: {error}") from error
    total = sum(f.stat().st_size for f in files)
    print(f"{'Would upload' if args.dry_run else 'Uploading'} {len(files)} files ({total:,} bytes) to {args.repo_id}:")
    for path in files:
        print(f"  {path.name:45s} {path.stat().st_size:>14,} bytes")
    if args.dry_run:
        return
    upload(args.folder, args.repo_id, private=args.private, commit_message=args.commit_message, files=files)


def upload(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload the Transformer (Vaswani et al. 2017)",
    files: list[Path] | None = None,
) -> None:
    """Checks `folder` (check_model_folder, with the Hub's card validation) and uploads exactly its listed files."""
    from huggingface_hub import HfApi

    if files is None:
        try:
            files = check_model_folder(folder, online=True)
        except ValueError as error:
            raise SystemExit(f"Not uploaded: {error}") from error
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=[p.name for p in files],
        commit_message=commit_message,
    )
    print(f"Uploaded to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    main()
