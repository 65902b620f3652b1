"""The training recipe's pieces against the paper: the learning-rate formula, token batching, the data, the
tokenizer and checkpoint averaging."""

import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model
from datasets import DatasetDict
from transformers import AutoTokenizer, get_inverse_sqrt_schedule

from hf_vanilla_transformer_training.average_checkpoints import average_checkpoints
from hf_vanilla_transformer_training.data import (
    DEMO_CATEGORIES,
    build_demo_corpus,
    clean_split,
    demo_category,
    english_number,
    load_translation_data,
    stratified_subset,
)
from hf_vanilla_transformer_training.tokenizer import SPECIAL_IDS, check_tokenizer_matches_config, train_bpe_tokenizer
from hf_vanilla_transformer_training.train import TokenBatchSampler, loss_spikes, translation_scores


def paper_lrate(step: int, d_model: int, warmup_steps: int = 4000) -> float:
    """§5.3: lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)."""
    return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


@pytest.mark.parametrize("d_model, peak", [(512, 6.99e-4), (1024, 4.94e-4)])
def test_transformers_inverse_sqrt_schedule_is_the_papers_learning_rate(d_model, peak):
    warmup = 4000
    assert d_model**-0.5 * warmup**-0.5 == pytest.approx(peak, rel=1e-3)  # PAPER.md's peaks
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=d_model**-0.5 * warmup**-0.5, betas=(0.9, 0.98), eps=1e-9)
    scheduler = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup, timescale=warmup)
    for step in range(1, 20_001):
        optimizer.step()
        scheduler.step()  # the scheduler's step count is now `step`
        if step in (1, 2, 100, 3999, 4000, 4001, 10_000, 20_000) or step % 997 == 0:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(paper_lrate(step, d_model), rel=1e-9), step


def test_token_batches_respect_the_budget_and_cover_the_data_once():
    generator = torch.Generator().manual_seed(0)
    sources = torch.randint(3, 40, (1000,), generator=generator).tolist()
    targets = torch.randint(3, 40, (1000,), generator=generator).tolist()
    sampler = TokenBatchSampler(sources, targets, max_tokens=600, seed=1, multiple_of=1)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    for batch in batches:
        padded = len(batch) * (max(sources[i] for i in batch) + max(targets[i] for i in batch))
        assert padded <= 600
    # Similar lengths are batched together: far less padding than random batches of the same sizes.
    waste = sum(len(b) * max(sources[i] for i in b) - sum(sources[i] for i in b) for b in batches)
    assert waste < 0.15 * sum(sources)
    assert len({len(b) for b in batches}) > 1  # the number of sentences varies: it is the tokens that are fixed


