"""The config: Table 3 presets, defaults, and transformers 5's strict validation naming field, value and allowed
values (`huggingface_hub.errors.StrictDataclassError`)."""

import json

import pytest
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig

from hf_vanilla_transformer import PRESETS, VanillaTransformerConfig, small_config


def test_defaults_are_the_base_model_of_table_3():
    config = VanillaTransformerConfig()
    assert (config.encoder_layers, config.decoder_layers, config.d_model, config.d_ff, config.h) == (6, 6, 512, 2048, 8)
    assert (config.d_k, config.d_v, config.dropout) == (64, 64, 0.1)
    assert config.position_encoding == "sinusoidal" and config.tie_word_embeddings and config.scale_embedding
    # Not in the paper, so off by default.
    assert (config.norm_first, config.attention_dropout, config.activation_dropout) == (False, 0.0, 0.0)


def test_base_and_big_presets_equal_table_3():
    base, big = VanillaTransformerConfig.from_preset("base"), VanillaTransformerConfig.from_preset("big")
    row = lambda c: (c.encoder_layers, c.d_model, c.d_ff, c.h, c.d_k, c.d_v, c.dropout, c.label_smoothing)  # noqa: E731
    assert row(base) == (6, 512, 2048, 8, 64, 64, 0.1, 0.1)
    assert row(big) == (6, 1024, 4096, 16, 64, 64, 0.3, 0.1)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("A-h1", {"h": 1, "d_k": 512, "d_v": 512}),
        ("A-h4", {"h": 4, "d_k": 128, "d_v": 128}),
        ("A-h16", {"h": 16, "d_k": 32, "d_v": 32}),
        ("A-h32", {"h": 32, "d_k": 16, "d_v": 16}),
        ("B-dk16", {"h": 8, "d_k": 16, "d_v": 64}),
        ("B-dk32", {"h": 8, "d_k": 32, "d_v": 64}),
        ("C-N2", {"encoder_layers": 2, "decoder_layers": 2}),
        ("C-N8", {"encoder_layers": 8, "decoder_layers": 8}),
        ("C-d256", {"d_model": 256, "d_k": 32, "d_v": 32}),
        ("C-d1024", {"d_model": 1024, "d_k": 128, "d_v": 128}),
        ("C-dff4096", {"d_ff": 4096}),
        ("C-N4", {"encoder_layers": 4, "decoder_layers": 4}),
        ("C-dff1024", {"d_ff": 1024}),
        ("D-dropout0.0", {"dropout": 0.0, "label_smoothing": 0.1}),
        ("D-dropout0.2", {"dropout": 0.2, "label_smoothing": 0.1}),
        ("D-ls0.0", {"label_smoothing": 0.0, "dropout": 0.1}),
        ("D-ls0.2", {"label_smoothing": 0.2, "dropout": 0.1}),
        ("E-learned", {"position_encoding": "learned"}),
    ],
)
def test_table_3_rows(name, expected):
    config = VanillaTransformerConfig.from_preset(name)
    for key, value in expected.items():
        assert getattr(config, key) == value, (name, key)


def test_preset_overrides_and_unknown_name():
    assert VanillaTransformerConfig.from_preset("base", vocab_size=1000).vocab_size == 1000
    with pytest.raises(ValueError, match=r"Unknown preset 'huge'; known presets: base, .*big"):
        VanillaTransformerConfig.from_preset("huge")
    # A misspelt field is refused by name, with the nearest field (not stored as an unused attribute).
    with pytest.raises(
        ValueError, match=r"Unknown configuration field\(s\) 'n_heads'.*'d_model_x' \(did you mean 'd_model'\?\)"
    ):
        VanillaTransformerConfig.from_preset("base", n_heads=4, d_model_x=3)


def test_preset_overrides_re_derive_d_k_and_d_v():
    # Row (A): changing h alone changes d_k = d_v = d_model / h, as Table 3 prints it.
    config = VanillaTransformerConfig.from_preset("base", h=16)
    assert (config.d_k, config.d_v) == (32, 32)
    assert VanillaTransformerConfig.from_preset("big", d_model=512, h=8).d_k == 64
    # Row (B) sets d_k alone; an override of h keeps the row's explicit d_k.
    assert VanillaTransformerConfig.from_preset("B-dk16", h=4).d_k == 16


def test_the_small_configs_are_not_presets_of_the_paper():
    assert "tiny" not in PRESETS and "demo" not in PRESETS
    assert all(name == "base" or name == "big" or name[0] in "ABCDE" for name in PRESETS)
    assert small_config("tiny").d_model < 512
    with pytest.raises(ValueError, match=r"Unknown small configuration 'huge'; known: tiny, demo"):
        small_config("huge")
    with pytest.raises(ValueError, match=r"Unknown preset 'tiny'.* moved to hf_vanilla_transformer.small_config"):
        VanillaTransformerConfig.from_preset("tiny")


def test_d_k_defaults_to_d_model_over_h_and_may_differ():
    assert VanillaTransformerConfig(d_model=96, h=3).d_k == 32
    config = VanillaTransformerConfig(d_model=100, h=3, d_k=16, d_v=20)
    assert (config.d_k, config.d_v) == (16, 20)


