"""save_pretrained / from_pretrained, the tied matrix stored once, and the trust_remote_code path."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import random_batch, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSeq2SeqLM

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, VanillaTransformerModel


def test_save_then_load_gives_identical_outputs_and_stores_the_tied_matrix_once(tmp_path):
    model = tiny_model(seed=4)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    vocabulary_matrices = [k for k in keys if "embed_tokens" in k or "lm_head" in k]
    assert vocabulary_matrices == ["model.encoder.embeddings.embed_tokens.weight"]
    assert os.path.getsize(tmp_path / "model.safetensors") < 1.5 * 4 * sum(p.numel() for p in model.parameters())

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is VanillaTransformerForConditionalGeneration
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    ids, mask, labels = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask, labels=labels).logits,
            model(input_ids=ids, attention_mask=mask, labels=labels).logits,
            rtol=0,
            atol=0,
        )
    assert torch.equal(loaded.generate(ids, attention_mask=mask), model.generate(ids, attention_mask=mask))
    assert loaded.generation_config.length_penalty_type == "gnmt"
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is VanillaTransformerModel


def test_saved_folder_has_code_and_auto_map(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    names = set(os.listdir(tmp_path))
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "modeling_vanilla_transformer.py",
        "configuration_vanilla_transformer.py",
        "generation_vanilla_transformer.py",  # imported by the modeling file: remote code needs all five
        "loss_vanilla_transformer.py",
        "compatibility_vanilla_transformer.py",
    } <= names
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_vanilla_transformer.VanillaTransformerConfig",
        "AutoModel": "modeling_vanilla_transformer.VanillaTransformerModel",
        "AutoModelForSeq2SeqLM": "modeling_vanilla_transformer.VanillaTransformerForConditionalGeneration",
    }


def run_without_the_package(code: str, cwd) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter in which `import hf_vanilla_transformer` fails."""
    prelude = "import sys\nsys.modules['hf_vanilla_transformer'] = None  # importing it now raises ImportError\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules_cache"), "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_remote_code_load_in_a_process_without_the_package(tmp_path):
    model = tiny_model(seed=5)
    folder = tmp_path / "hub_model"
    model.save_pretrained(folder)
    ids, mask, _ = random_batch(batch=2)
    expected = model.generate(ids, attention_mask=mask, num_beams=4, max_new_tokens=10)
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")

    result = run_without_the_package(
        f"""
        import torch
        try:
            import hf_vanilla_transformer
            raise SystemExit("the package must not be importable here")
        except ImportError:
            pass
        from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
        folder = {str(folder)!r}
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        out = model.generate(inputs["ids"], attention_mask=inputs["mask"], num_beams=4, max_new_tokens=10)
        torch.save(out, {str(tmp_path / "out.pt")!r})
        print(type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__)
        print(type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["VanillaTransformerModel", "VanillaTransformerConfig"]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


@pytest.mark.slow
def test_without_trust_remote_code_the_library_refuses(tmp_path):
    folder = tmp_path / "hub_model"
    tiny_model().save_pretrained(folder)
    result = run_without_the_package(
        f"""
        from transformers import AutoModelForSeq2SeqLM
        try:
            AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=False)
        except ValueError as error:
            print("ValueError:", error)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ValueError:" in result.stdout and "trust_remote_code=True" in result.stdout


def test_full_size_base_saves_and_loads(tmp_path):
    from hf_vanilla_transformer import VanillaTransformerConfig

    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(VanillaTransformerConfig.from_preset("base", vocab_size=37000))
    model.save_pretrained(tmp_path)
    size = os.path.getsize(tmp_path / "model.safetensors")
    assert 4 * 63_082_496 <= size < 4 * 63_082_496 + 1_000_000  # fp32, the vocabulary matrix once
    loaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["legacy_tiny", "legacy_tiny_learned_untied"])
def test_folders_saved_with_the_old_module_names_load_and_decode_as_before(name, tmp_path):
    """Folders saved before the rename (w_q, w_1, self_attn_norm, embed_tokens, embed_positions.learned: the demo's)
    load through LEGACY_KEY_MAPPING. The logits and tokens were computed by the old code when the fixture was made."""
    folder = FIXTURES / name
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert any(".w_q." in key for key in f.keys())  # noqa: SIM118 (safe_open has no __iter__); the fixture really has the old names
    expected = load_file(folder / "expected.safetensors")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=expected["decoder_input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
    assert torch.equal(model.generate(**inputs, max_new_tokens=8, num_beams=1, do_sample=False), expected["greedy"])
    # The old code padded finished beams with EOS (transformers' `pad_token_id or eos` for pad id 0); the same tokens
    # up to each sentence's first EOS, then the pad id, as greedy decoding pads.
    beam = expected["beam"].clone()
    is_eos = beam[:, 1:] == model.config.eos_token_id
    beam[:, 1:][(is_eos.long().cumsum(-1) - is_eos.long()) > 0] = model.config.pad_token_id
    assert torch.equal(model.generate(**inputs, max_new_tokens=8, num_beams=4, do_sample=False), beam)
    # Saved again, it has only the new names.
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not [
        key for key in keys if any(old in key for old in (".w_q.", ".w_1.", "_attn_norm.", ".ffn_norm.", ".learned."))
    ], keys


def test_an_explicit_key_mapping_replaces_the_legacy_one(tmp_path):
    folder = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "legacy_tiny", folder)
    with pytest.raises(ValueError, match=r"lacks \d+ of the model's tensors: .*q_proj"):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder, key_mapping={})


def test_a_state_dict_with_the_old_names_loads_through_load_state_dict():
    """The Trainer resumes a checkpoint with model.load_state_dict, not from_pretrained: a 0.1 run must resume."""
    state = load_file(FIXTURES / "legacy_tiny" / "model.safetensors")
    model = VanillaTransformerForConditionalGeneration(
        AutoModelForSeq2SeqLM.from_pretrained(FIXTURES / "legacy_tiny").config
    )
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["lm_head.weight", "model.decoder.embeddings.embed_tokens.weight"]  # tied
    expected = load_file(FIXTURES / "legacy_tiny" / "expected.safetensors")
    with torch.no_grad():
        logits = model.eval()(
            input_ids=expected["input_ids"], attention_mask=expected["attention_mask"],
            decoder_input_ids=expected["decoder_input_ids"],
        ).logits  # fmt: skip
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
