"""The training command as a transformers user drives it (run_translation.py's flags): every Trainer flag, the
paper's recipe where a flag is not given, fine-tuning an existing model on local files, explicit resume, plain NLL
and perplexity, a complete wheel, the README's command lines."""

import csv
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import python_without_this_package
from interop_fixtures import demo_sentences, opus_mt_folder
from safetensors.torch import load_file

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer_training import train as train_module
from hf_vanilla_transformer_training.train import initial_config, main, parse_args, peak_learning_rate

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--preset", "tiny", "--vocab_size", "200", "--demo_pairs", "1400", "--max_tokens", "800", "--warmup_steps", "4",
        "--lr_scale", "4", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# ---- arguments -------------------------------------------------------------------------------------------------
def test_the_paper_recipe_fills_every_flag_that_is_not_given():
    run = parse_args(["--output_dir", "unused"])
    t = run.training
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (0.9, 0.98, 1e-9, 0.0, 0.0)
    assert t.optim.value == "adamw_torch" and t.lr_scheduler_type.value == "inverse_sqrt"
    assert t.lr_scheduler_kwargs == {"timescale": 4000} and t.warmup_steps == 4000 and t.max_steps == 100_000
    assert t.report_to == [] and t.predict_with_generate and (t.do_train, t.do_eval, t.do_predict) == (True,) * 3
    assert run.paper.max_tokens == 50_000 and run.paper.average_last == 5 and run.model.preset == "base"
    # §5.3's peak: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) at step = warmup.
    assert t.learning_rate is None  # not given: the formula, from the model's d_model
    assert peak_learning_rate(None, 512, 4000, 1.0) == pytest.approx(512**-0.5 * 4000 * 4000**-1.5, rel=1e-12)
    assert peak_learning_rate(3e-4, 512, 4000, 2.0) == pytest.approx(6e-4)
    assert peak_learning_rate(0.0, 512, 4000, 1.0) == 0.0  # an explicit 0 is kept, not replaced by the formula


def test_every_trainer_flag_reaches_the_trainer_arguments(monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    run = parse_args(["--output_dir", "out", "--report_to", "tensorboard", "--push_to_hub", "--hub_model_id", "me/x",
                      "--torch_compile", "--optim", "adafactor", "--bf16", "--activation_checkpointing",
                      "--per_device_eval_batch_size", "8", "--num_train_epochs", "3", "--learning_rate", "5e-5",
                      "--lr_scheduler_type", "linear", "--warmup_steps", "10", "--do_train", "--do_predict",
                      "--resume_from_checkpoint", "last", "--source_prefix", "translate: ", "--max_source_length",
                      "64", "--dataset_name", "wmt14", "--dataset_config_name", "de-en"])  # fmt: skip
    t = run.training
    assert t.report_to == ["tensorboard"] and t.push_to_hub and t.hub_model_id == "me/x" and t.torch_compile
    assert t.optim.value == "adafactor" and t.bf16 and t.activation_checkpointing and t.per_device_eval_batch_size == 8
    # --num_train_epochs decides the length (the paper's 100k steps are not imposed on top of it)
    assert t.num_train_epochs == 3 and t.max_steps == -1
    assert t.learning_rate == 5e-5 and t.lr_scheduler_type.value == "linear" and not t.lr_scheduler_kwargs
    assert t.do_train and t.do_predict and t.resume_from_checkpoint == "last"
    assert run.data.source_prefix == "translate: " and run.data.max_source_length == 64
    assert (run.data.dataset_name, run.data.dataset_config_name) == ("wmt14", "de-en")


def test_a_json_file_of_arguments_is_read_as_run_translation_reads_one(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"output_dir": "o", "preset": "tiny", "max_steps": 7,
                                                    "config_overrides": {"dropout": 0.3}, "bf16": True}))  # fmt: skip
    run = parse_args([str(tmp_path / "args.json")])
    assert run.model.preset == "tiny" and run.training.max_steps == 7 and run.training.bf16
    assert run.overrides == {"dropout": 0.3} and initial_config(run).dropout == 0.3