def test_attribute_map():
    config = VanillaTransformerConfig.from_preset("big")
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (1024, 16, 6)


BAD_VALUES = [
    # values the library's @strict type check refuses
    ({"d_model": 51.2}, r"Field 'd_model' expected int, got float \(value: 51.2\)"),
    ({"norm_first": "yes"}, r"Field 'norm_first' expected bool, got str \(value: 'yes'\)"),
    ({"dropout": "0.1"}, r"Field 'dropout' with value '0.1' doesn't match any type"),
    # values the model's validate_* methods refuse
    ({"d_model": 100, "h": 3}, r"h=3 does not divide d_model=100"),
    ({"d_model": 0}, r"d_model=0 is invalid: expected an integer >= 1"),
    ({"d_ff": -1}, r"d_ff=-1 is invalid"),
    ({"h": 0}, r"h=0 is invalid"),
    ({"d_k": 0}, r"d_k=0 is invalid"),
    ({"encoder_layers": 0}, r"encoder_layers=0 is invalid"),
    ({"vocab_size": 0}, r"vocab_size=0 is invalid"),
    ({"dropout": 1.0}, r"dropout=1.0 is invalid: expected a probability in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout=-0.1 is invalid"),
    ({"attention_dropout": 1.5}, r"attention_dropout=1.5 is invalid"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0 is invalid"),
    ({"layer_norm_eps": 0.0}, r"layer_norm_eps=0.0 is invalid: expected a finite positive float"),
    (
        {"position_encoding": "rotary"},
        r"position_encoding='rotary' is invalid: expected one of \('sinusoidal', 'learned'\)",
    ),
    ({"initializer": "kaiming"}, r"initializer='kaiming' is invalid"),
    ({"pad_token_id": 37000}, r"pad_token_id=37000 is invalid: expected None or a token id in \[0, vocab_size=37000\)"),
    ({"eos_token_id": -1}, r"eos_token_id=-1 is invalid"),
    ({"decoder_start_token_id": None}, r"decoder_start_token_id=None is invalid"),
    ({"max_position_embeddings": 0}, r"max_position_embeddings=0 is invalid"),
    ({"init_std": -1.0}, r"init_std=-1.0 is invalid"),
]


@pytest.mark.parametrize("values, message", BAD_VALUES)
def test_bad_values_raise_the_librarys_validation_error(values, message):
    with pytest.raises(StrictDataclassError, match=message):
        VanillaTransformerConfig(**values)


def test_any_positive_layer_norm_eps_is_valid():
    # transformers' common tests set layer_norm_eps=1.0; the paper gives no epsilon.
    assert VanillaTransformerConfig(layer_norm_eps=1.0).layer_norm_eps == 1.0
    assert VanillaTransformerConfig(layer_norm_eps=1e-12).layer_norm_eps == 1e-12


def test_assignment_is_type_checked_and_validate_checks_values():
    config = small_config("tiny")
    with pytest.raises(StrictDataclassError, match=r"Field 'h' expected int, got str"):
        config.h = "8"
    config.dropout = 1.5  # values are checked as a whole (fields depend on each other): by validate()
    with pytest.raises(StrictDataclassError, match=r"dropout=1.5 is invalid"):
        config.validate()


@pytest.mark.parametrize("values, message", BAD_VALUES[:2] + BAD_VALUES[4:9] + BAD_VALUES[10:12] + BAD_VALUES[15:18])
def test_bad_values_in_an_edited_config_json(tmp_path, values, message):
    small_config("tiny").save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))
    message = message.replace("vocab_size=37000", "vocab_size=128")  # the tiny config's vocabulary
    with pytest.raises(StrictDataclassError, match=message):
        VanillaTransformerConfig.from_pretrained(tmp_path)
    with pytest.raises(StrictDataclassError, match=message):
        AutoConfig.from_pretrained(tmp_path)


def test_save_refuses_an_invalid_mutated_config(tmp_path):
    config = small_config("tiny")
    config.save_pretrained(tmp_path)
    before = (tmp_path / "config.json").read_text()
    config.dropout = 2.0
    with pytest.raises(StrictDataclassError, match=r"dropout=2.0 is invalid"):
        config.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == before  # nothing saved is lost


def test_round_trip_and_auto_config(tmp_path):
    config = VanillaTransformerConfig.from_preset("B-dk16", vocab_size=1000)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is VanillaTransformerConfig
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop(loaded.to_dict()) == drop(config.to_dict())


def test_every_preset_builds_a_valid_config():
    for name in PRESETS:
        VanillaTransformerConfig.from_preset(name)


def test_the_librarys_attribute_names_set_the_papers_fields_before_d_k_is_derived():
    config = VanillaTransformerConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3)
    assert (config.d_model, config.h, config.d_k, config.d_v, config.encoder_layers) == (64, 4, 16, 16, 3)
    assert VanillaTransformerConfig(num_attention_heads=16).d_k == 32


@pytest.mark.parametrize("field", ["layer_norm_eps", "init_std"])
def test_infinite_floats_are_refused(field):
    with pytest.raises(StrictDataclassError, match=rf"{field}=inf is invalid"):
        VanillaTransformerConfig(**{field: float("inf")})
