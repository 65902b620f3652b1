"""Export and compilation: torch.export with dynamic lengths, ONNX (dynamo exporter) in ONNX Runtime,
torch.compile(fullgraph=True), and generate() with the static cache and a compiled decoding step, each against
the eager model at lengths the graph was not traced with."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import random_batch, tiny_model
from torch.export import Dim
from transformers import CompileConfig

from hf_vanilla_transformer.generation_vanilla_transformer import SourceLengthLimitLogitsProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import export_roundtrip  # noqa: E402
from export_roundtrip import LogitsOnly  # noqa: E402  (forward(input_ids, attention_mask, decoder_input_ids) -> logits)


def traced_and_new_inputs():
    """The inputs the graph is traced with, and inputs of other batch size, source length and target length."""
    traced = random_batch(batch=2, source=7, target=5, seed=0)
    new = random_batch(batch=3, source=13, target=9, seed=1)
    return [(ids, mask, labels) for ids, mask, labels in (traced, new)]


DYNAMIC = {
    "input_ids": {0: Dim("batch", max=256), 1: Dim("source", min=2, max=1024)},
    "attention_mask": {0: Dim("batch", max=256), 1: Dim("source", min=2, max=1024)},
    "decoder_input_ids": {0: Dim("batch", max=256), 1: Dim("target", min=2, max=1024)},
}


def eager_logits(model, ids, mask, decoder_ids):
    with torch.no_grad():
        return LogitsOnly(model)(ids, mask, decoder_ids)


@pytest.mark.slow
def test_torch_export_with_dynamic_lengths_matches_eager_at_other_lengths():
    model = tiny_model(seed=1)
    (ids, mask, dec), (new_ids, new_mask, new_dec) = traced_and_new_inputs()
    exported = torch.export.export(LogitsOnly(model), (ids, mask, dec), dynamic_shapes=DYNAMIC)
    for inputs in ((ids, mask, dec), (new_ids, new_mask, new_dec)):
        torch.testing.assert_close(exported.module()(*inputs), eager_logits(model, *inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_runs_in_onnx_runtime_like_eager_at_other_lengths(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_model(seed=2)
    (ids, mask, dec), (new_ids, new_mask, new_dec) = traced_and_new_inputs()
    path = tmp_path / "model.onnx"
    torch.onnx.export(LogitsOnly(model), (ids, mask, dec), path, dynamo=True, dynamic_shapes=DYNAMIC)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "decoder_input_ids"]
    (logits,) = session.run(None, dict(zip(names, (new_ids.numpy(), new_mask.numpy(), new_dec.numpy()), strict=True)))
    assert logits.shape == (3, 9, model.config.vocab_size)
    torch.testing.assert_close(
        torch.from_numpy(logits), eager_logits(model, new_ids, new_mask, new_dec), atol=1e-4, rtol=1e-4
    )


@pytest.mark.slow
def test_compile_fullgraph_with_dynamic_shapes_matches_eager():
    torch._dynamo.reset()
    model = tiny_model(seed=3)
    compiled = torch.compile(LogitsOnly(model), fullgraph=True, dynamic=True)
    for ids, mask, dec in traced_and_new_inputs():
        with torch.no_grad():
            torch.testing.assert_close(
                compiled(ids, mask, dec), eager_logits(model, ids, mask, dec), atol=1e-5, rtol=1e-5
            )


def test_ids_outside_the_vocabulary_still_raise_in_eager_mode():
    model = tiny_model()
    ids, mask, dec = random_batch()
    ids[1, 2] = model.config.vocab_size + 7
    with pytest.raises(ValueError, match=rf"input_ids contains token id {model.config.vocab_size + 7}, outside"):
        LogitsOnly(model)(ids, mask, dec)


def test_the_source_length_limit_processor_has_no_host_synchronisation():
    """The per-step processor compiles to one graph (a `bool(tensor)` or `.item()` would break it) and equals eager."""
    torch._dynamo.reset()
    processor = SourceLengthLimitLogitsProcessor(torch.tensor([3, 5]), eos_token_id=2)
    compiled = torch.compile(processor.__call__, fullgraph=True)
    scores = torch.randn(8, 11)  # 2 sentences x 4 beams
    for length in (3, 4, 6, 7):
        ids = torch.ones(8, length, dtype=torch.long)
        expected = processor(ids, scores)
        torch.testing.assert_close(compiled(ids, scores), expected)
        assert (expected[:4].argmax(-1) == 2).all() == (length - 1 >= 3)
        assert (expected[4:].argmax(-1) == 2).all() == (length - 1 >= 5)


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", [1, 4])
def test_static_cache_and_compiled_decoding_step_equal_the_dynamic_cache(num_beams):
    """The library's route to decoding speed: cache_implementation="static", with the auto-compiled forward
    (`_can_compile_fullgraph`) on CPU too, for fixed shapes (dynamic=False, as benchmarks/speed.py compiles it). Same
    tokens, same scores as the dynamic cache; for greedy/sampling (the installed transformers compiles the step of
    `_sample` only, not of beam search) graphs without breaks, compiled once for the whole output: a step's
    decoder_input_ids must not carry the stride of the growing sequence, or every length is compiled anew."""
    from torch._dynamo.utils import counters
    from transformers import StaticCache

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(seed=5)
    ids, mask, _ = random_batch(batch=2, source=9)
    kwargs = dict(
        attention_mask=mask, num_beams=num_beams, max_new_tokens=12, return_dict_in_generate=True, output_scores=True
    )
    dynamic = model.generate(ids, **kwargs)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    compile_config._compile_all_devices = True  # the library compiles on CUDA only unless told
    static = model.generate(ids, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert isinstance(static.cache.self_attention_cache, StaticCache)
    if num_beams == 1:
        assert counters["stats"]["unique_graphs"] == 1  # the decoding step, compiled once for all 12 steps
    assert not counters["graph_break"]
    torch.testing.assert_close(static.sequences, dynamic.sequences)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_the_compiled_training_step_equals_the_eager_one(bf16):
    """torch.compile(model) (what the training script's --torch_compile does through the Trainer): the same loss and
    gradients as the eager model, the model's forward compiled without breaks; the loss is the one place it leaves to
    eager mode (loss_vanilla_transformer._summed_loss, measured faster so)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = tiny_model(seed=3, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0).train()
    compiled_model = tiny_model(seed=3, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0).train()
    compiled = torch.compile(compiled_model, dynamic=False)
    ids, mask, labels = random_batch(batch=3, source=9, target=7)
    results = []
    for module, parameters in ((eager, eager), (compiled, compiled_model)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in parameters.named_parameters()}))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    tolerance = 2e-2 if bf16 else 1e-5
    torch.testing.assert_close(compiled_loss, eager_loss, atol=tolerance, rtol=tolerance)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=tolerance, rtol=tolerance, msg=name)
    assert counters["stats"]["unique_graphs"] >= 1
    breaks = [reason for reason in counters["graph_break"]]
    assert len(breaks) <= 1 and all("skip" in b.lower() or "disable" in b.lower() for b in breaks), breaks


@pytest.mark.slow
def test_the_export_round_trip_script_reports_exact_round_trips(capsys):
    export_roundtrip.main(["--preset", "tiny", "--vocab_size", "300"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "max |diff|" in line]
    assert len(lines) == 6  # 3 routes x (traced shape, new shape)
    for line in lines:
        assert float(line.split("max |diff|")[1].split()[0]) < 1e-4 and line.endswith("argmax equal True"), line
