"""Bad inputs, numerics and damaged files: a clear error or a right answer, never wrong output."""

import json
import os
import time

import pytest
import torch
from conftest import random_batch, tiny_config, tiny_model
from huggingface_hub.errors import StrictDataclassError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSeq2SeqLM

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
                        decoder_input_ids=decoder_ids[:, t : t + 1], cache=cache, use_cache=True)  # fmt: skip
            cache = out.cache
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


def test_attention_maps_uses_the_installed_package_without_remote_code(tmp_path):
    """The documented `python -m hf_vanilla_transformer_training.attention_maps MODEL "..."` works where the package
    is installed, without --trust_remote_code, and never runs the folder's code files."""
    import subprocess
    import sys

    from hf_vanilla_transformer_training.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["one two three four", "eins zwei drei vier"] * 50, vocab_size=40)
    folder = tmp_path / "model"
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert "auto_map" in (folder / "config.json").read_text()  # a folder that would ask for remote code
    marker = tmp_path / "ran"
    (folder / "configuration_vanilla_transformer.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    command = [sys.executable, "-m", "hf_vanilla_transformer_training.attention_maps", str(folder), "one two",
               "--out_dir", str(tmp_path / "pictures")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, input="", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["attention_cross.png", "attention_encoder.png"]
    assert not marker.exists()


def test_averaging_keeps_every_model_file_and_drops_the_trainer_state(tmp_path):
    """A fine-tuned OPUS-MT model's checkpoint holds source.spm / target.spm / vocab.json: the average keeps every
    file of the model (it used to copy only .json/.py/.txt/.model, and the tokenizer failed), not the Trainer's."""
    from hf_vanilla_transformer_training.average_checkpoints import average_checkpoints

    a, b = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    tiny_model(seed=0).save_pretrained(a)
    tiny_model(seed=1).save_pretrained(b)
    model_files = {"source.spm": b"spm-a", "target.spm": b"spm-b", "vocab.json": b"{}", "README.md": b"# card"}
    trainer_files = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
    for folder in (a, b):
        for name, content in model_files.items():
            (folder / name).write_bytes(content)
        for name in trainer_files:
            (folder / name).write_bytes(b"{}")
    into = average_checkpoints([a, b], tmp_path / "averaged")
    for name, content in model_files.items():
        assert (into / name).read_bytes() == content, name
    assert not any((into / name).exists() for name in trainer_files)
    assert (into / "config.json").is_file() and (into / "model.safetensors").is_file()


def test_averaging_into_a_folder_with_files_needs_overwrite(tmp_path):
    from hf_vanilla_transformer_training.average_checkpoints import average_checkpoints, main

    a = tmp_path / "checkpoint-2"
    tiny_model(seed=0).save_pretrained(a)
    into = tmp_path / "averaged"
    into.mkdir()
    (into / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--into .*averaged already holds files; pass --overwrite"):
        average_checkpoints([a], into)
    assert sorted(p.name for p in into.iterdir()) == ["notes.txt"]
    with pytest.raises(SystemExit, match=r"already holds files; pass --overwrite"):
        main(["--checkpoints", str(a), "--into", str(into)])
    main(["--checkpoints", str(a), "--into", str(into), "--overwrite"])
    assert (into / "model.safetensors").is_file() and (into / "notes.txt").read_text() == "mine"


def test_averaging_refuses_fewer_checkpoints_than_last_asks_for(tmp_path, capsys):
    from hf_vanilla_transformer_training.average_checkpoints import main

    for step in (2, 4):
        tiny_model(seed=step).save_pretrained(tmp_path / f"checkpoint-{step}")
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"has 2 complete checkpoint\(s\), fewer than --last 30; pass --last 2"):
        main([str(tmp_path), "--last", "30", "--into", str(tmp_path / "averaged")])
    assert not (tmp_path / "averaged").exists()
    main([str(tmp_path), "--last", "2", "--into", str(tmp_path / "averaged")])
    assert "Averaged 2 checkpoints (checkpoint-2, checkpoint-4)" in capsys.readouterr().out


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


# ---- second round (issue 15): inputs that ended in a library traceback or a silent result -------------------
BAD_INPUTS = {
    "int8 ids": (lambda ids, mask, labels: {"input_ids": (ids + 120).to(torch.int8)}, r"dtype torch.int64 .*got torch.int8"),
    "float ids": (lambda ids, mask, labels: {"input_ids": ids.float()}, r"got torch.float32"),
    "bool ids": (lambda ids, mask, labels: {"input_ids": ids.bool()}, r"got torch.bool"),
    "labels of another batch": (
        lambda ids, mask, labels: {"input_ids": ids, "labels": labels[:2]},
        r"labels have batch size 2 but the source has 3",
    ),
    "1-D labels": (lambda ids, mask, labels: {"input_ids": ids, "labels": labels[0]}, r"labels must be .*shape \(7,\)"),
    "inputs_embeds of another width": (
        lambda ids, mask, labels: {"inputs_embeds": torch.randn(3, 9, 17)},
        r"inputs_embeds must be .*d_model=32\) and the model.s dtype torch.float32, got shape \(3, 9, 17\)",
    ),
    "1-D mask": (lambda ids, mask, labels: {"input_ids": ids, "attention_mask": mask[0]}, r"got shape \(9,\)"),
    "3-D mask": (lambda ids, mask, labels: {"input_ids": ids, "attention_mask": mask[:, None]}, r"got shape \(3, 1, 9\)"),
    "4-D mask": (
        lambda ids, mask, labels: {"input_ids": ids, "attention_mask": mask[:, None, None]},
        r"got shape \(3, 1, 1, 9\)",
    ),
    "mask of 2s": (lambda ids, mask, labels: {"input_ids": ids, "attention_mask": mask * 2}, r"attention_mask holds 2;"),
    "mask of 0.5": (
        lambda ids, mask, labels: {"input_ids": ids, "attention_mask": mask * 0.5},
        r"attention_mask holds 0.5;",
    ),
    "decoder mask of 3s": (
        lambda ids, mask, labels: {"input_ids": ids, "decoder_attention_mask": torch.full_like(labels, 3)},
        r"decoder_attention_mask holds 3;",
    ),
    "float64 inputs_embeds": (
        lambda ids, mask, labels: {"inputs_embeds": torch.randn(3, 9, 32, dtype=torch.float64)},
        r"the model's dtype torch.float32, got shape \(3, 9, 32\) and dtype torch.float64",
    ),
    "3-D decoder mask": (
        lambda ids, mask, labels: {"input_ids": ids, "decoder_attention_mask": torch.ones(3, 7, 7)},
        r"decoder_attention_mask must have shape \(batch_size, target_length\) = \(3, 7\).*got shape \(3, 7, 7\)",
    ),
    "labels out of the vocabulary": (
        lambda ids, mask, labels: {"input_ids": ids, "labels": labels.index_fill(1, torch.tensor([2]), 5000)},
        r"labels contain 5000, which is neither a token id",
    ),
    "mask of another length than inputs_embeds": (
        lambda ids, mask, labels: {"inputs_embeds": torch.randn(3, 9, 32), "attention_mask": mask[:, :5]},
        r"attention_mask has shape \(3, 5\) but inputs_embeds has shape \(3, 9\)",
    ),
    "all labels -100": (
        lambda ids, mask, labels: {"input_ids": ids, "labels": torch.full_like(labels, -100)},
        r"labels hold no token to predict \(all 21 are -100",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_inputs_are_refused_naming_the_value(name):
    make, message = BAD_INPUTS[name]
    ids, mask, labels = random_batch()
    inputs = make(ids, mask, labels)
    if "labels" not in inputs:
        inputs["decoder_input_ids"] = labels
    with pytest.raises(ValueError, match=message):
        tiny_model()(**inputs)


def test_a_one_zero_mask_of_any_dtype_is_still_accepted():
    ids, mask, labels = random_batch()
    model = tiny_model()
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, labels=labels).logits
        for same in (mask.bool(), mask.float(), mask.int()):
            torch.testing.assert_close(model(input_ids=ids, attention_mask=same, labels=labels).logits, reference)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_beams": 0}, r"num_beams=0 is invalid: expected an integer >= 1"),
        ({"num_beams": -3}, r"num_beams=-3 is invalid"),
        ({"num_beams": 2, "num_return_sequences": 0}, r"num_return_sequences=0 is invalid"),
        ({"eos_token_id": []}, r"eos_token_id=\[\] is invalid"),
        ({"eos_token_id": -1}, r"eos_token_id=-1 is invalid"),
        ({"eos_token_id": 500}, r"eos_token_id=500 is invalid"),
        ({"max_new_tokens_over_source": None, "eos_token_id": []}, r"eos_token_id=\[\] is invalid"),
    ],
)
def test_generate_refuses_bad_counts_and_end_tokens(options, message):
    ids, mask, _ = random_batch()
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(ids, attention_mask=mask, max_new_tokens=3, **options)