@pytest.fixture
def no_data_work(monkeypatch):
    """Argument errors must come before any corpus, data file or tokenizer work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("data or tokenizer work started before the arguments were checked")

    monkeypatch.setattr(train_module, "load_translation_data", forbidden)
    monkeypatch.setattr(train_module, "train_bpe_tokenizer", forbidden)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--config_overrides", "{dropout: 1}"], r"--config_overrides '\{dropout: 1\}' is not valid JSON"),
        (["--config_overrides", "[1]"], r"is a list; expected a JSON object"),
        (["--config_overrides", '{"dropuot": 0.2}'], r"names 'dropuot', which VanillaTransformerConfig does not have"),
        (["--config_overrides", '{"d_model": 100, "h": 3}'], r"--preset tiny with --config_overrides .*d_model"),
        (["--train_file", "missing.jsonl"], r"--train_file: the data file missing.jsonl does not exist"),
        (["--train_file", "README.md"], r"--train_file README.md: unknown data file type '.md'; expected one of"),
        (["--train_file", "a,b,c"], r"expected one file, or two aligned text files"),
        (["--validation_file", "pyproject.toml"], r"--validation_file / --test_file need --train_file"),
        (["--dataset_name", "wmt14", "--train_file", "x.json"], r"Give --dataset_name or --train_file, not both"),
        (["--warmup_steps", "0"], r"--warmup_steps 0(.0)?: the paper's schedule divides by the warm-up length"),
        (["--max_source_length", "0"], r"--max_source_length 0 is invalid: expected an integer >= 1"),
        (["--num_beams", "0"], r"--num_beams 0 is invalid"),
        (["--lr_scale", "-1"], r"--lr_scale -1.0 is invalid"),
        (["--model_name_or_path", "x", "--preset", "base"], r"--model_name_or_path .* or --preset .*, not both"),
        (["--model_name_or_path", "x", "--config_overrides", '{"d_ff": 8}'], r"d_ff would change the weights"),
        (["--model_name_or_path", "no/such/folder"], r"--model_name_or_path no/such/folder: cannot load its config"),
        (["--warmup_steps", "0.1"], r"--warmup_steps 0.1 is a ratio in transformers 5; the paper's schedule"),
        (["--per_device_train_batch_size", "8"], r"--per_device_train_batch_size does not apply .* --max_tokens"),
        (["--save_total_limit", "2"], r"--save_total_limit does not apply to this command"),
        (["--load_best_model_at_end", "true"], r"--load_best_model_at_end does not apply"),
        (["--tokenizer_name", "x", "--vocab_size", "100"], r"with --tokenizer_name that tokenizer's is used"),
        (["--push_to_hub", "--skip_test"], r"--push_to_hub publishes the model with a card of its test scores"),
        (["--push_to_hub", "--do_train"], r"--push_to_hub publishes the model with a card of its test scores"),
    ],
)
def test_argument_errors_are_named_before_any_data_is_read(tmp_path, no_data_work, arguments, message):
    with pytest.raises(SystemExit, match=message):
        base = [] if "--model_name_or_path" in arguments else TINY
        main(["--output_dir", str(tmp_path / "run"), *base, *arguments])


def test_a_tracker_that_is_not_installed_is_named_before_any_data_is_read(tmp_path, no_data_work, monkeypatch):
    import transformers.integrations

    arguments = ["--output_dir", str(tmp_path / "run"), *TINY, "--report_to", "tensorboard"]
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(SystemExit, match=r"--report_to tensorboard: not installed here; install it \(pip install "
                                         r"tensorboard\)"):  # fmt: skip
        main(arguments)
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    with pytest.raises(AssertionError, match="data or tokenizer work started"):  # installed: on to the data
        main(arguments)


def test_a_language_key_the_data_lacks_is_one_line_not_a_traceback(tmp_path):
    """--target_lang fr on a file of en/de rows: the data's error is the message (it was a traceback)."""
    rows = tmp_path / "train_flat.jsonl"
    rows.write_text("".join(json.dumps({"en": f"one {i}", "de": f"eins {i}"}) + "\n" for i in range(20)))
    with pytest.raises(
        SystemExit,
        match=r"^\[train\] data: .*train_flat.jsonl has neither a 'translation' column nor "
        r"the language columns \['fr'\]; its columns are \['en', 'de'\]",
    ):
        main(["--output_dir", str(tmp_path / "run"), *TINY, "--train_file", str(rows), "--target_lang", "fr"])


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, r"Cannot read the arguments file .*args.json"), ("{oops", r"Cannot read the arguments file"),
     ("[1, 2]", r"holds a list; expected a JSON object")],
)  # fmt: skip
def test_a_bad_arguments_file_is_named(tmp_path, no_data_work, content, message):
    if content is not None:
        (tmp_path / "args.json").write_text(content)
    with pytest.raises(SystemExit, match=message):
        main([str(tmp_path / "args.json")])


def test_null_entries_of_an_arguments_file_keep_their_defaults(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"output_dir": "o", "max_eval_samples": None, "preset": "tiny"}))
    assert parse_args([str(tmp_path / "args.json")]).data.max_eval_samples == 500


def fake_checkpoint(folder: Path, resumable: bool = True) -> Path:
    """A folder with the files that mark a finished save (contents are not read before the checks)."""
    folder.mkdir(parents=True)
    names = (
        ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"] if resumable else ["model.safetensors"]
    )
    for name in names:
        (folder / name).write_bytes(b"")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    return folder


def test_nothing_a_previous_run_or_the_user_saved_is_deleted_by_a_refused_or_unsafe_request(tmp_path, no_data_work):
    from hf_vanilla_transformer import small_config
    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    out = tmp_path / "run"
    VanillaTransformerForConditionalGeneration(small_config("tiny")).save_pretrained(out / "model")
    train_bpe_tokenizer(["one two", "eins zwei"] * 20, vocab_size=40).save_pretrained(out / "model")
    # --overwrite_output_dir would delete the model this run fine-tunes: refused.
    with pytest.raises(SystemExit, match=r"--overwrite_output_dir would delete .*model, which this run reads"):
        main(["--output_dir", str(out), "--overwrite_output_dir", "--model_name_or_path", str(out / "model")])
    # --resume_from_checkpoint last where a run left outputs but no checkpoint: refused, not replaced.
    with pytest.raises(SystemExit, match=r"holds another run's outputs \(model\) but no checkpoint to resume from"):
        main(["--output_dir", str(out), *TINY, "--resume_from_checkpoint", "last"])
    # A checkpoint from elsewhere into a folder that holds another run: refused.
    elsewhere = fake_checkpoint(tmp_path / "other" / "checkpoint-2")
    with pytest.raises(SystemExit, match=r"holds another run \(model\)"):
        main(["--output_dir", str(out), *TINY, "--resume_from_checkpoint", str(elsewhere)])
    # Finished saves that this command cannot resume from (e.g. --save_only_model): refused, never deleted.
    saved = tmp_path / "saved"
    fake_checkpoint(saved / "checkpoint-2", resumable=False)
    with pytest.raises(SystemExit, match=r"has checkpoints \(checkpoint-2\) but none holds the optimizer"):
        main(["--output_dir", str(saved), *TINY, "--resume_from_checkpoint", "last"])
    assert (saved / "checkpoint-2" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()


def test_a_lone_tokenizer_folder_from_a_run_stopped_early_does_not_block_a_new_run(tmp_path):
    from hf_vanilla_transformer_training.train import resolve_resume

    out = tmp_path / "run"
    (out / "tokenizer").mkdir(parents=True)
    assert resolve_resume(parse_args(["--output_dir", str(out), *TINY]), out) is None


def test_a_batch_smaller_than_the_longest_pair_is_named_before_training(tmp_path):
    with pytest.raises(SystemExit, match=r"--max_tokens 30 over 1 processes x 2 accumulation steps is 15 tokens per "
                       r"batch, less than the longest training pair \(\d+ source \+ target tokens\)"):  # fmt: skip
        main(["--output_dir", str(tmp_path / "run"), *TINY, "--max_tokens", "30", "--gradient_accumulation_steps", "2"])


def test_an_unknown_preset_is_refused_by_the_parser(tmp_path, no_data_work, capsys):
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path / "run"), "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_a_model_of_another_kind_is_refused_with_the_converter_to_use(tmp_path, no_data_work):
    marian = opus_mt_folder(tmp_path / "opus-mt")
    with pytest.raises(SystemExit, match=r"is a 'marian' model, not one of this project .*vanilla-transformer-convert "
                       r"marian .*opus-mt OUTPUT"):  # fmt: skip
        main(["--output_dir", str(tmp_path / "run"), "--model_name_or_path", str(marian)])