def test_token_batches_depend_on_seed_and_epoch_only():
    lengths = list(range(3, 203))
    a = TokenBatchSampler(lengths, lengths, max_tokens=800, seed=3)
    b = TokenBatchSampler(lengths, lengths, max_tokens=800, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


def test_token_batches_come_in_multiples_of_devices_times_accumulation():
    """Also with fewer batches than devices x accumulation steps (101 pairs of 10 tokens at 40 tokens a batch make
    26 batches; 1 pair makes 1): the count is a multiple, and every pair is in some batch."""
    for pairs in (101, 7, 1):
        lengths = [5] * pairs
        for multiple in (1, 2, 3, 4, 8, 32):
            sampler = TokenBatchSampler(lengths, lengths, max_tokens=40, multiple_of=multiple)
            batches = list(sampler)
            assert len(batches) == len(sampler) and len(batches) % multiple == 0 and batches, (pairs, multiple)
            if len(batches) >= len(TokenBatchSampler(lengths, lengths, max_tokens=40)):  # nothing trimmed
                assert {i for batch in batches for i in batch} == set(range(pairs))


def test_a_budget_below_the_longest_pair_is_refused():
    with pytest.raises(ValueError, match=r"max_tokens=10 per batch is less than the longest pair \(12 tokens\)"):
        TokenBatchSampler([5, 6], [5, 6], max_tokens=10)


def test_demo_corpus_is_deterministic_distinct_and_split_cleanly():
    corpus = build_demo_corpus(num_pairs=3000, validation_size=200, test_size=300, seed=7)
    assert isinstance(corpus, DatasetDict) and {k: len(v) for k, v in corpus.items()} == {
        "train": 2500,
        "validation": 200,
        "test": 300,
    }
    pairs = {split: {(p["en"], p["de"]) for p in rows["translation"]} for split, rows in corpus.items()}
    assert sum(len(p) for p in pairs.values()) == 3000  # distinct, and no pair in two splits
    assert (
        build_demo_corpus(num_pairs=3000, validation_size=200, test_size=300, seed=7)["test"][:5] == corpus["test"][:5]
    )
    sources = [p["en"] for p in corpus["train"]["translation"]]
    assert any("thousand" in s for s in sources) and any("million" in s for s in sources)
    assert any(s.count(",") == 2 and s.split(",")[0].endswith("day") for s in sources)  # Friday, August 26, 1955
    assert any(len(s.split()) == 3 and s.split()[0].endswith(".") is False and len(s.split()[0]) == 3 for s in sources)


def test_demo_examples_from_the_issue():
    import datetime

    from babel.dates import format_date
    from num2words import num2words

    assert num2words(7961, lang="en") == "seven thousand, nine hundred and sixty-one"
    assert num2words(7961, lang="de") == "siebentausendneunhunderteinundsechzig"
    date = datetime.date(1955, 8, 26)
    assert format_date(date, "full", locale="en_US") == "Friday, August 26, 1955"
    assert format_date(date, "full", locale="de_DE") == "Freitag, 26. August 1955"
    assert format_date(date, "medium", locale="en_US") == "Aug 26, 1955"
    assert format_date(date, "medium", locale="de_DE") == "26.08.1955"


def test_local_files_through_the_datasets_loaders(tmp_path, capsys):
    """JSON lines (translation layout or flat), a JSON array, CSV / TSV with a header, aligned text files; the rows
    come back in order and intact (U+2028 and form feeds inside a line do not split it)."""
    rows = [("one", "eins"), ("two\u2028lines", "zwei\x0cseiten"), ('say "hi", ok', "sag \u201ehallo\u201c, gut")]
    expected = [{"en": en, "de": de} for en, de in rows]
    files = {
        "nested.jsonl": "".join(json.dumps({"translation": {"en": en, "de": de}}) + "\n" for en, de in rows),
        "flat.json": "".join(json.dumps({"en": en, "de": de, "id": i}) + "\n" for i, (en, de) in enumerate(rows)),
        "array.json": json.dumps([{"en": en, "de": de} for en, de in rows]),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("de", "en"), *((de, en) for en, de in rows)])
    (tmp_path / "pairs.tsv").write_text("en\tde\n" + "".join(f"{en}\t{de}\n" for en, de in rows), encoding="utf-8")
    (tmp_path / "a.en").write_text("".join(en + "\n" for en, _ in rows), encoding="utf-8")
    (tmp_path / "a.de").write_text("".join(de + "\n" for _, de in rows), encoding="utf-8")
    for spec in [*files, "pairs.csv", "pairs.tsv"]:
        data = load_translation_data(train_file=str(tmp_path / spec))
        assert data["train"]["translation"] == expected, spec
    aligned = load_translation_data(train_file=f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}")
    assert aligned["train"]["translation"] == expected


