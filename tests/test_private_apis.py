"""Every private transformers / torch API the project relies on, each with a contract test.

transformers renames and reshapes its internals in minor releases (5.24 renamed the decoding cache argument, and a
model that kept the old name decoded wrongly without a word). Each test below names the private API, where the
project uses it, and fails with a message saying what changed, so a new release fails here, not in a user's
decoding. `compatibility_vanilla_transformer.library_contract_problems()` checks the decoding-critical part of this
list at import time for transformers releases newer than the tested ones.

| private API | used in |
|---|---|
| `GenerationMixin._prepare_generation_config` | generation_vanilla_transformer (the call's copy carries the GNMT marker) |
| `GenerationMixin._update_finished_beams` | generation_vanilla_transformer (GNMT length penalty) |
| `GenerationMixin._check_early_stop_heuristic` | generation_vanilla_transformer (GNMT stopping bound) |
| the `_reorder_cache` hook of `_beam_search` | generation_vanilla_transformer (reorders the self-attention half only) |
| `prepare_inputs_for_generation(cache=...)` -> forward(`cache`) | modeling_vanilla_transformer (the argument names) |
| `masking_utils.create_causal_mask(cache=...)` | modeling_vanilla_transformer (the decoder's mask) |
| `utils.deprecation.deprecate_kwarg` | modeling_vanilla_transformer (`past_key_values=` still works) |
| `utils.output_capturing` (`OutputRecorder`, `capture_outputs`), `utils.generic.merge_with_config_defaults` | modeling_vanilla_transformer (attentions, hidden states) |
| `PreTrainedModel._load_pretrained_model` and `LoadStateDictConfig.ignore_mismatched_sizes` | modeling_vanilla_transformer (headers checked before loading) |
| `PreTrainedModel._weight_conversions` (`source_patterns`) | modeling_vanilla_transformer (legacy names not written back) |
| `PreTrainedModel.get_expanded_tied_weights_keys` | modeling_vanilla_transformer (three-way tie) |
| `GenerationConfig._get_default_generation_params` | configuration_vanilla_transformer (unknown keys named) |
| `GenerationConfig._from_model_config` | convert.py (a converted model keeps its generation config) |
| `models.auto.tokenization_auto.get_tokenizer_config` | training/tokenizer.py (fairseq tokenizer folders) |
| `Trainer._save_checkpoint`, `Trainer._issue_warnings_after_load` | training/train.py (no non-finite checkpoint; tied keys) |
| `CompileConfig._compile_all_devices` | benchmarks/speed.py, tests/test_export.py (compiled decoding on CPU) |
| `torch.ops.mkldnn._reorder_linear_weight`, `torch.ops.mkldnn._linear_pointwise` | cpu_decoding.py (packed weights) |
| `nn.Module._apply` | cpu_decoding.py (drop the packed copy on .to()) |
| `torch._inductor.config.fx_graph_cache`, `torch._functorch.config.enable_autograd_cache` | benchmarks/speed.py |
"""

import inspect
import re
from pathlib import Path

import pytest
import tomllib
import torch
import transformers
from conftest import random_batch, tiny_model
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from hf_vanilla_transformer import compatibility_vanilla_transformer as compatibility
from hf_vanilla_transformer.generation_vanilla_transformer import GNMTLengthPenalty, VanillaTransformerGenerationMixin

ROOT = Path(__file__).resolve().parents[1]


def changed(api: str, now: object, expected: object, used_for: str) -> str:
    return (
        f"{api} changed in transformers {transformers.__version__}: now {now}, expected {expected}. It is {used_for}."
    )