def test_the_fsdp_config_on_cpu_processes_is_refused_with_what_it_needs(tmp_path, monkeypatch, no_data_work):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"The FSDP accelerate config needs CUDA GPUs"):
        main(["--output_dir", str(tmp_path / "run"), *TINY])


# ---- runs ------------------------------------------------------------------------------------------------------
def write_local_data(folder: Path) -> dict[str, str]:
    """The three local layouts: JSON lines (translation layout), CSV with a header, aligned text files."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = demo_sentences(300, seed=3)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as handle:
        for en, de in pairs[:240]:
            handle.write(json.dumps({"translation": {"en": en, "de": de}}) + "\n")
    with open(folder / "dev.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("en", "de"), *pairs[240:270]])
    (folder / "test.en").write_text("".join(en + "\n" for en, _ in pairs[270:]), encoding="utf-8")
    (folder / "test.de").write_text("".join(de + "\n" for _, de in pairs[270:]), encoding="utf-8")
    return {"train": str(folder / "train.jsonl"), "validation": str(folder / "dev.csv"),
            "test": f"{folder / 'test.en'},{folder / 'test.de'}"}  # fmt: skip


@pytest.mark.slow
def test_fine_tuning_a_converted_opus_mt_model_on_local_files(tmp_path):
    from transformers import AutoTokenizer

    from hf_vanilla_transformer.convert import convert_marian

    source = convert_marian(opus_mt_folder(tmp_path / "opus-mt"), tmp_path / "converted")
    files = write_local_data(tmp_path / "data")
    out = tmp_path / "run"
    results = main(["--model_name_or_path", str(source), "--train_file", files["train"], "--validation_file",
                    files["validation"], "--test_file", files["test"], "--output_dir", str(out), "--max_steps", "4",
                    "--save_steps", "2", "--eval_steps", "2", "--learning_rate", "3e-4", "--warmup_steps", "2",
                    "--max_tokens", "2000", "--average_last", "2", "--disable_tqdm", "true"])  # fmt: skip
    assert results["steps"] == 4 and results["averaged_checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert results["test"]["pairs"] == 30
    # Marian's loss has no label smoothing, so the model's eval_loss is the plain NLL: the added metric must agree.
    validation = results["validation"]
    assert validation["nll"] == pytest.approx(validation["loss"], rel=1e-4)
    assert validation["perplexity"] == pytest.approx(math.exp(validation["nll"]), rel=1e-6)
    # The published folder keeps the model's own tokenizer (Marian's two SentencePiece models) and decoding.
    model_dir = out / "model"
    assert {"source.spm", "target.spm", "vocab.json"} <= {p.name for p in model_dir.iterdir()}
    assert type(AutoTokenizer.from_pretrained(model_dir)).__name__ == "MarianTokenizer"
    assert json.loads((model_dir / "generation_config.json").read_text())["length_penalty_type"] == "transformers"
    tuned = VanillaTransformerForConditionalGeneration.from_pretrained(model_dir).state_dict()
    start = VanillaTransformerForConditionalGeneration.from_pretrained(source).state_dict()
    assert not torch.equal(tuned["model.encoder.layers.0.self_attn.q_proj.weight"],
                           start["model.encoder.layers.0.self_attn.q_proj.weight"])  # fmt: skip


def independent_nll(checkpoint: Path, pairs: list[dict[str, str]]) -> float:
    """Mean token NLL of `pairs` under `checkpoint`, by log-softmax and gather, one sentence at a time."""
    from transformers import AutoTokenizer

    model = VanillaTransformerForConditionalGeneration.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    total, count = 0.0, 0
    for pair in pairs:
        source = torch.tensor([tokenizer(pair["en"]).input_ids])
        target = torch.tensor([tokenizer(text_target=pair["de"]).input_ids])
        decoder_input = torch.cat([torch.tensor([[model.config.decoder_start_token_id]]), target[:, :-1]], dim=1)
        with torch.no_grad():
            logits = model(input_ids=source, decoder_input_ids=decoder_input).logits
        total -= logits.log_softmax(-1).gather(-1, target[..., None]).sum().item()
        count += target.numel()
    return total / count


@pytest.mark.slow
def train_in_a_process(arguments: list[str]) -> str:
    """The command in a process of its own; its stdout and stderr (warnings and library log lines included)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_vanilla_transformer_training.train", *arguments]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_a_run_reports_plain_nll_and_perplexity_warns_nothing_and_resumes_only_explicitly(tmp_path, capfd):
    from hf_vanilla_transformer_training.data import clean_split, load_translation_data, stratified_subset

    out = tmp_path / "run"
    common = [*TINY, "--output_dir", str(out), "--save_steps", "2", "--eval_steps", "2", "--max_eval_samples", "20",
              "--average_last", "2", "--max_predict_samples", "10"]  # fmt: skip
    printed = train_in_a_process([*common, "--max_steps", "2"])  # its own stderr: every warning it prints
    for unasked in ("max_new_tokens", "pin_memory", "Warning", "warning", "missing keys"):
        assert unasked not in printed, unasked
    results = json.loads((out / "results.json").read_text())
    # eval_nll against an independent computation at the checkpoint it was measured on (label smoothing 0.1 here,
    # so eval_loss is larger than the plain NLL).
    evaluation = next(e for e in results["log_history"] if "eval_nll" in e)
    rows = load_translation_data(demo_pairs=1400)["validation"]
    # the 20 validation pairs the run evaluates: --max_eval_samples takes them stratified by demo category
    pairs = stratified_subset(clean_split(rows, "en", "de", 1000, "validation"), 20, "en")["translation"]
    assert evaluation["eval_nll"] == pytest.approx(independent_nll(out / "checkpoint-2", pairs), rel=1e-4)
    assert evaluation["eval_perplexity"] == pytest.approx(math.exp(evaluation["eval_nll"]), rel=1e-6)
    assert evaluation["eval_loss"] > evaluation["eval_nll"]

    # A rerun into the used folder, without --resume_from_checkpoint or --overwrite_output_dir: refused, and
    # nothing deleted or changed.
    # (The lock file is rewritten by every run that starts, the refused one included: it names its holder.)
    def files():
        return sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.name != ".training.lock")

    before = files()
    with pytest.raises(SystemExit, match=r"holds another run \(checkpoint-2, .*Give --resume_from_checkpoint last"):
        main([*common, "--max_steps", "4"])
    assert files() == before
    # Resuming with another model: refused, naming the field, before any data (recorded run arguments) ...
    with pytest.raises(SystemExit, match=r"Cannot resume: this run's config_overrides is \{'d_ff': 32\} but the run"):
        main([*common, "--max_steps", "4", "--resume_from_checkpoint", "last", "--config_overrides", '{"d_ff": 32}'])
    # ... and by the checkpoint's own config where no record exists (a checkpoint from elsewhere).
    (out / "run_arguments.json").unlink()
    with pytest.raises(SystemExit, match=r"checkpoint-2: its config has d_ff=64 but this run's arguments give d_ff=32"):
        main([*common, "--max_steps", "4", "--resume_from_checkpoint", "last", "--config_overrides", '{"d_ff": 32}'])
    capfd.readouterr()
    printed = train_in_a_process([*common, "--max_steps", "4", "--resume_from_checkpoint", "last"])
    assert f"[train] resuming from {out / 'checkpoint-2'}" in printed
    assert printed.count("'loss':") == 2  # steps 3 and 4 only: a restart from step 0 would log 4 losses
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    for unasked in ("missing keys", "Warning", "warning"):
        assert unasked not in printed, unasked
    # --overwrite_output_dir deletes exactly the run's outputs; the user's own files stay.
    (out / "my_notes.txt").write_text("keep me")
    (out / "checkpoint-best").mkdir()
    main([*common, "--max_steps", "2", "--overwrite_output_dir"])
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "checkpoint-best").is_dir()
    assert not (out / "checkpoint-4").exists() and (out / "checkpoint-2").is_dir()