def test_local_file_errors_name_the_file_and_what_was_expected(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(ValueError, match=r"a.en has 3 lines, .*a.de has 2"):
        load_translation_data(train_file=f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}")
    (tmp_path / "t.jsonl").write_text(json.dumps({"translation": {"en": "one", "fr": "un"}}) + "\n")
    with pytest.raises(
        ValueError, match=r"Language key 'de' is not in the 'train' split; its translation keys are \['en', 'fr'\]"
    ):
        load_translation_data(train_file=str(tmp_path / "t.jsonl"))
    (tmp_path / "columns.csv").write_text("source,target\none,eins\n")
    with pytest.raises(ValueError, match=r"columns.csv has neither a 'translation' column nor the language columns "
                       r"\['en', 'de'\]; its columns are \['source', 'target'\]"):  # fmt: skip
        load_translation_data(train_file=str(tmp_path / "columns.csv"))
    (tmp_path / "broken.jsonl").write_text('{"en": "one", "de": "eins"}\n{"en": "two", "de": \n')
    with pytest.raises(ValueError, match=r"Cannot read .*broken.jsonl as json"):
        load_translation_data(train_file=str(tmp_path / "broken.jsonl"))
    (tmp_path / "null.jsonl").write_text('{"en": "one", "de": "eins"}\n{"en": "two", "de": null}\n')
    data = load_translation_data(train_file=str(tmp_path / "null.jsonl"))
    with pytest.raises(ValueError, match=r"Row 2 of the 'train' split has None as its 'de' text; expected a string"):
        clean_split(data["train"], "en", "de", max_chars=20, split="train")
    (tmp_path / "ok.tsv").write_text("en\tde\none\teins\n\tleer\ntwo\tzwei\n" + "x" * 50 + "\tlang\n")
    data = load_translation_data(train_file=str(tmp_path / "ok.tsv"))
    cleaned = clean_split(data["train"], "en", "de", max_chars=20, split="train")
    assert len(cleaned) == 2
    assert "train: dropped 2 of 4 pairs that were empty or over 20 characters" in capsys.readouterr().out


def test_shared_bpe_tokenizer_round_trips_and_matches_the_config(tmp_path):
    corpus = build_demo_corpus(num_pairs=2000, validation_size=10, test_size=10)
    texts = [p[lang] for p in corpus["train"]["translation"] for lang in ("en", "de")]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    assert len(tokenizer) <= 300
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    for text in texts[:200] + ["Freitag, 26. August 1955", "fünfhundert"]:
        ids = tokenizer(text).input_ids
        assert ids[-1] == SPECIAL_IDS["</s>"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    model = tiny_model(vocab_size=300)
    check_tokenizer_matches_config(tokenizer, model.config)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("Aug 26, 1955").input_ids == tokenizer("Aug 26, 1955").input_ids
    with pytest.raises(ValueError, match=r"tokenizer has 300 tokens but the model's vocab_size is 128"):
        check_tokenizer_matches_config(tokenizer, tiny_model().config)


def test_checkpoint_averaging_is_the_mean_of_the_weights(tmp_path):
    folders = []
    for seed in range(3):
        folder = tmp_path / f"checkpoint-{seed}"
        tiny_model(seed=seed).save_pretrained(folder)
        folders.append(folder)
    average_checkpoints(folders, tmp_path / "averaged")
    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration

    averaged = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path / "averaged")
    models = [tiny_model(seed=s) for s in range(3)]
    for name, tensor in averaged.state_dict().items():
        expected = sum(m.state_dict()[name].double() for m in models) / 3
        torch.testing.assert_close(tensor.double(), expected, atol=1e-7, rtol=1e-6)
    assert averaged.lm_head.weight is averaged.get_input_embeddings().weight


def test_every_demo_source_has_one_translation_and_may_dates_take_the_long_form():
    """ "May 26, 1955" is Babel's long and medium English date at once, with two German forms; the corpus gives such a
    source the long one, so no source has two translations (before 0.3.0 the form was a coin toss)."""
    import datetime
    import random

    from babel.dates import format_date

    from hf_vanilla_transformer_training.data import demo_pair

    date = datetime.date(1955, 5, 26)
    assert format_date(date, "long", locale="en_US") == format_date(date, "medium", locale="en_US") == "May 26, 1955"
    rng, seen = random.Random(3), {}
    for _ in range(20_000):
        source, target = demo_pair(rng)
        assert seen.setdefault(source, target) == target, source
        if source.startswith("May ") and source.count(",") == 1:
            assert target == format_date(datetime.datetime.strptime(source, "%B %d, %Y").date(), "long", locale="de_DE")


def test_demo_categories_are_read_from_the_source_text():
    from num2words import num2words

    rng = __import__("random").Random(0)
    for _ in range(3000):
        n = rng.randint(0, 9_999_999)
        assert english_number(num2words(n, lang="en")) == n  # an independent truth: num2words itself
    assert demo_category("Friday, August 26, 1955") == "date, full"
    assert demo_category("August 26, 1955") == demo_category("May 26, 1955") == "date, long"
    assert demo_category("Aug 26, 1955") == "date, medium"
    assert demo_category("seven thousand, nine hundred and sixty-one") == "number, 4 digits"
    assert demo_category("nine hundred and ninety-nine") == demo_category("zero") == "number, 1-3 digits"
    assert demo_category(num2words(1_000_000, lang="en")) == "number, 7 digits"
    assert demo_category("Hello world") is None and english_number("") is None
    corpus = build_demo_corpus(num_pairs=3000, validation_size=200, test_size=300, seed=1)
    assert {demo_category(p["en"]) for p in corpus["train"]["translation"]} == set(DEMO_CATEGORIES)


def test_the_validation_subset_keeps_the_categories_in_proportion():
    corpus = build_demo_corpus(num_pairs=6000, validation_size=2000, test_size=100, seed=2)
    rows = corpus["validation"]
    counts = {}
    for pair in rows["translation"]:
        counts[demo_category(pair["en"])] = counts.get(demo_category(pair["en"]), 0) + 1
    subset = stratified_subset(rows, 500, "en")
    sub_counts = {}
    for pair in subset["translation"]:
        sub_counts[demo_category(pair["en"])] = sub_counts.get(demo_category(pair["en"]), 0) + 1
    assert len(subset) == 500
    for name, count in counts.items():
        assert abs(sub_counts.get(name, 0) - count * 500 / 2000) <= 1, name  # proportional to within rounding
    other = DatasetDict({"x": corpus["test"].map(lambda r: {"translation": {"en": "x " + r["translation"]["en"],
                                                                            "de": r["translation"]["de"]}})})["x"]  # fmt: skip
    assert stratified_subset(other, 10, "en")["translation"] == other.select(range(10))["translation"]


def test_spikes_are_found_relative_to_the_running_minimum_after_the_warm_up():
    """A spike: after the warm-up, the mean loss over the last 200 steps above 1.25x its lowest value before, or a
    gradient norm above 10x the median before. A single high logged loss (a batch of the harder kind) is none."""
    from hf_vanilla_transformer_training.train import SPIKE_WINDOW_STEPS

    assert SPIKE_WINDOW_STEPS == 200
    losses = [3.0] * 30 + [2.0] * 40 + [2.0, 2.0, 4.0, 2.0] * 10 + [2.6] * 30  # logged every 10 steps
    history = [{"step": 10 * (i + 1), "loss": loss, "grad_norm": 1.0} for i, loss in enumerate(losses)]
    history[-5]["grad_norm"] = 50.0  # step 1360
    history.insert(50, {"step": 505, "eval_loss": 9.0})  # not a training log
    spikes = loss_spikes(history, warmup_steps=250)
    steps = [s["step"] for s in spikes]
    # the mixed stretch (steps 710-1100: every 200-step mean is 2.5 = 1.25x 2.0) is none; the sustained 2.6 after it
    # is (steps 1110-1400, certainly once its mean fills the window, 1300 on), and so is the gradient norm 50 (1360)
    assert min(steps) > 1100 and set(range(1300, 1410, 10)) <= set(steps)
    assert next(s for s in spikes if s["step"] == 1360)["grad_norm"] == 50.0
    assert min(s["lowest_mean_before"] for s in spikes) == 2.0
    assert not loss_spikes(history[:70], warmup_steps=250)  # the drop from 3.0 and the mixed batches: no spike


def test_translation_scores_by_category():
    sources = ["seven thousand, nine hundred and sixty-one", "Aug 26, 1955", "Aug 27, 1955", "twelve"]
    references = ["siebentausendneunhunderteinundsechzig", "26.08.1955", "27.08.1955", "zwölf"]
    hypotheses = ["siebentausendneunhunderteinundsechzig", "26.08.1955", "27.08.1956", "zwölf"]
    scores = translation_scores(hypotheses, references, sources)
    assert scores["exact_match"] == 75.0
    assert scores["exact_match_by_category"] == {"number, 1-3 digits": 100.0, "number, 4 digits": 100.0,
                                                 "date, medium": 50.0}  # fmt: skip
    assert scores["pairs_by_category"] == {"number, 1-3 digits": 1, "number, 4 digits": 1, "date, medium": 2}
    assert "exact_match_by_category" not in translation_scores(hypotheses, references, ["hello", *sources[1:]])


def test_translation_scores():
    scores = translation_scores(["a b c d", "x y"], ["a b c d", "x z"])
    assert scores["exact_match"] == 50.0 and 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert translation_scores(["same text"], ["same text"])["chrf"] == pytest.approx(100.0)
    assert math.isclose(translation_scores(["a"], ["b"])["exact_match"], 0.0)


@pytest.mark.parametrize("preset", ["demo", "tiny", "base", "C-N2"])
def test_the_preset_option_takes_a_table3_row_or_a_small_size(preset):
    from hf_vanilla_transformer import any_config
    from hf_vanilla_transformer_training.train import initial_config, parse_args

    args = parse_args(["--output_dir", "unused", "--preset", preset, "--config_overrides", '{"dropout": 0.2}',
                       "--vocab_size", "1000"])  # fmt: skip
    config = initial_config(args)
    assert config.to_dict() == any_config(preset, vocab_size=1000, dropout=0.2).to_dict()


def test_an_unknown_preset_is_refused_with_the_known_ones(capsys):
    from hf_vanilla_transformer_training.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--output_dir", "unused", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_the_installed_import_names_are_the_projects_own(tmp_path):
    """The repository's training/ folder installs as hf_vanilla_transformer_training: no top-level `training` in
    site-packages, and every console command loads. Run outside the repository, so only installed names import."""
    code = textwrap.dedent(
        """
        import importlib.metadata, importlib.util
        assert importlib.util.find_spec("training") is None, importlib.util.find_spec("training")
        import hf_vanilla_transformer_training.train
        scripts = importlib.metadata.distribution("hf-vanilla-transformer").entry_points.select(group="console_scripts")
        print(sorted((s.name, s.value) for s in scripts))
        for script in scripts:
            assert callable(script.load()), script
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "('vanilla-transformer-train', 'hf_vanilla_transformer_training.train:cli')" in result.stdout


@pytest.mark.slow
def test_train_py_configures_the_papers_schedule_adam_and_no_clipping(tmp_path):
    """What train.py actually sets, read from a tiny run: the learning rate logged at every step is §5.3's
    d_model^-0.5 * min(s^-0.5, s * warmup^-1.5) * lr_scale at s = step - 1 (the library's offset: like every
    transformers warm-up, the first update uses schedule step 0, lr 0, and the rate logged after update `step` is
    the one that update used); Adam's betas (0.9, 0.98), eps 1e-9, weight decay 0; no gradient clipping; and
    --save_minutes saves on the clock, not the step count."""
    from hf_vanilla_transformer_training.train import main

    out = tmp_path / "run"
    d_model, warmup, scale, steps = 32, 4, 3.0, 8
    main(["--output_dir", str(out), "--preset", "tiny", "--vocab_size", "200", "--demo_pairs", "1400",
          "--max_tokens", "800", "--warmup_steps", str(warmup), "--lr_scale", str(scale), "--logging_steps", "1",
          "--max_steps", str(steps), "--save_steps", "1000", "--save_minutes", "1e-6", "--eval_steps", "1000",
          "--average_last", "20", "--skip_test", "--disable_tqdm", "true"])  # fmt: skip
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    logged = [(entry["step"], entry["learning_rate"]) for entry in state["log_history"] if "learning_rate" in entry]
    assert [step for step, _ in logged] == list(range(1, steps + 1))
    for step, rate in logged:
        s = step - 1
        paper = d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) * scale if s > 0 else 0.0
        assert rate == pytest.approx(paper, rel=1e-6, abs=1e-12), (step, rate, paper)
    group = torch.load(out / f"checkpoint-{steps}" / "optimizer.pt", weights_only=True)["param_groups"][0]
    assert tuple(group["betas"]) == (0.9, 0.98) and group["eps"] == 1e-9 and group["weight_decay"] == 0.0
    arguments = torch.load(out / f"checkpoint-{steps}" / "training_args.bin", weights_only=False)
    assert arguments.max_grad_norm == 0.0  # the Trainer clips only when max_grad_norm > 0
    # --save_minutes with a tiny interval: a checkpoint after every step, although --save_steps is 1000.
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved == list(range(1, steps + 1))


def test_the_cooldown_is_a_named_deviation_that_ends_the_papers_rate_at_zero(tmp_path):
    """--cooldown_steps C (off by default): the paper's rate times min(1, (T - s) / C) at schedule step s of T, so the
    last C updates fall linearly towards 0; the steps before are the paper's rate exactly."""
    from hf_vanilla_transformer_training.train import main

    out = tmp_path / "run"
    d_model, warmup, scale, steps, cooldown = 32, 4, 3.0, 10, 4
    main(["--output_dir", str(out), "--preset", "tiny", "--vocab_size", "200", "--demo_pairs", "1400",
          "--max_tokens", "800", "--warmup_steps", str(warmup), "--lr_scale", str(scale), "--logging_steps", "1",
          "--max_steps", str(steps), "--cooldown_steps", str(cooldown), "--save_steps", "1000", "--eval_steps", "1000",
          "--average_last", "1", "--skip_test", "--disable_tqdm", "true"])  # fmt: skip
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    logged = [(entry["step"], entry["learning_rate"]) for entry in state["log_history"] if "learning_rate" in entry]
    assert [step for step, _ in logged] == list(range(1, steps + 1))
    for step, rate in logged:
        s = step - 1  # the schedule step the update used (see the test above)
        paper = d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) * scale if s > 0 else 0.0
        expected = paper * min(1.0, (steps - s) / cooldown)
        assert rate == pytest.approx(expected, rel=1e-6, abs=1e-12), (step, rate, expected)
    assert logged[-1][1] > 0 and logged[-1][1] < logged[-cooldown - 1][1] / 3
    assert json.loads((out / "run_arguments.json").read_text())["cooldown_steps"] == cooldown
    with pytest.raises(SystemExit, match=r"--cooldown_steps 11: expected a number of steps from 0 to --max_steps"):
        main(["--output_dir", str(tmp_path / "bad"), "--preset", "tiny", "--max_steps", "10", "--cooldown_steps", "11"])
    with pytest.raises(SystemExit, match=r"--cooldown_steps 3 needs --max_steps"):
        main(["--output_dir", str(tmp_path / "bad"), "--preset", "tiny", "--num_train_epochs", "1", "--cooldown_steps",
              "3"])  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [(["--seed", "-1"], r"--seed -1: expected a seed from 0 to 2\*\*32 - 1"),
     (["--data_seed", "-1"], r"--data_seed -1: expected a seed from 0 to 2\*\*32 - 1"),
     (["--data_seed", str(2**32)], r"--data_seed 4294967296: expected a seed"),
     (["--average_last", "0"], r"--average_last 0 is invalid: expected an integer >= 1\.$")],
)  # fmt: skip
def test_seeds_and_the_averaging_count_out_of_range_are_refused_by_name(tmp_path, flags, message):
    """A negative --data_seed would build the corpus of its absolute value (Python's random), a negative --seed
    fail inside numpy: both are refused before any work, naming the flag."""
    from hf_vanilla_transformer_training.train import main

    with pytest.raises(SystemExit, match=message):
        main(["--output_dir", str(tmp_path / "bad"), "--preset", "tiny", "--max_steps", "10", *flags])