def test_generate_accepts_the_other_forms_of_counts_and_end_tokens():
    import numpy as np

    ids, mask, _ = random_batch()
    model = tiny_model()
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=4, num_beams=2, eos_token_id=2)
    for options in ({"num_beams": np.int64(2), "eos_token_id": torch.tensor(2)}, {"num_beams": 2, "eos_token_id": [2]}):
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=4, **options), reference)


def test_generate_refuses_a_mask_of_2s_which_the_length_limit_would_sum():
    ids, mask, _ = random_batch()
    with pytest.raises(ValueError, match=r"attention_mask holds 2"):
        tiny_model().generate(ids, attention_mask=mask * 2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoder_layers": 1_000_000}, r"encoder_layers=1000000 is invalid: expected an integer <= 1000"),
        ({"d_model": 10**9}, r"d_model=1000000000 is invalid: expected an integer <= 65536"),
        ({"vocab_size": 2**25}, r"vocab_size=33554432 is invalid"),
        (
            {"d_model": 65536, "d_ff": 65536, "h": 64, "vocab_size": 2**20},
            r"about 6.01e\+11 parameters, more than the sane bound 1e\+11",
        ),
        ({"init_std": float("inf")}, r"init_std=inf is invalid"),
    ],
)
def test_config_sizes_are_bounded_before_anything_is_built(fields, message):
    started = time.perf_counter()
    with pytest.raises(StrictDataclassError, match=message):
        VanillaTransformerConfig(**fields)
    assert time.perf_counter() - started < 5  # refused by the config check, not by building modules


