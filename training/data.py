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
import random
import re
import time
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

SPLITS = ("train", "validation", "test")
LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")  # read_local_split's file types (or SOURCE,TARGET)


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
    source = format_date(date, style, locale="en_US")
    if style == "medium" and source == format_date(date, "long", locale="en_US"):
        # May is not abbreviated: "May 26, 1955" is both the long and the medium date, whose German forms differ
        # ("26. Mai 1955", "26.05.1955"). One source gets one translation, the long one, or which of the two a
        # pair holds would be a coin toss no model can learn (1.4% of the corpus, 4% of each of the two styles).
        style = "long"
    return source, format_date(date, style, locale="de_DE")


# ---- the demo corpus' categories: what the per-category exact match is reported by ----------------------------
_UNITS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
)}  # fmt: skip
_TENS = {
    w: 10 * i
    for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], start=2)
}
_SCALES = {"thousand": 1_000, "million": 1_000_000}
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_DATE_STYLES = {
    "date, full": re.compile(rf"^({'|'.join(_WEEKDAYS)}), ({'|'.join(_MONTHS)}) \d{{1,2}}, \d{{4}}$"),
    "date, long": re.compile(rf"^({'|'.join(_MONTHS)}) \d{{1,2}}, \d{{4}}$"),
    "date, medium": re.compile(rf"^({'|'.join(m[:3] for m in _MONTHS)}) \d{{1,2}}, \d{{4}}$"),
}
# The number categories by digit count; 1-3 digits together: only 1,000 such numbers exist, so the corpus of distinct
# pairs holds each once and a test split has a handful of each count.
NUMBER_CATEGORIES = ("number, 1-3 digits", "number, 4 digits", "number, 5 digits", "number, 6 digits",
                     "number, 7 digits")  # fmt: skip
DEMO_CATEGORIES = (*NUMBER_CATEGORIES, *_DATE_STYLES)


def english_number(words: str) -> int | None:
    """The value of num2words' English for an integer below 10^9 ("seven thousand, nine hundred and sixty-one"), or
    None for other text."""
    total, group = 0, 0
    tokens = words.replace(",", " ").replace("-", " ").split()
    if not tokens:
        return None
    for token in tokens:
        if token in _UNITS:
            group += _UNITS[token]
        elif token in _TENS:
            group += _TENS[token]
        elif token == "hundred":
            group *= 100
        elif token in _SCALES:
            total, group = total + group * _SCALES[token], 0
        elif token != "and":
            return None
    return total + group


def demo_category(source: str) -> str | None:
    """The demo corpus category of an English source: one of DEMO_CATEGORIES, or None for other text."""
    for name, pattern in _DATE_STYLES.items():
        if pattern.match(source):
            return name
    value = english_number(source)
    if value is None:
        return None
    digits = len(str(value))
    return NUMBER_CATEGORIES[0] if digits <= 3 else f"number, {digits} digits"