@pytest.mark.slow
def test_push_to_hub_publishes_the_averaged_model_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id))
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda self, **kw: calls.append(("upload", kw)))
    monkeypatch.setattr(huggingface_hub.ModelCard, "validate", lambda self, *a, **k: None)  # the Hub's own check
    out = tmp_path / "run"
    main([*TINY, "--output_dir", str(out), "--max_steps", "2", "--save_steps", "2", "--eval_steps", "1000",
          "--average_last", "1", "--max_predict_samples", "5", "--push_to_hub", "--hub_model_id", "me/tiny"])  # fmt: skip
    assert calls[0] == ("create", "me/tiny")
    upload = calls[1][1]
    assert upload["repo_id"] == "me/tiny"
    sent = {op.path_in_repo: Path(op.path_or_fileobj) for op in upload["operations"]}
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= set(sent)
    assert all(path == out / "model" / name for name, path in sent.items())


@pytest.mark.slow
def test_streaming_as_the_readme_shows_it_equals_greedy_decoding(tmp_path):
    """The README's TextStreamer example (greedy: streamers take one sequence) prints what greedy decoding returns;
    with the default beam 4 the library refuses a streamer."""
    import contextlib
    import io

    from transformers import AutoTokenizer

    out = tmp_path / "run"
    main([*TINY, "--output_dir", str(out), "--max_steps", "8", "--save_steps", "8", "--eval_steps", "1000",
          "--average_last", "1", "--skip_test"])  # fmt: skip
    block = next(b for b in re.findall(r"```py\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
                 if "TextStreamer" in b)  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(block.replace("outputs/demo/model", str(out / "model")), {})
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = VanillaTransformerForConditionalGeneration.from_pretrained(out / "model").eval()
    source = re.search(r'tokenizer\("([^"]+)"', block).group(1)
    greedy = model.generate(**tokenizer(source, return_tensors="pt"), num_beams=1)
    assert printed.getvalue().strip() == tokenizer.decode(greedy[0], skip_special_tokens=True).strip()
    from transformers import TextStreamer

    with pytest.raises(ValueError, match="streamer"):
        model.generate(**tokenizer(source, return_tensors="pt"), streamer=TextStreamer(tokenizer))


@pytest.mark.slow
def test_the_readme_command_lines_run(tmp_path, monkeypatch):
    """Each `vanilla-transformer-train` line of the README's training block, in order, at a tiny size."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- training commands -->", 2)[1]
    commands = [line.split()[1:] for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("vanilla-transformer-train")]  # fmt: skip
    assert len(commands) >= 4
    write_local_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    tiny = {"--vocab_size": "200", "--demo_pairs": "1400", "--max_tokens": "2000", "--max_steps": "2",
            "--save_steps": "2", "--eval_steps": "2", "--max_eval_samples": "10", "--max_predict_samples": "10",
            "--average_last": "1", "--disable_tqdm": "true", "--warmup_steps": "2"}  # fmt: skip
    for arguments in commands:
        arguments = [
            "tiny" if previous == "--preset" else value
            for previous, value in zip(["", *arguments[:-1]], arguments, strict=True)
        ]
        fine_tuning = "--model_name_or_path" in arguments
        resuming = "--resume_from_checkpoint" in arguments
        extra = {k: v for k, v in tiny.items() if not (fine_tuning and k == "--vocab_size")}
        if resuming:
            extra["--max_steps"] = "3"
        results = main([*arguments, *(item for pair in extra.items() for item in pair)])
        assert results["steps"] == (3 if resuming else 2), arguments


# ---- packaging -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_wheel_is_complete_and_its_command_trains_outside_the_checkout(tmp_path):
    import shutil

    source = tmp_path / "source"  # a copy: building in place would write build/ and *.egg-info into the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "outputs", "*.egg-info",
                                                                "__pycache__", "tests", "benchmarks"))  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    assert (target / "hf_vanilla_transformer_training" / "templates" / "model_card.md").is_file()
    assert (target / "hf_vanilla_transformer_training" / "accelerate_configs" / "ddp.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import hf_vanilla_transformer_training as t; print(t.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.startswith(str(target)), where.stdout  # the wheel's copy, not the checkout
    result = subprocess.run([str(target / "bin" / "vanilla-transformer-train"), *TINY, "--output_dir", "run",
                             "--max_steps", "2", "--save_steps", "2", "--eval_steps", "1000", "--average_last", "1",
                             "--max_predict_samples", "5"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "README.md").is_file()  # the card template came from the wheel


def test_the_model_folders_tokenizer_loads_where_the_package_is_absent_without_running_code(tmp_path):
    """A user without the package loads the tokenizer with trust_remote_code=False: no prompt, no code from the
    folder runs (transformers' AutoTokenizer reads the folder's config.json through AutoConfig first, which asks
    about the config's auto_map unless told; the model itself needs trust_remote_code=True)."""
    from hf_vanilla_transformer import small_config
    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["one two three four", "eins zwei drei vier"] * 50, vocab_size=40)
    folder = tmp_path / "model"
    VanillaTransformerForConditionalGeneration(small_config("tiny", vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "configuration_vanilla_transformer.py").write_text("raise SystemExit('folder code ran')\n")
    python, env = python_without_this_package(tmp_path)
    code = ("from transformers import AutoTokenizer\n"
            f"t = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=False)\n"
            "print(t('one two').input_ids)")  # fmt: skip
    result = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, input="", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tokenizer("one two").input_ids)
    assert "trust_remote_code" not in result.stdout + result.stderr and "folder code ran" not in result.stdout


def test_preprocessing_truncates_prefixes_and_encodes_targets_as_run_translation_does(tmp_path):
    """Sources get --source_prefix and are cut at --max_source_length with </s> kept last; targets are encoded as
    targets (`text_target`: MarianTokenizer then uses the target SentencePiece model); --drop_long_pairs drops."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hf_vanilla_transformer_training.arguments import DataTrainingArguments
    from hf_vanilla_transformer_training.train import tokenize_split

    tokenizer = AutoTokenizer.from_pretrained(opus_mt_folder(tmp_path / "opus-mt", separate_vocabularies=True))
    pairs = demo_sentences(40, seed=5)
    rows = Dataset.from_dict({"translation": [{"en": en, "de": de} for en, de in pairs]})
    median = lambda lengths: sorted(lengths)[len(lengths) // 2]  # noqa: E731  (half the pairs are cut)
    ls = median([len(tokenizer("twenty " + en).input_ids) for en, _ in pairs])
    lt = median([len(tokenizer(text_target=de).input_ids) for _, de in pairs])
    data = DataTrainingArguments(max_source_length=ls, max_target_length=lt, source_prefix="twenty ")
    encoded = tokenize_split(rows, tokenizer, data, "train")
    for (en, de), source, labels in zip(pairs, encoded["input_ids"], encoded["labels"], strict=True):
        full_source = tokenizer("twenty " + en).input_ids
        full_labels = tokenizer(text_target=de).input_ids
        assert source == (full_source if len(full_source) <= ls else full_source[: ls - 1] + [tokenizer.eos_token_id])
        assert labels == (full_labels if len(full_labels) <= lt else full_labels[: lt - 1] + [tokenizer.eos_token_id])
    assert any(tokenizer(text_target=de).input_ids != tokenizer(de).input_ids for _, de in pairs)
    data.drop_long_pairs = True
    kept = tokenize_split(rows, tokenizer, data, "train")
    expected = sum(len(tokenizer("twenty " + en).input_ids) <= ls and len(tokenizer(text_target=de).input_ids) <= lt
                   for en, de in pairs)  # fmt: skip
    assert 0 < len(kept) == expected < len(pairs)


@pytest.mark.slow
def test_trainer_flags_change_the_run_optimizer_and_epochs(tmp_path):
    """--optim and --num_train_epochs reach the Trainer: the checkpoint's optimizer state is SGD's, and one epoch
    of the token batches is trained (not the paper's 100k steps)."""
    out = tmp_path / "run"
    results = main([*TINY, "--output_dir", str(out), "--optim", "sgd", "--learning_rate", "0.1", "--num_train_epochs",
                    "1", "--max_train_samples", "300", "--activation_checkpointing", "--save_steps", "1000",
                    "--eval_steps", "1000", "--average_last", "1", "--skip_test"])  # fmt: skip
    (checkpoint,) = out.glob("checkpoint-*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0 and results["steps"] == state["global_step"] == state["max_steps"] > 0
    group = torch.load(checkpoint / "optimizer.pt", weights_only=True)["param_groups"][0]
    assert (
        "momentum" in group and "betas" not in group and group["initial_lr"] == pytest.approx(0.1 * 4)
    )  # TINY: --lr_scale 4


def test_only_half_written_checkpoints_are_removed(tmp_path):
    """A checkpoint-<step> folder is removed only when its trainer_state.json (the Trainer's last file) is missing
    or cut off; a finished save that this command cannot resume from, and folders of other names, stay."""
    from hf_vanilla_transformer_training.train import remove_incomplete_checkpoints

    fake_checkpoint(tmp_path / "checkpoint-2")
    fake_checkpoint(tmp_path / "checkpoint-4", resumable=False)  # e.g. --save_only_model
    cut = fake_checkpoint(tmp_path / "checkpoint-6")
    (cut / "trainer_state.json").write_text('{"global_st')
    (tmp_path / "checkpoint-best").mkdir()
    (tmp_path / "checkpoint-8-backup").mkdir()
    remove_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-8-backup",
                                                          "checkpoint-best"]  # fmt: skip


@pytest.mark.slow
def test_a_resume_continues_the_checkpoints_optimizer_and_scheduler_state(tmp_path):
    """The resumed run starts from the checkpoint's Adam moments and schedule position: altering either in the
    checkpoint on purpose changes what the resumed run does (a restart, or a resume that rebuilt them, would not
    notice)."""
    import shutil

    common = [*TINY, "--save_steps", "2", "--eval_steps", "1000", "--average_last", "5", "--skip_test",
              "--config_overrides", '{"dropout": 0.0}']  # fmt: skip
    main([*common, "--output_dir", str(tmp_path / "base"), "--max_steps", "2"])
    for name in ("plain", "optimizer", "scheduler"):
        shutil.copytree(tmp_path / "base", tmp_path / name)
    optimizer_file = tmp_path / "optimizer" / "checkpoint-2" / "optimizer.pt"
    state = torch.load(optimizer_file, weights_only=True)
    for moments in state["state"].values():
        moments["exp_avg"].mul_(-1.0)  # the first moment reversed
    torch.save(state, optimizer_file)
    scheduler_file = tmp_path / "scheduler" / "checkpoint-2" / "scheduler.pt"
    schedule = torch.load(scheduler_file, weights_only=True)
    schedule["last_epoch"] += 2
    schedule["_step_count"] += 2
    torch.save(schedule, scheduler_file)

    def resumed(name):
        main([*common, "--output_dir", str(tmp_path / name), "--max_steps", "4", "--resume_from_checkpoint", "last"])
        state = json.loads((tmp_path / name / "checkpoint-4" / "trainer_state.json").read_text())
        weights = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path / name / "checkpoint-4")
        rate = next(e["learning_rate"] for e in state["log_history"] if e.get("step") == 4 and "learning_rate" in e)
        return weights.state_dict(), rate

    plain, plain_rate = resumed("plain")
    moved, moved_rate = resumed("optimizer")
    shifted, shifted_rate = resumed("scheduler")
    name = "model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(plain[name], moved[name]) and moved_rate == plain_rate
    # TINY: d_model 32, warm-up 4, lr_scale 4. Step 4 uses schedule step 3; two steps further on, step 5.
    lrate = lambda s: 32**-0.5 * min(s**-0.5, s * 4**-1.5) * 4  # noqa: E731
    assert plain_rate == pytest.approx(lrate(3)) and shifted_rate == pytest.approx(lrate(5))
    assert not torch.allclose(plain[name], shifted[name])


@pytest.mark.slow
def test_a_second_epoch_gets_a_new_batch_order(tmp_path, monkeypatch):
    """The Trainer reaches epochs past the first through the sampler's set_epoch: epoch 1's batches are another
    order than epoch 0's (the same order every epoch would be a silent loss of shuffling)."""
    from hf_vanilla_transformer_training.train import TokenBatchSampler

    seen: dict[int, list[list[int]]] = {}
    real_batches = TokenBatchSampler.batches

    def recording(self):
        batches = real_batches(self)
        seen.setdefault(self.epoch, batches)
        return batches

    monkeypatch.setattr(TokenBatchSampler, "batches", recording)
    results = main([*TINY, "--output_dir", str(tmp_path / "run"), "--num_train_epochs", "2", "--max_train_samples",
                    "200", "--save_steps", "1000", "--eval_steps", "1000", "--average_last", "1", "--skip_test"])  # fmt: skip
    assert sorted(seen) == [0, 1], sorted(seen)
    assert seen[0] != seen[1] and sorted(map(sorted, seen[0])) != sorted(map(sorted, seen[1]))
    assert results["steps"] == len(seen[0]) + len(seen[1])


# ---- reliability, second round (issue 15) ------------------------------------------------------------------------
def test_a_second_run_into_a_folder_in_use_is_refused_with_the_holders_pid(tmp_path):
    """Two runs in one folder replaced each other's checkpoints and results, both exiting 0. The lock is the
    operating system's: a killed holder leaves nothing that blocks the next run."""
    import signal

    from hf_vanilla_transformer_training.train import LOCK_NAME, lock_output_dir

    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "hf_vanilla_transformer_training.train", *TINY, "--output_dir", str(out),
         "--max_steps", "100000", "--eval_steps", "100000", "--save_steps", "100000"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_NAME).is_file() or f"pid {first.pid}" not in (out / LOCK_NAME).read_text():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(SystemExit, match=rf"{out} is in use by a running training \(pid {first.pid} on "):
            main([*TINY, "--output_dir", str(out), "--max_steps", "2", "--overwrite_output_dir"])
        assert sorted(p.name for p in out.iterdir()) == before  # the refused run changed nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lock = lock_output_dir(out)  # the killed holder's lock is gone with it
    assert lock is not None
    lock.close()