# ---- generation -----------------------------------------------------------------------------------------------
# The library's private beam-search methods overridden for the GNMT penalty, as the tested transformers defines them.
PINNED_PRIVATE_SIGNATURES = {
    "_prepare_generation_config": (
        "(self: 'GenerativePreTrainedModel', generation_config: transformers.generation.configuration_utils."
        "GenerationConfig | None, **kwargs: Any) -> tuple[transformers.generation.configuration_utils.GenerationConfig,"
        " dict]"
    ),
    "_update_finished_beams": (
        "(self, sequences: torch.Tensor, topk_running_sequences: torch.Tensor, beam_scores: torch.Tensor, "
        "topk_log_probs: torch.Tensor, beam_indices: torch.Tensor, topk_running_beam_indices: torch.Tensor, "
        "is_early_stop_heuristic_unsatisfied: torch.Tensor, is_sent_finished: torch.Tensor, "
        "next_token_hits_stopping_criteria: torch.Tensor, top_num_beam_mask: torch.Tensor, num_beams: int, "
        "cur_len: int, decoder_prompt_len: int, length_penalty: float, early_stopping: bool | str) -> "
        "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]"
    ),
    "_check_early_stop_heuristic": (
        "(is_early_stop_heuristic_unsatisfied: torch.Tensor, running_beam_scores: torch.Tensor, "
        "beam_scores: torch.Tensor, is_sent_finished: torch.Tensor, cur_len: int, max_length: int, "
        "decoder_prompt_len: int, early_stopping: bool | str, length_penalty: float)"
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED_PRIVATE_SIGNATURES))
def test_the_overridden_beam_search_hooks_keep_their_signatures(name):
    method = getattr(GenerationMixin, name, None)
    assert method is not None, changed(f"GenerationMixin.{name}", "missing", "present", "overridden for §6.1's GNMT")
    now = str(inspect.signature(method))
    assert now == PINNED_PRIVATE_SIGNATURES[name], changed(
        f"GenerationMixin.{name}'s signature", now, PINNED_PRIVATE_SIGNATURES[name], "overridden for §6.1's GNMT"
    )
    if name == "_check_early_stop_heuristic":
        assert isinstance(inspect.getattr_static(GenerationMixin, name), staticmethod), changed(
            f"GenerationMixin.{name}", "not a staticmethod", "a staticmethod", "overridden as a staticmethod"
        )


def test_every_overridden_generation_method_is_pinned():
    overridden = {name for name in vars(VanillaTransformerGenerationMixin) if name.startswith("_")} - {
        "__module__", "__doc__", "__qualname__", "__firstlineno__", "__static_attributes__",
        "_generation_option", "_source_lengths", "_pad_after_eos",  # our own helpers, not the library's
        "_reorder_cache",  # an optional hook GenerationMixin does not define (test below)
    }  # fmt: skip
    assert overridden == set(PINNED_PRIVATE_SIGNATURES), "an override added later must be pinned here too"


def test_beam_search_calls_the_gnmt_hooks_and_the_reorder_hook_with_the_calls_penalty(monkeypatch):
    """The hooks must be called, by keyword, with the length penalty of the call's generation config (which carries
    the GNMT marker that _prepare_generation_config put there); an override that is no longer called would silently
    give the library's L ** alpha penalty."""
    calls = {"_update_finished_beams": [], "_check_early_stop_heuristic": [], "_reorder_cache": []}
    mixin = VanillaTransformerGenerationMixin
    real = {name: inspect.getattr_static(mixin, name) for name in calls}

    def update(self, **kwargs):
        calls["_update_finished_beams"].append(kwargs["length_penalty"])
        return real["_update_finished_beams"](self, **kwargs)

    def check(**kwargs):
        calls["_check_early_stop_heuristic"].append(kwargs["length_penalty"])
        return real["_check_early_stop_heuristic"].__func__(**kwargs)

    def reorder(self, cache, beam_idx):
        calls["_reorder_cache"].append(type(cache).__name__)
        return real["_reorder_cache"](self, cache, beam_idx)

    monkeypatch.setattr(mixin, "_update_finished_beams", update)
    monkeypatch.setattr(mixin, "_check_early_stop_heuristic", staticmethod(check))
    monkeypatch.setattr(mixin, "_reorder_cache", reorder)
    ids, mask, _ = random_batch(batch=2)
    tiny_model(seed=2).generate(ids, attention_mask=mask, num_beams=4, max_new_tokens=5)
    for hook in ("_update_finished_beams", "_check_early_stop_heuristic"):
        assert calls[hook], changed(f"GenerationMixin._beam_search's call of {hook}", "no call", "one per step", "GNMT")
        assert all(isinstance(p, GNMTLengthPenalty) for p in calls[hook]), changed(
            f"the length_penalty _beam_search hands to {hook}", calls[hook][0], "the call's GNMTLengthPenalty", "GNMT"
        )
    assert calls["_reorder_cache"] and set(calls["_reorder_cache"]) == {"EncoderDecoderCache"}, changed(
        "_beam_search's model._reorder_cache(cache, beam_idx) hook", calls["_reorder_cache"][:1] or "no call",
        "a call with the EncoderDecoderCache at every step", "this model's cheaper cache reordering",
    )  # fmt: skip