def stratified_subset(rows: Dataset, size: int, source_lang: str) -> Dataset:
    """`size` rows with the demo categories in their proportions (the first rows of each category, interleaved so
    that any prefix is stratified too); the first `size` rows for data without demo categories."""
    if size >= len(rows):
        return rows
    sources = [pair[source_lang] for pair in rows["translation"]]
    groups: dict[str | None, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(demo_category(source), []).append(index)
    if None in groups:
        return rows.select(range(size))
    # Each category's i-th row sits at position (i + 0.5) / len(group) of the whole: merging by that position
    # interleaves the categories in proportion.
    positions = {index: (i + 0.5) / len(group) for group in groups.values() for i, index in enumerate(group)}
    order = sorted(positions, key=lambda index: (positions[index], index))
    return rows.select(order[:size])


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
def check_utf8(path: Path) -> None:
    """Reads `path` through an incremental UTF-8 decoder and names the line and column of the first invalid byte.
    Needed because pyarrow's JSON reader stores invalid bytes inside strings without complaint (the row fails only
    when read, deep inside training), and datasets' text loader reports a position inside the chunk it was reading."""
    import codecs

    from hf_vanilla_transformer.translation import decode_text

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        decode_text(path.read_bytes(), str(path))  # raises, naming the line and column
        raise


def _load(builder: str, path: Path, **options: Any) -> Dataset:
    """One UTF-8 file through a `datasets` packaged loader (json, csv, text), its errors named by file."""
    from datasets import load_dataset

    if path.is_file():
        check_utf8(path)
    try:
        return load_dataset(builder, data_files={"rows": str(path)}, split="rows", **options)
    except Exception as error:  # datasets wraps parser errors in several types (DatasetGenerationError, ...)
        cause = error.__cause__ or error
        raise ValueError(f"Cannot read {path} as {builder}: {type(cause).__name__}: {cause}") from error


def _as_translation(rows: Dataset, path: Path, source_lang: str, target_lang: str) -> Dataset:
    """Rows in the translation layout; flat rows with one column per language are wrapped into it."""
    if "translation" in rows.column_names:
        return rows.select_columns(["translation"])
    missing = [lang for lang in (source_lang, target_lang) if lang not in rows.column_names]
    if missing:
        raise ValueError(
            f"{path} has neither a 'translation' column nor the language columns {missing}; its columns are "
            f"{rows.column_names}."
        )
    return rows.map(
        lambda row: {"translation": {source_lang: row[source_lang], target_lang: row[target_lang]}},
        remove_columns=rows.column_names,
        desc=f"reading {path.name}",
    )


def read_local_split(spec: str, source_lang: str, target_lang: str) -> Dataset:
    """A .json / .jsonl file (datasets' json loader: JSON lines or one JSON array), a .csv / .tsv file with a
    header row (datasets' csv loader), or 'SOURCE,TARGET': two aligned text files, one sentence per line (datasets'
    text loader, which splits on line ends only, never on U+2028 or form feeds)."""
    parts = spec.split(",")
    if len(parts) == 2:
        source_path, target_path = Path(parts[0]), Path(parts[1])
        # utf-8-sig: a byte-order mark is not part of the first sentence.
        sources = _load("text", source_path, keep_linebreaks=False, encoding="utf-8-sig")["text"]
        targets = _load("text", target_path, keep_linebreaks=False, encoding="utf-8-sig")["text"]
        if len(sources) != len(targets):
            raise ValueError(
                f"Aligned files differ in length: {source_path} has {len(sources)} lines, {target_path} has "
                f"{len(targets)}."
            )
        return Dataset.from_dict(
            {"translation": [{source_lang: s, target_lang: t} for s, t in zip(sources, targets, strict=True)]}
        )
    path = Path(spec)
    if path.suffix in (".json", ".jsonl"):
        rows = _load("json", path)
    elif path.suffix in (".csv", ".tsv"):
        rows = _load("csv", path, delimiter="\t" if path.suffix == ".tsv" else ",", keep_default_na=False)
    else:
        raise ValueError(
            f"Unknown data file type {path.suffix!r} for {path}: expected .json, .jsonl, .csv, .tsv, or two aligned "
            "text files as 'SOURCE,TARGET'."
        )
    return _as_translation(rows, path, source_lang, target_lang)


def load_translation_data(
    dataset: str | None = None,
    dataset_config: str | None = None,
    source_lang: str = "en",
    target_lang: str = "de",
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    demo_pairs: int = 110_000,
    seed: int = 0,
    cache_dir: str | None = None,
    token: str | None = None,
) -> DatasetDict:
    """The bundled demo corpus (`dataset` None or "demo"), a Hub dataset in the translation layout (e.g. `wmt14`
    / `de-en`), or local files (see `read_local_split`). Checked before any training starts."""
    if train_file is not None:
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        data = DatasetDict(
            {split: read_local_split(spec, source_lang, target_lang) for split, spec in files.items() if spec}
        )
    elif dataset in (None, "demo"):
        held_out = min(2_000, max(1, demo_pairs // 20))  # 2000 validation and 2000 test pairs at full size
        started = time.perf_counter()
        print(f"[data] building the demo corpus: {demo_pairs} distinct English -> German pairs of numbers and dates "
              f"(num2words, Babel), corpus seed {seed} ...", flush=True)  # fmt: skip
        data = build_demo_corpus(num_pairs=demo_pairs, validation_size=held_out, test_size=held_out, seed=seed)
        print(f"[data] done in {time.perf_counter() - started:.0f} s", flush=True)
    else:  # the real path for users with network access, e.g. --dataset_name wmt14 --dataset_config_name de-en
        from datasets import load_dataset

        data = load_dataset(dataset, dataset_config, cache_dir=cache_dir, token=token)
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

    def keep(example: dict[str, Any], index: int) -> bool:
        pair = example["translation"]
        for lang in (source_lang, target_lang):
            if not isinstance(pair.get(lang), str):
                raise ValueError(
                    f"Row {index + 1} of the {split!r} split has {pair.get(lang)!r} as its {lang!r} text; expected a "
                    "string."
                )
        return all(0 < len(pair[lang].strip()) <= max_chars for lang in (source_lang, target_lang))

    kept = rows.filter(keep, with_indices=True)
    dropped = len(rows) - len(kept)
    if dropped:
        print(f"[data] {split}: dropped {dropped} of {len(rows)} pairs that were empty or over {max_chars} characters")
    if len(kept) == 0:
        raise ValueError(f"The {split!r} split is empty after dropping empty and over-long pairs.")
    return kept