def test_a_diverging_run_stops_before_saving_and_names_the_step(tmp_path):
    """--warmup_steps 1 --lr_scale 1000: the loss went to 3e5 and then NaN, the log showed 'loss': 0, and every
    checkpoint, averaged/ and model/ was NaN with exit code 0. Now the rise is reported and the run stops at the
    first non-finite weights or loss, before anything of them is written."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_vanilla_transformer_training.train", *TINY, "--output_dir", str(out),
               "--warmup_steps", "1", "--lr_scale", "1000", "--max_steps", "40", "--save_steps", "1",
               "--eval_steps", "1000", "--average_last", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "WARNING: the training loss rose from" in result.stderr
    assert re.search(r"\[train\] stopped: (\d+ weight tensors are not finite|The training loss is nan)", result.stderr)
    assert not (out / "model").exists() and not (out / "averaged").exists()
    for checkpoint in out.glob("checkpoint-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint


def test_a_non_finite_loss_stops_the_step_it_occurs_in(tmp_path, monkeypatch):
    from hf_vanilla_transformer_training.train import NonFiniteTrainingError

    real_forward = VanillaTransformerForConditionalGeneration.forward
    calls = []

    @functools.wraps(real_forward)  # the Trainer reads forward's signature
    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                out.loss = out.loss * float("inf")
        return out

    monkeypatch.setattr(VanillaTransformerForConditionalGeneration, "forward", forward)
    with pytest.raises(NonFiniteTrainingError, match=r"The training loss is (inf|nan) at step 3"):
        main([*TINY, "--output_dir", str(tmp_path / "run"), "--max_steps", "6", "--save_steps", "2",
              "--eval_steps", "1000", "--skip_test"])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_loss_that_ends_above_its_start_is_recorded_and_not_published(tmp_path, monkeypatch):
    import huggingface_hub

    from hf_vanilla_transformer_training.train import loss_rise

    assert loss_rise([{"loss": 5.0}, {"loss": 4.0}, {"loss": 131.0}]) == {"first_loss": 5.0, "last_loss": 131.0}
    assert loss_rise([{"loss": 5.0}, {"loss": 9.0}, {"loss": 4.0}]) is None
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append("create"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda self, *a, **k: calls.append("commit"))
    monkeypatch.setattr(huggingface_hub.ModelCard, "validate", lambda self, *a, **k: None)
    out = tmp_path / "run"
    # A learning rate that makes the loss rise without overflowing: warm-up 1 at 30x the paper's peak.
    with pytest.raises(SystemExit, match=r"Not published: the training loss ended far above where it started"):
        main([*TINY, "--output_dir", str(out), "--warmup_steps", "1", "--lr_scale", "30", "--max_steps", "6",
              "--save_steps", "6", "--eval_steps", "1000", "--average_last", "1", "--max_predict_samples", "3",
              "--push_to_hub", "--hub_model_id", "me/tiny"])  # fmt: skip
    assert calls == []
    results = json.loads((out / "results.json").read_text())
    assert results["loss_rise"]["last_loss"] > results["loss_rise"]["first_loss"]


def test_a_full_disk_during_a_checkpoint_is_named_and_keeps_the_complete_checkpoints(tmp_path):
    """torch.save reports a full disk as RuntimeError('... unexpected pos ...'), which the OSError handler missed.
    A file-size limit makes the writes of checkpoint-4's optimizer state fail as a full disk would."""
    import resource
    import signal

    out = tmp_path / "run"
    common = [*TINY, "--output_dir", str(out), "--save_steps", "2", "--eval_steps", "1000", "--skip_test",
              "--average_last", "5"]  # fmt: skip
    main([*common, "--max_steps", "2"])
    optimizer_size = (out / "checkpoint-2" / "optimizer.pt").stat().st_size
    model_size = (out / "checkpoint-2" / "model.safetensors").stat().st_size
    assert model_size < optimizer_size * 0.75
    published = (out / "model" / "model.safetensors").read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (optimizer_size * 3 // 4, optimizer_size * 3 // 4))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_vanilla_transformer_training.train", *common, "--max_steps", "4",
         "--resume_from_checkpoint", "last"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, preexec_fn=limit,
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(r"\[train\] stopped: .*Saving checkpoint-4 in .* failed \(.*\); is the disk full\? The complete "
                     r"checkpoints \['checkpoint-2'\] are intact", result.stderr), result.stderr[-2000:]  # fmt: skip
    assert "Traceback" not in result.stderr
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "model" / "model.safetensors").read_bytes() == published  # the first run's model is not replaced