def test_the_bounds_admit_the_papers_models_and_deepnet_depth():
    assert VanillaTransformerConfig.from_preset("big").d_model == 1024
    assert VanillaTransformerConfig(encoder_layers=1000, decoder_layers=1000, d_model=64, h=4, d_ff=128).encoder_layers


def test_an_unknown_config_key_is_named_with_the_nearest_field(caplog):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            config = tiny_config(dropuot=0.3)
    finally:
        hf_logging.disable_propagation()
    assert "no field(s) 'dropuot' (did you mean 'dropout'?)" in caplog.text and config.dropout == 0.1
    caplog.clear()
    with caplog.at_level("WARNING"):
        tiny_config(max_new_tokens_over_source=50, length_penalty_type="gnmt", torch_dtype="float32", num_beams=4)
    assert "no field" not in caplog.text  # this model's decoding options and the library's keys are known
    with pytest.raises(
        ValueError, match=r"'dropuot' \(did you mean 'dropout'\?\) for VanillaTransformerConfig.from_preset"
    ):
        VanillaTransformerConfig.from_preset("base", dropuot=0.3)


def replace_tensor(folder, key, change):
    state = load_file(folder / "model.safetensors")
    state[key] = change(state[key])
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.int32])
def test_a_non_float_tensor_for_a_float_parameter_is_refused(tmp_path, dtype, file_format):
    folder = saved(tmp_path)
    key = "model.encoder.layers.0.ffn.fc1.weight"
    replace_tensor(folder, key, lambda t: (t * 10).to(dtype))
    if file_format == "bin":  # a legacy pytorch_model.bin is checked as well
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=rf"non-float tensors .*{key} \({ ({torch.int64: 'I64', torch.uint8: 'U8', torch.bool: 'BOOL', torch.int32: 'I32'}[dtype] if file_format == 'safetensors' else str(dtype))}, for a float32 parameter\)"):  # fmt: skip
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"non-float tensors"):  # the caller's loading report does not waive it
        VanillaTransformerForConditionalGeneration.from_pretrained(folder, output_loading_info=True)


