"""Bad inputs, numerics and damaged files: a clear error or a right answer, never wrong output."""

import json

import pytest
import torch
from conftest import random_batch, tiny_config, tiny_model
from huggingface_hub.errors import StrictDataclassError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration


# ---- inputs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_row_that_is_all_padding_gives_no_nan_and_leaves_the_others_alone(implementation):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration._from_config(tiny_config(), attn_implementation=implementation)
    model.eval()
    ids, mask, labels = random_batch(batch=3)
    mask[1] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        alone = model(input_ids=ids[:1, : int(mask[0].sum())], labels=labels[:1])
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits[0], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model.generate(ids, attention_mask=mask, max_new_tokens=4).float()).all()


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \(0, 5\)\)"):
        tiny_model()(
            input_ids=torch.zeros(0, 5, dtype=torch.long), decoder_input_ids=torch.ones(0, 1, dtype=torch.long)
        )


def test_a_4096_token_input_works():
    model = tiny_model()
    with torch.no_grad():
        out = model(input_ids=torch.randint(4, 128, (1, 4096)), decoder_input_ids=torch.tensor([[1, 7]]))
    assert torch.isfinite(out.logits).all()


def test_generate_refuses_out_of_vocabulary_decoder_prompts():
    with pytest.raises(ValueError, match=r"decoder_input_ids contains token id 300"):
        tiny_model().generate(torch.tensor([[5, 6]]), decoder_input_ids=torch.tensor([[1, 300]]), max_new_tokens=2)


# ---- numerics ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_half_precision_forward_and_generate_stay_finite(dtype, implementation):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration._from_config(tiny_config(), attn_implementation=implementation)
    model = model.to(dtype).eval()
    ids, mask, labels = random_batch(batch=3, source=12)
    mask[2, 1:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        reference = model.float()(input_ids=ids, attention_mask=mask, labels=labels)
        model.to(dtype)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert (out.logits.float() - reference.logits).abs().max() < 0.1  # half precision, not a different answer
    generated = model.generate(ids, attention_mask=mask, num_beams=4, max_new_tokens=6)
    assert generated.shape[0] == 3


def test_generation_and_training_steps_are_deterministic_on_cpu():
    ids, mask, labels = random_batch()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = tiny_model(seed=7).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
        losses = []
        for _ in range(3):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        torch.manual_seed(5)
        sampled = model.eval().generate(ids, attention_mask=mask, do_sample=True, num_beams=1, max_new_tokens=5)
        runs.append((losses, sampled, model.generate(ids, attention_mask=mask, max_new_tokens=5)))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])


# ---- files ---------------------------------------------------------------------------------------------------
def saved(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    return tmp_path


def test_a_checkpoint_missing_tensors_fails_naming_them(tmp_path):
    folder = saved(tmp_path)
    state = load_file(folder / "model.safetensors")
    del (
        state["model.decoder.layers.1.ffn.fc2.weight"],
        state["model.encoder.layers.0.self_attn_residual.layer_norm.bias"],
    )
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 2 of the model's tensors: model.decoder.layers.1.ffn.fc2.weight, "
                       r"model.encoder.layers.0.self_attn_residual.layer_norm.bias"):  # fmt: skip
        AutoModelForSeq2SeqLM.from_pretrained(folder)
    model = VanillaTransformerForConditionalGeneration.from_pretrained(folder, allow_missing_weights=True)
    assert model.model.decoder.layers[1].ffn.fc2.weight.shape == (32, 64)


def test_a_checkpoint_without_the_shared_embedding_fails_naming_it(tmp_path):
    # The three-way tie is by parameter: the one stored matrix missing must not load as an uninitialised one.
    folder = saved(tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["model.encoder.embeddings.embed_tokens.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"lacks 3 of the model's tensors: .*model.encoder.embeddings.embed_tokens.weight"
    ):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)


def test_a_checkpoint_with_mismatched_shapes_fails_naming_them(tmp_path):
    folder = saved(tmp_path)
    state = load_file(folder / "model.safetensors")
    state["model.encoder.layers.0.ffn.fc1.bias"] = torch.zeros(65)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"other shapes .*fc1.bias \(checkpoint \(65,\), model \(64,\)\)"):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_truncated_or_corrupted_weights_file_fails_clearly(tmp_path, damage):
    folder = saved(tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"\xff" * 64 + data[72:])
    with pytest.raises((OSError, ValueError), match=r"(?i)truncated|corrupt|safetensors|header|deserializ"):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)


def test_an_edited_config_with_an_invalid_value_fails_with_the_configs_error(tmp_path):
    folder = saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["h"] = 5  # does not divide d_model=32, and d_k is stored: a shape mismatch, caught by the check
    config["dropout"] = 1.5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StrictDataclassError, match=r"dropout=1.5 is invalid"):
        AutoModelForSeq2SeqLM.from_pretrained(folder)


