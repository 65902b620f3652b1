"""Translation data: the bundled demo corpus, Hub datasets and local files, all as a `datasets.DatasetDict` of
splits in the standard translation layout `{"translation": {"en": ..., "de": ...}}`.

The demo corpus is made offline and deterministically: English number words and dates with their German
translations, from `num2words` and Babel's CLDR data, e.g.

    seven thousand, nine hundred and sixty-one  ->  siebentausendneunhunderteinundsechzig
    Friday, August 26, 1955                     ->  Freitag, 26. August 1955
    August 26, 1955                             ->  26. August 1955
    Aug 26, 1955                                ->  26.08.1955
"""

from __future__ import annotations

import datetime
import json
import random
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

SPLITS = ("train", "validation", "test")


# ---- the demo corpus -----------------------------------------------------------------------------------------
def _number(rng: random.Random) -> int:
    # Every magnitude equally often: 1 to 7 digits (0 to 9,999,999), so small and large numbers are both learned.
    digits = rng.randint(1, 7)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _date(rng: random.Random) -> datetime.date:
    # A wide range of years, 1000 to 2999, so the model must copy years rather than memorise them.
    start, end = datetime.date(1000, 1, 1).toordinal(), datetime.date(2999, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(start, end))


def demo_pair(rng: random.Random) -> tuple[str, str]:
    """One English -> German pair: a number in words (half of the corpus) or a date in one of three formats."""
    from babel.dates import format_date
    from num2words import num2words

    if rng.random() < 0.5:
        n = _number(rng)
        return num2words(n, lang="en"), num2words(n, lang="de")
    date = _date(rng)
    style = rng.choice(("full", "long", "medium"))  # "Friday, August 26, 1955", "August 26, 1955", "Aug 26, 1955"
    return format_date(date, style, locale="en_US"), format_date(date, style, locale="de_DE")


def build_demo_corpus(
    num_pairs: int = 110_000, validation_size: int = 2_000, test_size: int = 2_000, seed: int = 0
) -> DatasetDict:
    """`num_pairs` distinct pairs with a fixed seed, split so that no pair (nor source) is in two splits."""
    if validation_size + test_size >= num_pairs:
        raise ValueError(f"num_pairs={num_pairs} leaves no training data after {validation_size} + {test_size}.")
    rng = random.Random(seed)
    pairs: dict[str, str] = {}  # source -> target; distinct sources make distinct pairs
    while len(pairs) < num_pairs:
        source, target = demo_pair(rng)
        pairs.setdefault(source, target)
    items = list(pairs.items())
    rng.shuffle(items)
    bounds = {
        "test": items[:test_size],
        "validation": items[test_size : test_size + validation_size],
        "train": items[test_size + validation_size :],
    }
    return DatasetDict(
        {
            split: Dataset.from_dict({"translation": [{"en": s, "de": t} for s, t in rows]})
            for split, rows in ((name, bounds[name]) for name in SPLITS)
        }
    )


# ---- other data ----------------------------------------------------------------------------------------------
def _read_local(path: Path, source_lang: str, target_lang: str, target_path: Path | None) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Data file {path} does not exist.")
    if target_path is not None:  # two aligned plain-text files, one sentence per line
        if not target_path.is_file():
            raise FileNotFoundError(f"Data file {target_path} does not exist.")
        sources = path.read_text(encoding="utf-8").splitlines()
        targets = target_path.read_text(encoding="utf-8").splitlines()
        if len(sources) != len(targets):
            raise ValueError(
                f"Aligned files differ in length: {path} has {len(sources)} lines, {target_path} has {len(targets)}."
            )
        return [{source_lang: s, target_lang: t} for s, t in zip(sources, targets, strict=True)]
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
            rows.append(record.get("translation", record))
        return rows
    if path.suffix == ".tsv":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{path}:{number} has {len(fields)} tab-separated fields, expected 2 (source, target)."
                )
            rows.append({source_lang: fields[0], target_lang: fields[1]})
        return rows
    raise ValueError(f"Unknown data file type {path.suffix!r} for {path}: expected .jsonl, .tsv, or two aligned files.")


def load_local_files(files: dict[str, str | tuple[str, str]], source_lang: str, target_lang: str) -> DatasetDict:
    """`files` maps each split to a .jsonl or .tsv file, or to a (source file, target file) pair of aligned text."""
    splits = {}
    for split, spec in files.items():
        path, target_path = (Path(spec[0]), Path(spec[1])) if isinstance(spec, tuple) else (Path(spec), None)
        rows = _read_local(path, source_lang, target_lang, target_path)
        splits[split] = Dataset.from_dict({"translation": rows})
    return DatasetDict(splits)


def load_translation_data(
    dataset: str = "demo",
    dataset_config: str | None = None,
    source_lang: str = "en",
    target_lang: str = "de",
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    demo_pairs: int = 110_000,
    seed: int = 0,
) -> DatasetDict:
    """The bundled demo corpus, a Hub dataset in the translation layout (e.g. `wmt14` / `de-en`), or local files
    (`--train_file a.en,a.de` for two aligned text files). Checked before any training starts."""
    if train_file is not None:
        files: dict[str, Any] = {}
        for split, spec in (("train", train_file), ("validation", validation_file), ("test", test_file)):
            if spec is not None:
                parts = spec.split(",")
                files[split] = tuple(parts) if len(parts) == 2 else spec
        data = load_local_files(files, source_lang, target_lang)
    elif dataset == "demo":
        held_out = min(2_000, max(1, demo_pairs // 20))  # 2000 validation and 2000 test pairs at full size
        data = build_demo_corpus(num_pairs=demo_pairs, validation_size=held_out, test_size=held_out, seed=seed)
    else:  # the real path for users with network access, e.g. --dataset wmt14 --dataset_config de-en
        from datasets import load_dataset

        data = load_dataset(dataset, dataset_config)
    check_translation_data(data, source_lang, target_lang)
    return data


def check_translation_data(data: DatasetDict, source_lang: str, target_lang: str) -> None:
    if "train" not in data:
        raise ValueError(f"The data has no 'train' split (splits: {list(data)}).")
    for split, rows in data.items():
        if len(rows) == 0:
            raise ValueError(f"The {split!r} split is empty.")
        if "translation" not in rows.column_names:
            raise ValueError(f"The {split!r} split has no 'translation' column (columns: {rows.column_names}).")
        first = rows[0]["translation"]
        for lang in (source_lang, target_lang):
            if lang not in first:
                raise ValueError(
                    f"Language key {lang!r} is not in the {split!r} split; its translation keys are {sorted(first)}."
                )


def clean_split(rows: Dataset, source_lang: str, target_lang: str, max_chars: int, split: str) -> Dataset:
    """Drops pairs with an empty side or a side longer than `max_chars`, and says how many (never silently)."""

    def keep(example: dict[str, Any]) -> bool:
        pair = example["translation"]
        return all(0 < len(pair[lang].strip()) <= max_chars for lang in (source_lang, target_lang))

    kept = rows.filter(keep)
    dropped = len(rows) - len(kept)
    if dropped:
        print(f"[data] {split}: dropped {dropped} of {len(rows)} pairs that were empty or over {max_chars} characters")
    if len(kept) == 0:
        raise ValueError(f"The {split!r} split is empty after dropping empty and over-long pairs.")
    return kept
