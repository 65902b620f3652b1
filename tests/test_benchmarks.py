"""benchmarks/: every contender holds the same weights as this model, and speed.py runs end to end."""

import json
import math
import sys
from pathlib import Path

import torch
from conftest import random_batch, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import contenders  # noqa: E402
import speed  # noqa: E402


def test_the_marian_twin_computes_the_same_function():
    model = tiny_model(seed=5).eval()
    marian = contenders.marian_twin(model)
    ids, mask, labels = random_batch()
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, labels=labels)
        theirs = marian(input_ids=ids, attention_mask=mask, labels=labels)
    # The only difference: Marian's LayerNorm epsilon is 1e-5, this model's 1e-6.
    torch.testing.assert_close(theirs.logits, ours.logits, atol=1e-4, rtol=1e-4)


def test_ctranslate2_decodes_what_generate_decodes(tmp_path):
    import ctranslate2

    model = tiny_model(seed=6).eval()
    tokens = contenders.export_ctranslate2(model, tmp_path)
    translator = ctranslate2.Translator(str(tmp_path), device="cpu", compute_type="float32")
    ids, _, _ = random_batch(batch=3, source=6)
    ids = ids[:, :6].clamp(min=4)  # no padding: CTranslate2 takes sentences of their own lengths
    ours = model.generate(ids, num_beams=1, max_new_tokens=10, min_new_tokens=10, max_new_tokens_over_source=None)
    results = translator.translate_batch(
        [[tokens[i] for i in row] for row in ids.tolist()], beam_size=1, max_decoding_length=10, min_decoding_length=10
    )
    index = {token: i for i, token in enumerate(tokens)}
    assert [[index[t] for t in result.hypotheses[0]] for result in results] == ours[:, 1:].tolist()


def test_the_speed_script_runs_and_reports_every_contender(tmp_path):
    args = ["--sizes", "tiny", "--rounds", "1", "--train_steps", "1", "--batches", "1", "2", "--new_tokens", "4"]
    result = speed.main([*args, "--step_length", "40", "--dtypes", "fp32", "--output", str(tmp_path)])
    markdown = (tmp_path / "speed.md").read_text()
    for row in (
        "| ours | fp32 |",
        "| marian | fp32 |",
        "| nn.Transformer | fp32 |",
        "| 1 | greedy |",
        "| 2 | beam 4 |",
    ):
        assert row in markdown
    assert "ours / ctranslate2" in markdown
    assert (tmp_path / "speed.png").stat().st_size > 10_000
    ratios = json.loads((tmp_path / "speed.json").read_text())["ratios"]["tiny"]
    assert ratios == result["ratios"]["tiny"]
    expected = {"train fp32 vs marian", "peak memory fp32 vs marian", "greedy vs ctranslate2 (batch 2)"}
    assert expected <= set(ratios) and all(math.isfinite(v) and v > 0 for v in ratios.values())


def test_the_before_contender_is_the_old_code_with_the_same_weights():
    """speed.py --baseline REV imports the package as it was at REV (here the last revision before the module
    renames of issue 10) and loads this model's weights into it: it must compute the same function."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    revision = "432d187"
    if subprocess.run(["git", "-C", str(root), "cat-file", "-e", revision], capture_output=True).returncode != 0:
        import pytest

        pytest.skip(f"revision {revision} is not in this checkout (a shallow clone)")
    model = tiny_model(seed=8).eval()
    before = speed.baseline_model(revision, model)
    assert type(before).__module__.startswith("hf_vanilla_transformer_baseline")
    assert any(".w_q." in name for name in before.state_dict())  # really the old code
    ids, mask, labels = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            before(input_ids=ids, attention_mask=mask, labels=labels).logits,
            model(input_ids=ids, attention_mask=mask, labels=labels).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    kwargs = dict(attention_mask=mask, num_beams=4, max_new_tokens=8)
    assert torch.equal(before.generate(ids, **kwargs), model.generate(ids, **kwargs))
    # The Auto classes still build this package's model (the old package registered its own on import).
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    assert (
        AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model("vanilla_transformer")).__module__
        == type(model).__module__
    )


def test_the_opus_mt_script_runs_and_the_converted_model_agrees(tmp_path):
    import opus_mt

    results = opus_mt.main(["--size", "tiny", "--rounds", "1", "--batches", "2", "--new_tokens", "6",
                            "--output", str(tmp_path)])  # fmt: skip
    assert {row["beams"] for row in results["rows"]} == {1, 4}
    names = set(results["rows"][0]["tokens_per_s"])
    assert {"ours", "marian", "ctranslate2 fp32", "ctranslate2 int8"} <= names
    # the converted model and its fp32 export decode what MarianMTModel decodes
    assert results["agreement"]["marian"] == 1.0 and results["agreement"]["ctranslate2 fp32"] == 1.0
    assert (tmp_path / "opus_mt.md").read_text().startswith("OPUS-MT-shaped tiny model")