# ---- properties ----------------------------------------------------------------------------------------------
@st.composite
def cases(draw):
    h = draw(st.sampled_from([1, 2, 4]))
    d_k = draw(st.sampled_from([2, 4, 8]))
    config = VanillaTransformerConfig(
        vocab_size=40, d_model=h * d_k, d_ff=draw(st.sampled_from([8, 16])), h=h,
        d_v=draw(st.sampled_from([2, 4, 8])), encoder_layers=draw(st.integers(1, 2)),
        decoder_layers=draw(st.integers(1, 2)), dropout=0.0, norm_first=draw(st.booleans()),
    )  # fmt: skip
    batch = draw(st.integers(1, 3))
    source_lengths = draw(st.lists(st.integers(1, 7), min_size=batch, max_size=batch))
    target_length = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    return config, source_lengths, target_length, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_properties_shapes_cache_parity_padding_invariance_no_nan(case):
    config, source_lengths, target_length, seed = case
    torch.manual_seed(seed)
    model = VanillaTransformerForConditionalGeneration(config).eval()
    batch, longest = len(source_lengths), max(source_lengths)
    ids = torch.randint(4, 40, (batch, longest))
    mask = (torch.arange(longest)[None, :] < torch.tensor(source_lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    decoder_ids = torch.cat(
        [torch.ones(batch, 1, dtype=torch.long), torch.randint(4, 40, (batch, target_length - 1))], 1
    )
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        assert full.logits.shape == (batch, target_length, 40) and torch.isfinite(full.logits).all()
        assert full.encoder_last_hidden_state.shape == (batch, longest, config.d_model)
        # cache parity: one token at a time equals the full forward
        cache, steps = None, []
        for t in range(target_length):
            out = model(encoder_outputs=(full.encoder_last_hidden_state,), attention_mask=mask,
                        decoder_input_ids=decoder_ids[:, t : t + 1], past_key_values=cache, use_cache=True)  # fmt: skip
            cache = out.past_key_values
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=1e-5, rtol=1e-5)
        # padding invariance: each sentence alone equals its row of the padded batch
        for i, n in enumerate(source_lengths):
            alone = model(input_ids=ids[i : i + 1, :n], decoder_input_ids=decoder_ids[i : i + 1])
            torch.testing.assert_close(alone.logits[0], full.logits[i], atol=1e-5, rtol=1e-5)
        # half precision stays finite
        half = model.to(torch.bfloat16)(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        assert torch.isfinite(half.logits.float()).all()


# ---- second round (issue 15): contained items -----------------------------------------------------------------
def test_translate_splits_lines_at_newlines_only():
    """U+2028, U+0085 and form feeds inside a sentence must not split it (str.splitlines would: 4 input lines
    became 7 output lines); a final newline ends the last line, CRLF ends a line too."""
    from hf_vanilla_transformer.translation import split_lines

    text = "one\u2028two\nthree\x0cfour\nfive\x85six\r\nseven\n"
    assert split_lines(text) == ["one\u2028two", "three\x0cfour", "five\x85six", "seven"]
    assert split_lines("a\n\nb") == ["a", "", "b"] and split_lines("") == []


def test_attention_maps_runs_no_folder_code_unless_asked(tmp_path):
    """A model folder's code file must not run unasked (it was loaded with trust_remote_code=True hard-coded); with
    --trust_remote_code it does (which shows the planted file would be noticed)."""
    import subprocess
    from pathlib import Path

    from conftest import python_without_this_package

    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["one two three four", "eins zwei drei vier"] * 50, vocab_size=40)
    folder = tmp_path / "model"
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker = tmp_path / "ran"
    (folder / "configuration_vanilla_transformer.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    python, env = python_without_this_package(tmp_path)
    script = Path(__file__).resolve().parent.parent / "training" / "attention_maps.py"
    command = [python, str(script), str(folder), "one two", "--out_dir", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, input="", timeout=120)
    assert result.returncode != 0 and "trust_remote_code" in result.stderr and not marker.exists()
    subprocess.run([*command, "--trust_remote_code"], env=env, capture_output=True, text=True, timeout=120)
    assert marker.exists()


def test_averaging_refuses_a_checkpoint_as_target_and_checkpoints_of_other_models(tmp_path):
    from hf_vanilla_transformer_training.average_checkpoints import average_checkpoints

    a, b, c = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4", tmp_path / "checkpoint-6"
    tiny_model(seed=0).save_pretrained(a)
    tiny_model(seed=1).save_pretrained(b)
    tiny_model(seed=2, d_ff=32).save_pretrained(c)
    (b / "trainer_state.json").write_text("{}")
    (b / "optimizer.pt").write_bytes(b"")
    before = (b / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"--into .*checkpoint-4 is one of the checkpoints being averaged"):
        average_checkpoints([a, b], into=b)
    with pytest.raises(ValueError, match=r"--into .*checkpoint-4 is a training checkpoint"):
        average_checkpoints([a], into=b)
    assert (b / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match=r"checkpoint-6 has d_ff=32 but .*checkpoint-2 has d_ff=64"):
        average_checkpoints([a, c], into=tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()


@pytest.mark.parametrize("arguments", [["--max_steps", "0"], ["--num_train_epochs", "0"]])
def test_a_run_of_no_steps_is_refused(tmp_path, arguments):
    from hf_vanilla_transformer_training.train import main

    with pytest.raises(SystemExit, match=r"nothing to train"):
        main(["--output_dir", str(tmp_path / "run"), "--preset", "tiny", *arguments])
