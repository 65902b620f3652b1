"""Hub-ready folders: the model card renders and validates, the upload checks stop on anything missing, and a
folder translates in a fresh virtual environment that has torch and transformers but not this package."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import generate_without_this_package

from hf_vanilla_transformer import translate
from hf_vanilla_transformer_training.model_card import check_card, preset_card
from hf_vanilla_transformer_training.push_to_hub import REQUIRED, check_model_folder
from hf_vanilla_transformer_training.push_to_hub import main as push_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """The model folder of a tiny run of training/train.py (weights, code, tokenizer, card, pictures)."""
    out = tmp_path_factory.mktemp("run")
    command = [sys.executable, "-m", "hf_vanilla_transformer_training.train", "--output_dir", str(out), "--preset", "tiny",
               "--vocab_size", "200", "--demo_pairs", "1400", "--max_tokens", "800", "--warmup_steps", "4",
               "--lr_scale", "4", "--disable_tqdm", "true", "--max_steps", "6", "--save_steps", "2", "--eval_steps", "3",
               "--max_eval_samples", "20", "--average_last", "2", "--max_predict_samples", "30"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the installed packages (pip install -e .), not the folders
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model"


def metadata(path: Path) -> dict:
    text = path.read_text()
    return yaml.safe_load(text.split("---")[1])


def test_the_demo_card_has_real_numbers_pictures_and_valid_metadata(model_folder):
    card = check_card(model_folder / "README.md")
    data = metadata(model_folder / "README.md")
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "translation"
    assert data["language"] == ["en", "de"] and data["license"] == "apache-2.0"
    results = json.loads((model_folder / "results.json").read_text())["test"]
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {k: round(results[k], 2) for k in ("bleu", "chrf", "exact_match")}
    for picture in ("learning_curve.png", "attention_encoder.png", "attention_cross.png"):
        assert f"]({picture})" in card.text and (model_folder / picture).stat().st_size > 5000
        assert (model_folder / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trust_remote_code=True" in card.text and "Deviations from the paper" in card.text
    assert "a size that is no Table 3 row" in card.text  # the tiny model is named as a deviation


@pytest.mark.parametrize("preset", ["base", "big"])
def test_the_kept_preset_cards_are_current_and_valid(preset, tmp_path):
    kept = ROOT / "model_cards" / f"{preset}.md"
    check_card(kept)
    preset_card(preset).save(tmp_path / "card.md")
    assert (tmp_path / "card.md").read_text() == kept.read_text(), (
        "regenerate with python -m hf_vanilla_transformer_training.model_card"
    )
    assert "Untrained" in kept.read_text() and "model-index" not in metadata(kept)


def test_a_card_without_required_metadata_fails(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A card\n")
    with pytest.raises(ValueError, match=r"lacks metadata: library_name, pipeline_tag, language, tags"):
        check_card(tmp_path / "README.md")


def test_dry_run_lists_every_file_and_its_size(model_folder, capsys):
    push_main([str(model_folder), "--repo_id", "someone/demo", "--dry_run"])
    out = capsys.readouterr().out
    for name in [*REQUIRED, "learning_curve.png", "attention_encoder.png", "attention_cross.png"]:
        size = (model_folder / name).stat().st_size
        assert f"{name}" in out and f"{size:,} bytes" in out, name
    assert "Would upload" in out


@pytest.mark.parametrize("missing", list(REQUIRED))
def test_each_missing_file_stops_the_upload_before_any_network_call(model_folder, tmp_path, missing, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / missing).unlink()
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was called")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", no_network)
    with pytest.raises(SystemExit, match=f"Not uploaded: .*lacks: {missing}"):
        push_main([str(folder), "--repo_id", "someone/demo"])
    with pytest.raises(ValueError, match=missing):
        check_model_folder(folder)


def test_an_invalid_card_or_auto_map_stops_the_upload(model_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    card = (folder / "README.md").read_text().replace("pipeline_tag: translation\n", "")
    (folder / "README.md").write_text(card)
    with pytest.raises(ValueError, match="lacks metadata: pipeline_tag"):
        check_model_folder(folder)
    shutil.copy(model_folder / "README.md", folder / "README.md")
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]["AutoModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no auto_map entry for AutoModel"):
        check_model_folder(folder)


@pytest.mark.parametrize("recorded", [None, "0.2.0"])
def test_a_folder_saved_before_the_cache_fix_is_not_published_and_warns_when_loaded(
    model_folder, tmp_path, recorded, caplog
):
    """Folders saved before 0.3.0 carry code that decodes without the cache's history under transformers >= 5.24
    (as remote code); loading one with the package works (the package's code) but says how to refresh it, and the
    upload refuses it until it is saved again."""
    from transformers import AutoModelForSeq2SeqLM

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["vanilla_transformer_version"] == "0.3.0"
    if recorded is None:
        del config["vanilla_transformer_version"]
    else:
        config["vanilla_transformer_version"] = recorded
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"saved by hf_vanilla_transformer (before 0\.3\.0|0\.2\.0), whose code files"):
        check_model_folder(folder)
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer"):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    messages = [record.getMessage() for record in caplog.records]
    assert any("decode wrongly with transformers >= 5.24" in m and "save_pretrained" in m for m in messages), messages
    model.save_pretrained(folder)  # the refresh the message asks for
    assert json.loads((folder / "config.json").read_text())["vanilla_transformer_version"] == "0.3.0"
    check_model_folder(folder, online=False)


def recorded_upload(monkeypatch) -> list:
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda self, **kw: calls.append(kw))
    monkeypatch.setattr(huggingface_hub.ModelCard, "validate", lambda self, *a, **k: None)  # the Hub's own check
    return calls


def test_the_upload_sends_exactly_the_listed_files_by_name(model_folder, tmp_path, monkeypatch, capsys):
    """upload_folder's allow_patterns are globs: `*.md` also sent sub2/NOTES.md, `weird[1].json` was listed but not
    sent. The dry run's list and the upload's operations must be the same files."""
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / "weird[1].json").write_text("{}")
    (folder / "special_tokens_map.json").write_text("{}")  # transformers' tokenizer files are not credentials
    (folder / "added_tokens.json").write_text("{}")
    (folder / "*.md").write_text("a file named *.md")
    (folder / "sub2").mkdir()
    (folder / "sub2" / "NOTES.md").write_text("not part of the model")
    push_main([str(folder), "--repo_id", "someone/demo", "--dry_run"])
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    calls = recorded_upload(monkeypatch)
    push_main([str(folder), "--repo_id", "someone/demo"])
    sent = {op.path_in_repo: Path(op.path_or_fileobj) for op in calls[0]["operations"]}
    assert set(sent) == listed
    assert {"weird[1].json", "*.md", "model.safetensors", "special_tokens_map.json", "added_tokens.json"} <= listed
    assert "NOTES.md" not in " ".join(sent) and all(path == folder / name for name, path in sent.items())


UNSAFE = {
    "hf_token.txt": ("hf_0123456789abcdefghijklmnopqrstuv\n", "its name says it holds credentials"),
    "credentials.json": ("{}", "its name says it holds credentials"),
    ".secret.json": ("{}", "a hidden file"),
    "notes.txt": ("my token: hf_0123456789abcdefghijklmnopqrstuv", r"it contains a Hugging Face token"),
    "cached_token.txt": (None, r"a symbolic link to .*token"),
    "passwd.txt": (Path("/etc/passwd"), r"a symbolic link to /etc/passwd"),
}


@pytest.mark.parametrize("name", UNSAFE)
def test_credentials_and_symlinks_are_never_uploaded(model_folder, tmp_path, monkeypatch, name):
    content, reason = UNSAFE[name]
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    if content is None:  # a link to the user's cached Hub token
        token = tmp_path / "home" / ".cache" / "huggingface" / "token"
        token.parent.mkdir(parents=True)
        token.write_text("hf_0123456789abcdefghijklmnopqrstuv")
        (folder / name).symlink_to(token)
    elif isinstance(content, Path):
        (folder / name).symlink_to(content)
    else:
        (folder / name).write_text(content)
    calls = recorded_upload(monkeypatch)
    with pytest.raises(SystemExit, match=rf"holds files that are never uploaded: {re.escape(name)} \({reason}"):
        push_main([str(folder), "--repo_id", "someone/demo"])
    assert calls == []
    push_main([str(folder), "--repo_id", "someone/demo", "--skip_unsafe"])
    sent = {op.path_in_repo for op in calls[0]["operations"]}
    assert name not in sent and "model.safetensors" in sent and "tokenizer.json" in sent


def test_a_symlinked_required_file_is_refused_not_followed(model_folder, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / "config.json").rename(tmp_path / "config.json")
    (folder / "config.json").symlink_to(tmp_path / "config.json")
    recorded_upload(monkeypatch)
    with pytest.raises(SystemExit, match=r"config.json \(a symbolic link to "):
        push_main([str(folder), "--repo_id", "someone/demo"])
    with pytest.raises(SystemExit, match=r"lacks: config.json"):
        push_main([str(folder), "--repo_id", "someone/demo", "--skip_unsafe"])


@pytest.mark.slow
def test_a_fresh_virtualenv_without_the_package_translates_the_same(model_folder, tmp_path):
    """A new venv without this package (conftest.python_without_this_package)."""
    lines = ["Friday, August 26, 1955", "seven thousand, nine hundred and sixty-one", "Aug 3, 2001", "twelve"]
    ids = generate_without_this_package(tmp_path, model_folder, lines)

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    outside = tokenizer.batch_decode(ids, skip_special_tokens=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder)
    assert translate(model, tokenizer, lines, progress=False) == outside


def test_translate_command_reads_stdin_and_keeps_order(model_folder, tmp_path):
    lines = ["Aug 3, 2001", "", "twelve", "Friday, August 26, 1955"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # the console command a user runs, which must print no warning (a deprecation, a FutureWarning) on stderr
    command = [
        str(Path(sys.executable).parent / "vanilla-transformer-translate"),
        str(model_folder),
        "--batch_tokens",
        "8",
    ]
    with open(tmp_path / "in.txt") as stdin:
        result = subprocess.run(command, stdin=stdin, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr and "deprecat" not in result.stderr.lower(), result.stderr[-3000:]
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    expected = []
    for line in lines:  # one at a time: batching must not change a translation
        expected.append(translate(model, tokenizer, [line], progress=False)[0])
    assert result.stdout.splitlines() == expected and expected[1] == ""


# ---- translate: bad input and output (issue 15) ---------------------------------------------------------------
def translate_main(folder, arguments, stdin: bytes = b"", monkeypatch=None):
    import io

    from hf_vanilla_transformer.translation import main as translate_command

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    translate_command([str(folder), *arguments])


def test_translate_refuses_invalid_utf8_naming_the_line_and_keeps_a_byte_order_mark_out(
    model_folder, tmp_path, monkeypatch, capsys
):
    bad = b"twelve\nAug 3, 2001\nsieben \xff und\n"
    with pytest.raises(SystemExit, match=r"standard input is not UTF-8 text: line 3, column 8 has the byte 0xff"):
        translate_main(model_folder, [], bad, monkeypatch)
    (tmp_path / "bad.txt").write_bytes(bad)
    with pytest.raises(SystemExit, match=r"bad.txt is not UTF-8 text: line 3, column 8"):
        translate_main(model_folder, ["--input", str(tmp_path / "bad.txt")], b"", monkeypatch)
    translate_main(model_folder, ["--num_beams", "1"], "\ufefftwelve\n".encode(), monkeypatch)
    with_bom = capsys.readouterr().out
    translate_main(model_folder, ["--num_beams", "1"], b"twelve\n", monkeypatch)
    assert with_bom == capsys.readouterr().out and with_bom.count("\n") == 1


def test_translate_refuses_an_overlong_line_before_decoding(model_folder, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    def no_decoding(*args, **kwargs):
        raise AssertionError("generate was called")

    monkeypatch.setattr(AutoModelForSeq2SeqLM.from_pretrained(model_folder).__class__, "generate", no_decoding)
    lines = b"twelve\n" + b"seven " * 3000 + b"\nAug 3, 2001\n"
    with pytest.raises(SystemExit, match=r"1 line\(s\) are longer than max_source_tokens=1024: line 2 \(\d+ tokens\)"):
        translate_main(model_folder, [], lines, monkeypatch)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder)
    with pytest.raises(ValueError, match=r"line 1 \(\d+ tokens\)"):
        translate(model, AutoTokenizer.from_pretrained(model_folder), ["seven " * 20], max_source_tokens=10)


def test_translate_checks_its_output_before_decoding_and_never_half_writes_it(model_folder, tmp_path, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM

    model_class = AutoModelForSeq2SeqLM.from_pretrained(model_folder).__class__
    real_generate = model_class.generate
    calls = []
    monkeypatch.setattr(model_class, "generate", lambda self, *a, **k: calls.append(1) or real_generate(self, *a, **k))
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        for output, message in [
            (readonly / "out.txt", r"cannot be written \(permission denied\)"),
            (tmp_path / "missing" / "out.txt", r"the folder .*missing does not exist"),
            (tmp_path, r"is a folder"),
        ]:
            if os.geteuid() == 0 and output.parent == readonly:
                continue  # root writes anywhere
            with pytest.raises(SystemExit, match=message):
                translate_main(model_folder, ["--output", str(output)], b"twelve\n", monkeypatch)
    finally:
        readonly.chmod(0o755)
    assert calls == []
    # A failure while decoding leaves the earlier output file as it was.
    earlier = tmp_path / "out.txt"
    earlier.write_text("the translations of yesterday\n")
    monkeypatch.setattr(model_class, "generate", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        translate_main(model_folder, ["--output", str(earlier)], b"twelve\n", monkeypatch)
    assert earlier.read_text() == "the translations of yesterday\n" and sorted(tmp_path.glob(".out.txt*")) == []
    monkeypatch.setattr(model_class, "generate", real_generate)
    translate_main(model_folder, ["--output", str(earlier), "--num_beams", "1"], b"twelve\nAug 3, 2001\n", monkeypatch)
    assert len(earlier.read_text().splitlines()) == 2


@pytest.mark.parametrize("beams", ["0", "-3"])
def test_translate_refuses_a_beam_count_below_one(model_folder, monkeypatch, beams):
    with pytest.raises(SystemExit, match=rf"num_beams={beams} is invalid: expected an integer >= 1"):
        translate_main(model_folder, ["--num_beams", beams], b"twelve\n", monkeypatch)


def test_a_write_that_fails_part_way_leaves_the_earlier_output_file(model_folder, tmp_path):
    """The output is written to a temporary file and renamed over the old one: a full disk (here a file-size limit)
    while writing leaves the earlier translations, not a truncated file."""
    import resource
    import signal

    earlier = tmp_path / "out.txt"
    earlier.write_text("the translations of yesterday\n")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    command = [sys.executable, "-m", "hf_vanilla_transformer.translation", str(model_folder), "--output", str(earlier),
               "--num_beams", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, input="twelve\n" * 400, env=env, capture_output=True, text=True,
                            timeout=300, preexec_fn=limit)  # fmt: skip
    assert result.returncode != 0 and re.search(
        r"writing .*out.txt failed \(.*File too large.*\); it was left as it was", result.stderr
    )
    assert "Traceback" not in result.stderr
    assert earlier.read_text() == "the translations of yesterday\n" and sorted(tmp_path.glob(".out.txt*")) == []


def test_translate_writes_through_a_symbolic_link(model_folder, tmp_path, monkeypatch):
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    (tmp_path / "out.txt").symlink_to(real)
    translate_main(model_folder, ["--output", str(tmp_path / "out.txt"), "--num_beams", "1"], b"twelve\n", monkeypatch)
    assert (
        (tmp_path / "out.txt").is_symlink() and real.read_text() != "old\n" and len(real.read_text().splitlines()) == 1
    )


def test_translate_int8_decodes_with_int8_linear_layers_on_cpu_only(model_folder, monkeypatch, capsys):
    """--int8: every linear layer of the model that decodes is torch's dynamic int8 one (none packed), one output line
    per input line; with a GPU device it is refused before anything is loaded."""
    from hf_vanilla_transformer import translation

    used = []
    real_translate = translation.translate

    def spy(model, *args, **kwargs):
        used.append(model)
        return real_translate(model, *args, **kwargs)

    monkeypatch.setattr(translation, "translate", spy)
    translate_main(model_folder, ["--int8", "--num_beams", "1"], b"twelve\nAug 3, 2001\n", monkeypatch)
    assert len(capsys.readouterr().out.splitlines()) == 2
    import torch

    from hf_vanilla_transformer.cpu_decoding import PackedLinear

    modules = list(used[0].modules())
    assert any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in modules)
    assert not any(type(module) in (torch.nn.Linear, PackedLinear) for module in modules)
    with pytest.raises(SystemExit, match=r"--int8 runs on CPU only, but --device is 'cuda'"):
        translate_main(model_folder, ["--int8", "--device", "cuda"], b"twelve\n", monkeypatch)