def test_the_librarys_step_inputs_are_named_as_the_forward_takes_them():
    """The library prepares each decoding step's inputs (this model has no override since 0.3.0): every name it
    passes must be a parameter of forward, the cache under the name `cache` (transformers < 5.24:
    `past_key_values`, which forward now only takes through deprecate_kwarg)."""
    model = tiny_model()
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    ids, mask, _ = random_batch(batch=2)
    inputs = model.prepare_inputs_for_generation(
        torch.tensor([[1, 5], [1, 6]]), next_sequence_length=1, cache=cache, attention_mask=mask,
        encoder_outputs=model.get_encoder()(input_ids=ids, attention_mask=mask), use_cache=True,
    )  # fmt: skip
    forward = set(inspect.signature(model.forward).parameters)
    assert inputs.get("cache") is cache, changed("prepare_inputs_for_generation", sorted(inputs), "a `cache` key", "")
    assert set(inputs) <= forward, changed(
        "the inputs prepare_inputs_for_generation makes", sorted(set(inputs) - forward), "names forward takes",
        "what generate() passes to this model's forward at every step",
    )  # fmt: skip
    assert "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters


def test_create_causal_mask_takes_the_cache_as_cache():
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    for function, needed in ((create_causal_mask, "cache"), (create_bidirectional_mask, "encoder_hidden_states")):
        parameters = list(inspect.signature(function).parameters)
        assert needed in parameters, changed(function.__name__, parameters, f"a `{needed}` parameter", "the masks")


def test_past_key_values_is_still_taken_with_the_librarys_deprecation_warning():
    """deprecate_kwarg (transformers.utils.deprecation) maps the pre-5.24 name onto `cache` with a FutureWarning, as
    Marian does; both names at once are refused. Without it `past_key_values=` would vanish into **kwargs."""
    model = tiny_model()
    ids, mask, labels = random_batch(batch=2)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        cache, steps = EncoderDecoderCache(DynamicCache(), DynamicCache()), []
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            for t in range(decoder_ids.shape[1]):
                step = model(encoder_outputs=encoder_outputs, attention_mask=mask,
                             decoder_input_ids=decoder_ids[:, t : t + 1], past_key_values=cache, use_cache=True)  # fmt: skip
                steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="Both `past_key_values` and `cache`"):
        model(input_ids=ids, decoder_input_ids=decoder_ids, cache=cache, past_key_values=cache)


def test_output_capturing_records_attentions_and_hidden_states():
    """OutputRecorder / capture_outputs (transformers.utils.output_capturing) and merge_with_config_defaults
    (transformers.utils.generic) fill attentions and hidden states from the layers' outputs."""
    from transformers.utils.generic import merge_with_config_defaults  # noqa: F401
    from transformers.utils.output_capturing import OutputRecorder, capture_outputs  # noqa: F401

    model = tiny_model()
    model.config._attn_implementation = "eager"
    ids, mask, labels = random_batch(batch=2, source=9, target=7)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True, output_hidden_states=True)
    layers, heads = model.config.decoder_layers, model.config.h
    shapes = {
        "cross_attentions": (layers, (2, heads, 7, 9)),
        "decoder_attentions": (layers, (2, heads, 7, 7)),
        "encoder_attentions": (model.config.encoder_layers, (2, heads, 9, 9)),
    }
    for name, (count, shape) in shapes.items():
        value = getattr(out, name)
        now = None if value is None else (len(value), tuple(value[0].shape))
        assert now == (count, shape), changed(f"output capturing of {name}", now, (count, shape), "output_attentions")
    assert out.decoder_hidden_states is not None and len(out.decoder_hidden_states) == layers + 1


def test_attn_implementation_is_written_to_the_config():
    from transformers import AutoModelForSeq2SeqLM

    from hf_vanilla_transformer import small_config

    model = AutoModelForSeq2SeqLM.from_config(small_config("tiny"), attn_implementation="eager")
    assert model.config._attn_implementation == "eager", changed(
        "config._attn_implementation", model.config._attn_implementation, "'eager'", "read by every attention layer"
    )


