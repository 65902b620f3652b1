"""Uploads a model folder to the Hugging Face Hub, after checking that it is complete.

    vanilla-transformer-push-to-hub outputs/demo/model --repo_id me/vanilla-transformer-demo --dry_run
    vanilla-transformer-push-to-hub outputs/demo/model --repo_id me/vanilla-transformer-demo [--private]

(or `python -m hf_vanilla_transformer_training.push_to_hub ...`).

The folder must hold the weights, the config (with an `auto_map`), the four code files, the tokenizer, the
generation config and a model card whose metadata validates; anything missing stops the upload before any
network call. `--dry_run` prints exactly the files that would be sent and their sizes, and sends nothing; the
upload sends exactly those files, by name (one commit of one operation per file, no patterns).

Never sent: symbolic links (they may point at ~/.cache/huggingface/token or /etc/passwd), hidden files, and files
that look like credentials by name (token, secret, credential, password, .env, private keys) or by content (a
Hugging Face token). A folder holding any of them is refused, naming them, unless `--skip_unsafe` is given; then
they are left out and listed as such.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from hf_vanilla_transformer.compatibility_vanilla_transformer import saved_with_stale_code

REQUIRED = {
    "model.safetensors": "the weights",
    "config.json": "the model config",
    "generation_config.json": "the generation config (the paper's decoding)",
    "configuration_vanilla_transformer.py": "the config code (for trust_remote_code)",
    "modeling_vanilla_transformer.py": "the modeling code (for trust_remote_code)",
    "generation_vanilla_transformer.py": "the decoding code the modeling code imports (for trust_remote_code)",
    "loss_vanilla_transformer.py": "the loss code the modeling code imports (for trust_remote_code)",
    "compatibility_vanilla_transformer.py": "the transformers version check the code imports (for trust_remote_code)",
    "tokenizer.json": "the tokenizer",
    "tokenizer_config.json": "the tokenizer config",
    "README.md": "the model card",
}
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM")
UPLOADED_SUFFIXES = (".safetensors", ".json", ".py", ".md", ".png", ".txt", ".model")


# Files that hold credentials, by the words of their names (split at "." "_" "-"): "token" as a word of its own (so
# tokenizer.json, special_tokens_map.json and added_tokens.json are not matched), secrets, passwords, .env files,
# private keys.
CREDENTIAL_WORDS = {"token", "secret", "secrets", "credential", "credentials", "password", "passwords", "passwd",
                    "apikey", "netrc", "auth"}  # fmt: skip
CREDENTIAL_NAME = re.compile(r"^\.env|api[_-]?key|^id_(rsa|dsa|ecdsa|ed25519)|\.(pem|key|p12|pfx)$", re.IGNORECASE)


def looks_like_credentials(name: str) -> bool:
    words = {word.lower() for word in re.split(r"[._-]", name)}
    return bool(words & CREDENTIAL_WORDS) or bool(CREDENTIAL_NAME.search(name))


HF_TOKEN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
SCANNED_BYTES = 10_000_000  # text files up to this size are searched for a token (the weights are not)


def unsafe_files(folder: Path) -> dict[Path, str]:
    """Everything in `folder` that must never be uploaded, with the reason."""
    unsafe: dict[Path, str] = {}
    for path in sorted(folder.iterdir()):
        if path.is_symlink():
            unsafe[path] = f"a symbolic link to {path.readlink()}"
        elif path.name.startswith("."):
            unsafe[path] = "a hidden file"
        elif looks_like_credentials(path.name):
            unsafe[path] = "its name says it holds credentials"
        elif (
            path.is_file()
            and path.suffix != ".safetensors"
            and path.stat().st_size <= SCANNED_BYTES
            and HF_TOKEN.search(path.read_bytes())
        ):
            unsafe[path] = "it contains a Hugging Face token (hf_...)"
    return unsafe


def check_model_folder(folder: str | Path, online: bool = False, skip_unsafe: bool = False) -> list[Path]:
    """Raises ValueError naming everything missing, invalid or unsafe; returns the files to upload."""
    from .model_card import check_card

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    unsafe = unsafe_files(folder)
    if unsafe and not skip_unsafe:
        named = "; ".join(f"{path.name} ({why})" for path, why in unsafe.items())
        raise ValueError(
            f"{folder} holds files that are never uploaded: {named}. Remove them, or pass --skip_unsafe to upload "
            "the rest without them."
        )
    for path, why in unsafe.items():
        print(f"  not uploaded: {path.name} ({why})")
    missing = [
        f"{name} ({what})"
        for name, what in REQUIRED.items()
        if not (folder / name).is_file() or folder / name in unsafe
    ]
    if missing:
        raise ValueError(f"{folder} cannot be published; it lacks: {'; '.join(missing)}.")
    config = json.loads((folder / "config.json").read_text())
    absent = [c for c in AUTO_CLASSES if c not in config.get("auto_map", {})]
    if absent:
        raise ValueError(
            f"{folder}/config.json has no auto_map entry for {', '.join(absent)}: save it with save_pretrained."
        )
    if saved_with_stale_code(config.get("vanilla_transformer_version")):
        raise ValueError(
            f"{folder} was saved by hf_vanilla_transformer {config.get('vanilla_transformer_version') or 'before 0.3.0'},"
            " whose code files decode wrongly with transformers >= 5.24 under trust_remote_code. Load it and save it "
            "again (model.save_pretrained(folder)) to refresh them, then push."
        )
    check_card(folder / "README.md", online=online)
    return sorted(p for p in folder.iterdir() if p not in unsafe and p.is_file() and p.suffix in UPLOADED_SUFFIXES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry_run", action="store_true", help="list the files and sizes; upload nothing")
    parser.add_argument("--commit_message", default="Upload the Transformer (Vaswani et al. 2017)")
    parser.add_argument(
        "--skip_unsafe", action="store_true", help="leave out symlinks, hidden and credential-like files, not refuse"
    )
    args = parser.parse_args(argv)
    try:
        files = check_model_folder(args.folder, online=not args.dry_run, skip_unsafe=args.skip_unsafe)
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
    """Checks `folder` (check_model_folder, with the Hub's card validation) and uploads exactly its listed files:
    one commit with one operation per file, by name (upload_folder's allow_patterns are glob patterns: `*.md` would
    also send sub/NOTES.md, and `weird[1].json` would match nothing)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if files is None:
        try:
            files = check_model_folder(folder, online=True)
        except ValueError as error:
            raise SystemExit(f"Not uploaded: {error}") from error
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    folder = Path(folder)
    outside = [p for p in files if p.is_symlink() or p.resolve().parent != folder.resolve()]
    if outside:
        raise SystemExit(f"Not uploaded: {', '.join(map(str, outside))} are not plain files of {folder}.")
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
    print(f"Uploaded to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    main()