def test_a_missing_empty_or_truncated_tokenizer_folder_is_named_before_any_data(tmp_path, no_data_work):
    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    good = tmp_path / "tokenizer"
    train_bpe_tokenizer(["one two three", "eins zwei drei"] * 20, vocab_size=40).save_pretrained(good)
    truncated, without_json = tmp_path / "truncated", tmp_path / "without_json"
    shutil.copytree(good, truncated)
    text = (good / "tokenizer.json").read_text()
    (truncated / "tokenizer.json").write_text(text[: len(text) // 2])
    shutil.copytree(good, without_json)
    (without_json / "tokenizer.json").unlink()
    model_without_tokenizer = tmp_path / "model"
    tiny_model = VanillaTransformerForConditionalGeneration(initial_config(parse_args([*TINY, "--output_dir", "x"])))
    model_without_tokenizer.mkdir()
    tiny_model.config.save_pretrained(model_without_tokenizer)
    cases = [
        (["--tokenizer_name", str(tmp_path / "missing")], r"--tokenizer_name .*missing: no such folder"),
        (["--tokenizer_name", str(truncated)], r"tokenizer.json is damaged or truncated \(Unterminated|Expecting"),
        (["--tokenizer_name", str(without_json)], r"holds no tokenizer .*it has \['tokenizer_config.json'\]"),
        (["--model_name_or_path", str(model_without_tokenizer)], r"--model_name_or_path .*model holds no tokenizer"),
    ]
    for arguments, message in cases:
        base = [] if "--model_name_or_path" in arguments else [a for a in TINY if a not in ("--vocab_size", "200")]
        with pytest.raises(SystemExit, match=message):
            main(["--output_dir", str(tmp_path / "run"), *base, *arguments])


def test_data_files_with_a_byte_order_mark_or_invalid_utf8(tmp_path):
    """A BOM is not part of the first sentence (the text loader kept it: '\\ufeffone'); invalid UTF-8 is named by
    line and column (datasets reports a position inside the chunk it was reading)."""
    from hf_vanilla_transformer_training.data import read_local_split

    sources = "".join(f"one {i}\n" for i in range(100)).encode()
    targets = "".join(f"eins {i}\n" for i in range(100)).encode()
    (tmp_path / "src.txt").write_bytes(b"\xef\xbb\xbf" + sources)
    (tmp_path / "tgt.txt").write_bytes(b"\xef\xbb\xbf" + targets)
    rows = read_local_split(f"{tmp_path / 'src.txt'},{tmp_path / 'tgt.txt'}", "en", "de")
    assert rows[0]["translation"] == {"en": "one 0", "de": "eins 0"} and len(rows) == 100
    lines = [json.dumps({"translation": {"en": f"one {i}", "de": f"eins {i}"}}).encode() for i in range(100)]
    lines[60] = lines[60].replace(b"eins", b"ei\xffns")
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"bad.jsonl is not UTF-8 text: line 61, column \d+ has the byte 0xff"):
        read_local_split(str(tmp_path / "bad.jsonl"), "en", "de")
    (tmp_path / "bad.txt").write_bytes(sources.replace(b"one 7\n", b"one \xfe7\n"))
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 text: line 8, column 5 has the byte 0xfe"):
        read_local_split(f"{tmp_path / 'bad.txt'},{tmp_path / 'tgt.txt'}", "en", "de")


@pytest.mark.parametrize("scheduler", ["linear", "constant_with_warmup"])
def test_no_warm_up_runs_with_another_schedule_and_a_given_learning_rate(tmp_path, scheduler):
    """--warmup_steps 0 raised ZeroDivisionError: a post-LN run without warm-up (Xiong et al.'s question) could not
    even start. With another scheduler and a --learning_rate it runs, at the given rate from step 1."""
    out = tmp_path / "run"
    main([*TINY, "--output_dir", str(out), "--warmup_steps", "0", "--lr_scheduler_type", scheduler,
          "--learning_rate", "0.001", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "1000", "--skip_test"])  # fmt: skip
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    rates = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert rates[0] == pytest.approx(0.001 * 4)  # TINY's --lr_scale 4 multiplies a given rate too


def test_a_learning_rate_of_zero_is_kept_not_replaced_by_the_formula(tmp_path, no_data_work):
    run = parse_args([*TINY, "--output_dir", str(tmp_path), "--learning_rate", "0"])
    assert run.training.learning_rate == 0.0
    assert peak_learning_rate(run.training.learning_rate, 32, 4, 4.0) == 0.0
    assert peak_learning_rate(None, 32, 4, 1.0) == pytest.approx(32**-0.5 * 4**-0.5)


@pytest.mark.parametrize("field", ["scale_embedding", "label_smoothing", "norm_first"])
def test_resuming_with_a_changed_training_field_is_refused_naming_it(tmp_path, field):
    """Resuming with a changed scale_embedding or label_smoothing continued silently, and the published config then
    disagreed with the averaged weights."""
    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer
    from hf_vanilla_transformer_training.train import check_checkpoint_matches

    tokenizer = train_bpe_tokenizer(["one two three", "eins zwei drei"] * 20, vocab_size=40)
    config = initial_config(parse_args([*TINY, "--output_dir", "x"]))
    VanillaTransformerForConditionalGeneration(config).save_pretrained(tmp_path / "checkpoint-2")
    tokenizer.save_pretrained(tmp_path / "checkpoint-2")
    check_checkpoint_matches(tmp_path / "checkpoint-2", config, tokenizer)  # the same run: accepted
    changed = {"scale_embedding": False, "label_smoothing": 0.2, "norm_first": True}[field]
    other = config.__class__(**{**config.to_dict(), field: changed})
    with pytest.raises(SystemExit, match=rf"its config has {field}=.* but this run's arguments give {field}={changed}"):
        check_checkpoint_matches(tmp_path / "checkpoint-2", other, tokenizer)