# ---- loading --------------------------------------------------------------------------------------------------
def test_the_loading_step_and_its_config_are_as_overridden(tmp_path, monkeypatch):
    """_load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys) is called by
    from_pretrained after the model was built on the meta device, with a load_config that has
    ignore_mismatched_sizes; the project reads the checkpoint headers there."""
    from transformers.modeling_utils import LoadStateDictConfig

    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration as Model

    parameters = list(inspect.signature(PreTrainedModel._load_pretrained_model).parameters)
    expected = ["model", "state_dict", "checkpoint_files", "load_config", "expected_keys"]
    assert parameters == expected, changed("PreTrainedModel._load_pretrained_model", parameters, expected, "overridden")
    assert "ignore_mismatched_sizes" in LoadStateDictConfig.__dataclass_fields__, changed(
        "LoadStateDictConfig", "no ignore_mismatched_sizes", "a field ignore_mismatched_sizes", "read when loading"
    )
    tiny_model().save_pretrained(tmp_path)
    seen = []
    real = inspect.getattr_static(Model, "_load_pretrained_model").__func__

    def spy(model, state_dict, checkpoint_files, load_config, expected_keys=None):
        seen.append((model.device.type, [Path(f).name for f in checkpoint_files], load_config.ignore_mismatched_sizes))
        return real(model, state_dict, checkpoint_files, load_config, expected_keys)

    monkeypatch.setattr(Model, "_load_pretrained_model", staticmethod(spy))
    Model.from_pretrained(tmp_path)
    assert seen == [("meta", ["model.safetensors"], False)], changed(
        "from_pretrained's call of _load_pretrained_model", seen, "one call on the meta device", "the header check"
    )


def test_legacy_renames_are_recorded_as_weight_conversions():
    """A load through key_mapping records WeightRenaming entries (with `source_patterns`) in
    model._weight_conversions, which save_pretrained reverts; the project drops the legacy ones there."""
    from transformers.core_model_loading import WeightRenaming

    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration as Model
    from hf_vanilla_transformer.modeling_vanilla_transformer import LEGACY_KEY_MAPPING

    fixture = Path(__file__).parent / "fixtures" / "legacy_tiny"
    # the library's from_pretrained (the project's override clears the legacy entries afterwards)
    model = PreTrainedModel.from_pretrained.__func__(Model, fixture, key_mapping=LEGACY_KEY_MAPPING)
    conversions = getattr(model, "_weight_conversions", None) or []
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    assert renamings and all(set(c.source_patterns) <= LEGACY_KEY_MAPPING.keys() for c in renamings), changed(
        "model._weight_conversions after a key_mapping load", conversions, "WeightRenaming entries with "
        "source_patterns from the key_mapping", "cleared so that old names are not written back",
    )  # fmt: skip


def test_the_tied_weights_hook_keeps_its_signature():
    parameters = list(inspect.signature(PreTrainedModel.get_expanded_tied_weights_keys).parameters)
    assert parameters == ["self", "all_submodels"], changed(
        "PreTrainedModel.get_expanded_tied_weights_keys", parameters, ["self", "all_submodels"], "overridden"
    )


def test_generation_config_internals_used_by_the_config_and_the_converters():
    defaults = GenerationConfig._get_default_generation_params()
    assert "num_beams" in defaults and "max_length" in defaults, changed(
        "GenerationConfig._get_default_generation_params()", sorted(defaults)[:5], "the generation parameter names",
        "how the config tells a generation parameter from a misspelt field",
    )  # fmt: skip
    config = GenerationConfig()
    assert hasattr(config, "_from_model_config"), changed(
        "GenerationConfig._from_model_config", "missing", "an attribute", "set by convert.py"
    )


def test_the_tokenizer_config_reader():
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    parameters = inspect.signature(get_tokenizer_config).parameters
    assert "pretrained_model_name_or_path" in parameters, changed(
        "transformers.models.auto.tokenization_auto.get_tokenizer_config", list(parameters),
        "a first parameter pretrained_model_name_or_path", "read by training/tokenizer.py",
    )  # fmt: skip


# ---- training -------------------------------------------------------------------------------------------------
def test_the_trainer_hooks_overridden_by_the_training_script():
    from transformers import Trainer

    for name, expected in (("_save_checkpoint", ["self", "model", "trial"]),
                           ("_issue_warnings_after_load", ["self", "load_result"])):  # fmt: skip
        parameters = list(inspect.signature(getattr(Trainer, name)).parameters)
        assert parameters == expected, changed(f"Trainer.{name}", parameters, expected, "overridden by train.py")
    source = inspect.getsource(Trainer)
    for call in ("self._save_checkpoint(", "self._issue_warnings_after_load("):
        assert call in source, changed("Trainer", f"no {call}...) call", "a call", "overridden by train.py")


def test_compile_config_compiles_on_cpu_when_told():
    from transformers import CompileConfig

    config = CompileConfig()
    assert hasattr(config, "_compile_all_devices"), changed(
        "CompileConfig._compile_all_devices", "missing", "an attribute", "how benchmarks compile decoding on CPU"
    )
    assert "_compile_all_devices" in inspect.getsource(GenerationMixin), changed(
        "GenerationMixin", "never reads _compile_all_devices", "reads it", "how benchmarks compile decoding on CPU"
    )


