"""transformers' own common model tests, run against this model.

`ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester` (tests/test_configuration_common.py) are the
tests every model in the transformers repository passes. They are not in the transformers wheel:
`python tests/transformers_common/fetch.py` takes them from the sdist of the installed transformers version into a
cache folder (see that script). Without the cache this module is skipped, or fails under CI (CI=true).

The tester follows the shape of transformers' own tests/models/marian/test_modeling_marian.py (`MarianModelTester`),
the closest model in the library. It uses only the config and the public API, no module names of the model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import unittest
from pathlib import Path
from unittest import mock

import pytest
from transformers.models.auto import modeling_auto

import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
)


def _load_fetch_script():
    path = Path(__file__).resolve().parent / "transformers_common" / "fetch.py"
    spec = importlib.util.spec_from_file_location("_transformers_common_fetch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fetch = _load_fetch_script()
CACHE = _fetch.default_dest()

if not _fetch.is_fetched(CACHE):
    _message = (
        f"transformers' common model tests (transformers {_fetch.transformers_version()}) are not in {CACHE}; "
        "fetch them with `python tests/transformers_common/fetch.py`"
        + (f" (or set {_fetch.ENV_VAR} to where they are)" if not os.environ.get(_fetch.ENV_VAR) else "")
    )
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(_message, pytrace=False)  # CI must run them: a collection error, not a silent skip
    pytest.skip(_message, allow_module_level=True)

if str(CACHE) not in sys.path:
    sys.path.insert(0, str(CACHE))

from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor  # noqa: E402

# transformers' own test_bc_cache_name_forward (5.25) passes the pre-5.24 name `past_key_values` on purpose and checks
# for the deprecation warning; it records the warning, which pyproject's "error" filter would raise instead.
pytestmark = pytest.mark.filterwarnings("always:`past_key_values` is deprecated:FutureWarning")


class VanillaTransformerModelTester:
    """Builds a tiny config and a batch for the common tests (the attribute names are those the mixin reads)."""

    def __init__(
        self,
        parent,
        batch_size=13,
        seq_length=7,
        is_training=True,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        unk_token_id=3,
        decoder_start_token_id=1,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length  # source and target alike (the mixin's decoder_seq_length falls back to it)
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers  # per stack: config.num_hidden_layers is the encoder's depth
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.unk_token_id = unk_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.first_ordinary_token_id = max(pad_token_id, bos_token_id, eos_token_id, unk_token_id) + 1

    def get_config(self) -> VanillaTransformerConfig:
        return VanillaTransformerConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            d_ff=self.intermediate_size,
            h=self.num_attention_heads,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            dropout=self.hidden_dropout_prob,
            attention_dropout=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            unk_token_id=self.unk_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
        )

    def prepare_config_and_inputs(self):
        # Ordinary tokens only, all inside [0, vocab_size): ids_tensor draws from [0, vocab_size), the clamp lifts the
        # special ids (pad, bos, eos, unk) out of the body of the sequences.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(self.first_ordinary_token_id)
        input_ids[:, -1] = self.eos_token_id  # a source sentence ends with EOS
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(
            self.first_ordinary_token_id
        )
        decoder_input_ids[:, 0] = self.decoder_start_token_id  # the target shifted right starts with the start token
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(self.pad_token_id).long(),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_input_ids.ne(self.pad_token_id).long(),
        }
        return self.get_config(), inputs_dict

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class VanillaTransformerModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VanillaTransformerModel, VanillaTransformerForConditionalGeneration)
    # The mixin tells a base model from a model with a head by looking the class name up in transformers' auto
    # mappings (`MODEL_MAPPING_NAMES`, `MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES`, ...): that decides, e.g., which
    # classes get `labels` and are trained, and which one the base-model tests use. A model inside transformers has
    # its entries there; `AutoModel.register` (which hf_vanilla_transformer uses) does not add to them. So the
    # entries a library model would have are added for the duration of this class (setUpClass / tearDownClass).
    auto_mapping_entries = {
        "MODEL_MAPPING_NAMES": VanillaTransformerModel,
        "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": VanillaTransformerForConditionalGeneration,
    }
    # The generate() tests live in transformers' tests/generation/test_utils.py (`GenerationTesterMixin`), which is
    # not in the sdist that tests/transformers_common/fetch.py reads; its stand-in there is an empty marker, so no
    # class is declared generative here (`test_generation_tester_mixin_inheritance` requires the two to agree).
    # The project's own tests/test_generation.py covers generate().
    all_generative_model_classes = ()
    is_encoder_decoder = True
    # `test_can_init_all_missing_weights` skips models "added before 2023", which it reads from a "# Copyright YYYY"
    # line in the config's source file; this project's files have none (so they count as year 0). The model is not
    # one of the old library models that test exempts, so the test is turned on.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._auto_mapping_patches = [
            mock.patch.dict(
                getattr(modeling_auto, mapping), {VanillaTransformerConfig.model_type: model_class.__name__}
            )
            for mapping, model_class in cls.auto_mapping_entries.items()
        ]
        for patch in cls._auto_mapping_patches:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in reversed(cls._auto_mapping_patches):
            patch.stop()
        super().tearDownClass()

    def setUp(self):
        self.model_tester = VanillaTransformerModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VanillaTransformerConfig, vocab_size=99, d_model=32, h=4)

    def test_config(self):
        self.config_tester.run_common_tests()