def test_a_half_precision_checkpoint_still_loads(tmp_path):
    folder = saved(tmp_path)
    key = "model.encoder.layers.0.ffn.fc1.weight"
    replace_tensor(folder, key, lambda t: t.half())
    model = VanillaTransformerForConditionalGeneration.from_pretrained(folder)
    torch.testing.assert_close(
        model.model.encoder.layers[0].ffn.fc1.weight, load_file(folder / "model.safetensors")[key].float()
    )


EDITED_CONFIGS = {
    "fewer layers": ({}, {"decoder_layers": 1}, r"decoder.layers.1.* \(more decoder layers than decoder_layers=1\)"),
    "learned to sinusoidal": (
        {"position_encoding": "learned"}, {"position_encoding": "sinusoidal"},
        r"embed_positions.weight \(learned positions, but position_encoding='sinusoidal'\)",
    ),
    "pre-LN to post-LN": ({"norm_first": True}, {"norm_first": False}, r"final_norm.* \(final layer norms of a pre-LN model"),
    "untied to tied": (
        {"tie_word_embeddings": False, "share_encoder_decoder_embeddings": True}, {"tie_word_embeddings": True},
        r"two different matrices lm_head.weight and .*tie_word_embeddings=True",
    ),
    "unshared to shared": (
        {"share_encoder_decoder_embeddings": False}, {"share_encoder_decoder_embeddings": True},
        r"two different matrices .*decoder.embeddings.embed_tokens.weight .*share_encoder_decoder_embeddings=True",
    ),
    "wider": ({}, {"d_model": 4096}, r"other shapes .*\(checkpoint \(32, 32\), model \(32, 4096\)\)"),
}  # fmt: skip


@pytest.mark.parametrize("name", EDITED_CONFIGS)
@pytest.mark.parametrize("auto_class", [AutoModelForSeq2SeqLM, AutoModel])
def test_a_config_that_disagrees_with_its_tensors_is_refused(tmp_path, name, auto_class):
    built, edit, message = EDITED_CONFIGS[name]
    tiny_model(**built).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    if auto_class is AutoModel and name == "untied to tied":
        message = None  # the base model has no output layer: nothing of the checkpoint is lost
    if message is None:
        auto_class.from_pretrained(tmp_path)
        return
    with pytest.raises(ValueError, match=message):
        auto_class.from_pretrained(tmp_path)


def test_a_wider_config_is_refused_before_the_weights_are_materialised(tmp_path, monkeypatch):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "d_model": 4096}))
    from transformers import PreTrainedModel

    def materialise(*args, **kwargs):
        raise AssertionError("the library's loading step was reached")

    monkeypatch.setattr(PreTrainedModel, "_load_pretrained_model", staticmethod(materialise))
    with pytest.raises(ValueError, match=r"other shapes"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


def test_saved_weights_are_readable_by_others_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(tmp_path / "model")
        tiny_model().save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    finally:
        os.umask(old)
    files = [*(tmp_path / "model").iterdir(), *(tmp_path / "sharded").iterdir()]
    assert len([f for f in files if ".safetensors" in f.name]) > 3
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o644"}
    os.umask(0o077)
    try:
        tiny_model().save_pretrained(tmp_path / "private")
    finally:
        os.umask(old)
    assert oct((tmp_path / "private" / "model.safetensors").stat().st_mode & 0o777) == "0o600"