# ---- torch ----------------------------------------------------------------------------------------------------
def test_onednn_packed_linear_ops():
    x, weight, bias = torch.randn(3, 16), torch.randn(8, 16), torch.randn(8)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    except (AttributeError, RuntimeError) as error:
        pytest.fail(f"torch {torch.__version__}: torch.ops.mkldnn's packed linear ops changed ({error}); used by "
                    "cpu_decoding.pack_for_cpu_decoding")  # fmt: skip
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_module_apply_and_the_compile_cache_switches():
    import torch._functorch.config
    import torch._inductor.config

    parameters = list(inspect.signature(torch.nn.Module._apply).parameters)
    assert parameters[:3] == ["self", "fn", "recurse"], f"torch.nn.Module._apply is now {parameters}; cpu_decoding"
    for module, name in (
        (torch._inductor.config, "fx_graph_cache"),
        (torch._functorch.config, "enable_autograd_cache"),
    ):
        assert hasattr(module, name), (
            f"torch {torch.__version__}: {module.__name__}.{name} is gone; benchmarks/speed.py"
        )


# ---- the versions -----------------------------------------------------------------------------------------------
def test_the_installed_transformers_is_in_the_tested_range_and_meets_the_contract():
    compatibility.check_transformers_version()
    assert compatibility.library_contract_problems() == []


def test_pyproject_admits_exactly_the_tested_range_and_constraints_pin_inside_it():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [Requirement(r) for r in project["dependencies"] if r.startswith("transformers")]
    assert requirement == Requirement(compatibility.TRANSFORMERS_REQUIREMENT)
    newest = compatibility.NEWEST_TESTED_TRANSFORMERS
    assert requirement.specifier.contains(f"{newest}.0") and not requirement.specifier.contains(
        re.sub(r"\.(\d+)$", lambda m: f".{int(m[1]) + 1}", newest) + ".0"
    )
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert requirement.specifier.contains(pins["transformers"])


def test_an_older_transformers_is_refused_by_name():
    with pytest.raises(ImportError, match=r"needs transformers >= 5\.24\.0 .*transformers 5\.23\.0 is installed"):
        compatibility.check_transformers_version("5.23.0")
    compatibility.check_transformers_version(compatibility.OLDEST_TRANSFORMERS)  # no error


def test_a_newer_transformers_is_checked_and_refused_when_the_contract_broke(monkeypatch):
    newer = "5.99.0"
    compatibility.check_transformers_version(newer)  # the installed library meets the contract: a warning only

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, **kwargs):  # the pre-5.24 name
        return {}

    monkeypatch.setattr(GenerationMixin, "prepare_inputs_for_generation", prepare_inputs_for_generation)
    with pytest.raises(ImportError, match=r"5\.99\.0 is newer .*prepare_inputs_for_generation no longer takes `cache`"):
        compatibility.check_transformers_version(newer)


def test_hook_changes_are_named_by_the_import_time_check(monkeypatch):
    def check(*, running_beam_scores, cur_len, max_length, early_stopping, length_penalty, **kwargs):  # no prompt len
        return None

    monkeypatch.setattr(GenerationMixin, "_check_early_stop_heuristic", staticmethod(check))
    assert compatibility.library_contract_problems() == [
        "GenerationMixin._check_early_stop_heuristic no longer takes decoder_prompt_len"
    ]


def test_a_saved_folders_code_refuses_an_older_transformers_where_the_package_is_not_installed(tmp_path):
    """The check runs when the copied modeling file is imported as remote code (here with the installed
    transformers' version read as 5.23.0, the last release that passes the cache as `past_key_values`)."""
    import subprocess
    import textwrap

    from conftest import python_without_this_package

    tiny_model().save_pretrained(tmp_path / "model")
    python, env = python_without_this_package(tmp_path)
    code = textwrap.dedent(
        f"""
        import importlib.metadata
        real_version = importlib.metadata.version
        importlib.metadata.version = lambda name: "5.23.0" if name == "transformers" else real_version(name)
        from transformers import AutoModelForSeq2SeqLM
        try:
            AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        except ImportError as error:
            print("REFUSED", error)
        """
    )
    result = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "REFUSED This Transformer model's code needs transformers >= 5.24.0" in result.stdout, result.stderr[-2000:]
    assert "transformers 5.23.0 is installed" in result.stdout
