"""Configuration of the Transformer of "Attention Is All You Need" (Vaswani et al. 2017).

The field names are the paper's (§3.2.2, §3.3, Table 3). The defaults are the base model of Table 3;
`VanillaTransformerConfig.from_preset` builds every other row of Table 3. This module does not import torch.

Everything that is not in the paper is a named field that is off by default:
`attention_dropout`, `activation_dropout` (0.0), `norm_first` (False), and the fields that existing checkpoints
(OPUS-MT / Marian, fairseq; see `convert.py`) need: `activation_function` ("relu"), `sinusoid_layout`
("interleaved"), `sinusoid_frequencies` ("paper"), `position_offset` (0), `output_bias` (False),
`share_encoder_decoder_embeddings` (follows `tie_word_embeddings`) and `decoder_vocab_size` (None: one vocabulary).

Validation is transformers 5's: `@strict` checks each field's type and the `validate_*` methods below check the
values, at construction, in `validate()` and before `save_pretrained` writes anything. A bad value raises
`huggingface_hub.errors.StrictDataclassError` whose message names the field, the value and what is allowed.
"""

import copy
import difflib
import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import logging

from .compatibility_vanilla_transformer import PACKAGE_VERSION

logger = logging.get_logger(__name__)

POSITION_ENCODINGS = ("sinusoidal", "learned")
INITIALIZERS = ("xavier_uniform", "normal")
# transformers' ACT2FN names: "relu" is the paper's (§3.3); OPUS-MT uses "swish" (= "silu"), fairseq also "gelu" and
# "gelu_new" (its tanh approximation, fairseq's "gelu_accurate").
ACTIVATIONS = ("relu", "gelu", "gelu_new", "swish", "silu")
SINUSOID_LAYOUTS = ("interleaved", "concatenated")
SINUSOID_FREQUENCIES = ("paper", "tensor2tensor")

# Sane bounds, checked before anything is allocated: a config.json edited to `encoder_layers: 1000000` would otherwise
# spend minutes building modules and `d_model: 1e9` would reach the allocator. DeepNet (Wang et al. 2022) trained
# 1000 layers; the widths allow 64x the big model; 10^11 parameters are 400 GB in float32.
MAX_LAYERS = 1000
MAX_WIDTH = 65536
MAX_VOCABULARY = 2**24
MAX_POSITIONS = 2**20
MAX_PARAMETERS = 10**11

# Keys a config.json may hold besides this class's fields: the library's own (written by save_pretrained or by
# transformers 4.x, or given to from_pretrained) and the generation parameters that the library moves out of model
# configs. Any other key is named in a warning, so that a misspelt field (`dropuot`) is not silently kept.
LIBRARY_CONFIG_KEYS = frozenset(
    {
        "auto_map", "name_or_path", "_name_or_path", "num_labels", "tokenizer_class", "prefix", "task_specific_params",
        "finetuning_task", "is_decoder", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder",
        "pruned_heads", "torchscript", "use_bfloat16", "tf_legacy_loss", "sep_token_id", "output_attentions",
        "attn_implementation", "experts_implementation", "_attn_implementation_autoset", "custom_pipelines",
        "transformers_version", "torch_dtype", "_commit_hash", "_from_model_config",
        "max_new_tokens_over_source", "length_penalty_type",  # this model's decoding options (generation config)
    }
)  # fmt: skip


@strict
class VanillaTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of [`VanillaTransformerModel`] and [`VanillaTransformerForConditionalGeneration`].

    Args:
        vocab_size (`int`, defaults to 37000):
            Size of the one vocabulary shared by source and target (§5.1: ~37000 BPE tokens for EN-DE).
        d_model (`int`, defaults to 512): Width of every sub-layer output and of the embeddings (§3.1).
        d_ff (`int`, defaults to 2048): Inner width of the position-wise feed-forward networks (§3.3).
        h (`int`, defaults to 8): Number of attention heads (§3.2.2).
        d_k (`int`, *optional*): Width of each head's queries and keys; defaults to `d_model // h`.
            Table 3 row (B) changes `d_k` alone, so `h * d_k` need not equal `d_model`.
        d_v (`int`, *optional*): Width of each head's values; defaults to `d_model // h`.
        encoder_layers / decoder_layers (`int`, defaults to 6): N, the depth of each stack (§3.1).
        dropout (`float`, defaults to 0.1): P_drop, on every sub-layer output and on the embedding sums (§5.4).
        attention_dropout (`float`, defaults to 0.0): dropout on the attention weights.
            Deviation from the paper when non-zero (tensor2tensor v2 and fairseq use 0.1).
        activation_dropout (`float`, defaults to 0.0): dropout after the ReLU inside the FFN.
            Deviation from the paper when non-zero.
        label_smoothing (`float`, defaults to 0.0): eps_ls used by the model's own loss when `labels` are given
            (§5.4; the Table 3 presets set 0.1). PyTorch's convention: eps / V on every class, the gold one
            included (fairseq and tensor2tensor put eps / (V - 1) on the others).
        layer_norm_eps (`float`, defaults to 1e-6): the layer-norm epsilon, any positive number; the paper gives
            none, 1e-6 is the authors' tensor2tensor value.
        position_encoding (`str`, defaults to `"sinusoidal"`): `"sinusoidal"` is §3.5 with interleaved sin/cos
            and works for any length; `"learned"` is Table 3 row (E), one table per stack of
            `max_position_embeddings` rows.
        max_position_embeddings (`int`, defaults to 1024): longest input with `position_encoding="learned"`;
            unused by the sinusoids.
        norm_first (`bool`, defaults to False): pre-LN sub-layers `x + Sublayer(LayerNorm(x))` with a final norm
            per stack (Xiong et al. 2020). Deviation from the paper, which is post-LN.
        scale_embedding (`bool`, defaults to True): multiply the embeddings by sqrt(d_model) (§3.4).
        tie_word_embeddings (`bool`, defaults to True): the pre-softmax projection is the target embedding
            matrix (§3.4). Deviation from the paper when False.
        share_encoder_decoder_embeddings (`bool`, *optional*): the source and target embeddings are one matrix
            (§3.4, a shared vocabulary); defaults to `tie_word_embeddings`, so `tie_word_embeddings=False` alone
            unties all three matrices. Deviation from the paper when False.
        decoder_vocab_size (`int`, *optional*): size of a separate target vocabulary (OPUS-MT and fairseq
            models with two dictionaries); needs `share_encoder_decoder_embeddings=False`. None: one vocabulary.
        activation_function (`str`, defaults to `"relu"`): the FFN's non-linearity, one of `ACTIVATIONS`
            (transformers' names). Deviation from the paper when not "relu" (OPUS-MT: "swish").
        sinusoid_layout (`str`, defaults to `"interleaved"`): §3.5 puts sin and cos at even and odd dimensions;
            `"concatenated"` is the [sin | cos] halves of tensor2tensor, fairseq and Marian. Deviation.
        sinusoid_frequencies (`str`, defaults to `"paper"`): `"paper"` is 1 / 10000^(2i / d_model);
            `"tensor2tensor"` is 1 / 10000^(i / (d_model/2 - 1)) (tensor2tensor's and fairseq's). Deviation.
        position_offset (`int`, defaults to 0): the position of the first token (fairseq: padding_idx + 1 = 2).
            Deviation from the paper when non-zero.
        output_bias (`bool`, defaults to False): a bias on the pre-softmax projection (Marian's
            `final_logits_bias`). Deviation from the paper, whose output layer is the embedding matrix alone.
        initializer (`str`, defaults to `"xavier_uniform"`): initialisation of the linear layers; the paper
            gives none, Xavier-uniform is what tensor2tensor and fairseq use. `"normal"` uses `init_std`.
        init_std (`float`, *optional*): standard deviation of the embedding initialisation (and of the linear
            layers with `initializer="normal"`); defaults to `d_model ** -0.5`, so that the scaled embeddings
            have unit variance.
        pad_token_id, bos_token_id, eos_token_id, unk_token_id, decoder_start_token_id (`int`):
            special token ids, each in [0, vocab_size); pad, eos and decoder start are required.
    """

    model_type = "vanilla_transformer"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "h",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 37000
    d_model: int = 512
    d_ff: int = 2048
    h: int = 8
    d_k: int | None = None
    d_v: int | None = None
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    label_smoothing: float | int = 0.0
    layer_norm_eps: float | int = 1e-6
    position_encoding: str = "sinusoidal"
    max_position_embeddings: int = 1024
    norm_first: bool = False
    scale_embedding: bool = True
    tie_word_embeddings: bool = True
    share_encoder_decoder_embeddings: bool | None = None
    decoder_vocab_size: int | None = None
    activation_function: str = "relu"
    sinusoid_layout: str = "interleaved"
    sinusoid_frequencies: str = "paper"
    position_offset: int = 0
    output_bias: bool = False
    initializer: str = "xavier_uniform"
    init_std: float | int | None = None
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    unk_token_id: int | None = 3
    decoder_start_token_id: int | None = 1
    is_encoder_decoder: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        # Which version of this package wrote the config.json (None: one from before versions were recorded, 0.2 or
        # earlier); `to_dict` writes the running version, as the library does with `transformers_version`.
        self.vanilla_transformer_version = kwargs.pop("vanilla_transformer_version", None)
        # The library's names (hidden_size, num_attention_heads, num_hidden_layers) set the paper's fields first,
        # so that d_k and d_v below follow them.
        for alias, name in self.attribute_map.items():
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        # transformers configs accept any extra attribute (the library's own tests set several and rebuild the
        # config from its dict), so an unknown key in config.json or the constructor is warned about by name, not
        # refused; the places where a user states changes (from_preset, training's --config_overrides) refuse them.
        if unknown := _describe_unknown_fields(kwargs):
            logger.warning(f"VanillaTransformerConfig has no field(s) {unknown}; they are kept as unused attributes.")
        # d_k = d_v = d_model / h (§3.2.2) unless given; a bad d_model or h is left to validate_architecture.
        if _is_int(self.d_model) and _is_int(self.h) and self.h > 0 and self.d_model % self.h == 0:
            self.d_k = self.d_model // self.h if self.d_k is None else self.d_k
            self.d_v = self.d_model // self.h if self.d_v is None else self.d_v
        if self.share_encoder_decoder_embeddings is None:
            self.share_encoder_decoder_embeddings = self.tie_word_embeddings
        super().__post_init__(**kwargs)

    # ---- validation (run by @strict at construction, by validate() and before save_pretrained) ---------------
    def _invalid(self, name: str, expected: str) -> ValueError:
        return ValueError(f"VanillaTransformerConfig.{name}={getattr(self, name)!r} is invalid: expected {expected}.")

    def validate_architecture(self) -> None:
        super().validate_architecture()
        bounds = {"vocab_size": MAX_VOCABULARY, "d_model": MAX_WIDTH, "d_ff": MAX_WIDTH, "h": MAX_WIDTH,
                  "encoder_layers": MAX_LAYERS, "decoder_layers": MAX_LAYERS, "max_position_embeddings": MAX_POSITIONS,
                  "d_k": MAX_WIDTH, "d_v": MAX_WIDTH, "decoder_vocab_size": MAX_VOCABULARY}  # fmt: skip
        for name, bound in bounds.items():
            value = getattr(self, name)
            if value is not None and value > bound:
                raise self._invalid(name, f"an integer <= {bound} (a sane bound, checked before anything is built)")
        for name in ("vocab_size", "d_model", "d_ff", "h", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise self._invalid(name, "an integer >= 1")
        if self.max_position_embeddings < 1:
            raise self._invalid("max_position_embeddings", "an integer >= 1")
        for name in ("d_k", "d_v"):
            value = getattr(self, name)
            if value is None:
                raise ValueError(
                    f"VanillaTransformerConfig: h={self.h} does not divide d_model={self.d_model}, so {name} cannot "
                    f"default to d_model / h; give h a divisor of d_model or set {name} explicitly."
                )
            if value < 1:
                raise self._invalid(name, "an integer >= 1, or None for d_model // h")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise self._invalid("position_encoding", f"one of {POSITION_ENCODINGS}")
        if self.initializer not in INITIALIZERS:
            raise self._invalid("initializer", f"one of {INITIALIZERS}")
        if self.activation_function not in ACTIVATIONS:
            raise self._invalid("activation_function", f"one of {ACTIVATIONS}")
        if self.sinusoid_layout not in SINUSOID_LAYOUTS:
            raise self._invalid("sinusoid_layout", f"one of {SINUSOID_LAYOUTS}")
        if self.sinusoid_frequencies not in SINUSOID_FREQUENCIES:
            raise self._invalid("sinusoid_frequencies", f"one of {SINUSOID_FREQUENCIES}")
        if self.sinusoid_frequencies == "tensor2tensor" and self.d_model < 4:
            raise self._invalid("sinusoid_frequencies", "'paper' for d_model < 4 (tensor2tensor's divides by d/2 - 1)")
        if self.position_offset < 0:
            raise self._invalid("position_offset", "an integer >= 0")
        if self.decoder_vocab_size is not None:
            if self.decoder_vocab_size < 1:
                raise self._invalid("decoder_vocab_size", "None or an integer >= 1")
            if self.share_encoder_decoder_embeddings:
                raise self._invalid(
                    "decoder_vocab_size",
                    "None when share_encoder_decoder_embeddings=True (one matrix cannot have two vocabularies)",
                )
        if not self.is_encoder_decoder:
            raise self._invalid("is_encoder_decoder", "True: the model is an encoder-decoder")
        if self.h * max(self.d_k, self.d_v) > MAX_WIDTH:
            raise self._invalid("h", f"h * max(d_k, d_v) <= {MAX_WIDTH} (d_k={self.d_k}, d_v={self.d_v})")
        if (count := self.rough_parameter_count()) > MAX_PARAMETERS:
            raise ValueError(
                f"VanillaTransformerConfig describes about {count:.3g} parameters, more than the sane bound "
                f"{MAX_PARAMETERS:.0e} (d_model={self.d_model}, d_ff={self.d_ff}, h={self.h}, "
                f"layers={self.encoder_layers}+{self.decoder_layers}, vocab_size={self.vocab_size}); check the sizes."
            )

    def validate_regularisation(self) -> None:
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise self._invalid(name, "a probability in [0, 1)")
        if not (math.isfinite(self.layer_norm_eps) and self.layer_norm_eps > 0.0):
            raise self._invalid("layer_norm_eps", "a finite positive float such as 1e-6")
        if self.init_std is not None and not (math.isfinite(self.init_std) and 0.0 < self.init_std <= 1.0):
            raise self._invalid("init_std", "a positive float <= 1, or None for d_model ** -0.5")

    def validate_token_ids(self) -> None:
        # The library only warns about ids outside the vocabulary; here they would index past the embedding. With
        # two vocabularies the ids are checked against the smaller (the tokenizers' special tokens are in both).
        limit = min(self.vocab_size, self.target_vocab_size)
        bound = f"[0, vocab_size={self.vocab_size})"
        if self.decoder_vocab_size is not None:
            bound = f"[0, {limit}) (vocab_size={self.vocab_size}, decoder_vocab_size={self.decoder_vocab_size})"
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < limit:
                raise self._invalid(name, f"None or a token id in {bound}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if getattr(self, name) is None:
                raise self._invalid(name, f"a token id in {bound}; the model needs it")

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["vanilla_transformer_version"] = PACKAGE_VERSION
        return output

    # ---- derived values ------------------------------------------------------------------------------------
    @property
    def target_vocab_size(self) -> int:
        """The decoder's (and the output layer's) vocabulary: `decoder_vocab_size`, or the one shared `vocab_size`."""
        return self.vocab_size if self.decoder_vocab_size is None else self.decoder_vocab_size

    def rough_parameter_count(self) -> int:
        """The weight matrices' size (no biases or norms), for the sane bound; `paper.paper_parameter_count` is the
        exact formula."""
        d, f = self.d_model, self.d_ff
        attention = d * self.h * (2 * self.d_k + 2 * self.d_v)  # the q, k, v and output projections
        layer = attention + 2 * d * f
        return (
            self.encoder_layers * layer
            + self.decoder_layers * 2 * layer
            + d * (self.vocab_size + self.target_vocab_size)
        )

    @property
    def embedding_init_std(self) -> float:
        return self.init_std if self.init_std is not None else self.d_model**-0.5

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The config itself, except for the decoder's view (`decoder=True`) of a model whose stacks differ: the
        library sizes a decoder's caches (`StaticCache(config)`) by `num_hidden_layers`, which is the encoder's depth
        here (as in Marian), and reads the decoder's vocabulary as `vocab_size`. (The library's default for flat
        encoder-decoder configs renames every `decoder_*` field, which would set `vocab_size=None` here.)"""
        if not decoder or encoder:
            return self
        if self.decoder_layers == self.encoder_layers and self.target_vocab_size == self.vocab_size:
            return self
        view = copy.copy(self)  # no re-validation: only the depth and the vocabulary change
        view.__dict__["encoder_layers"] = self.decoder_layers
        view.__dict__["vocab_size"] = self.target_vocab_size
        return view

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VanillaTransformerConfig":
        """A configuration of Table 3, with `overrides` applied on top.

        `from_preset("base")` and `from_preset("big")` are the paper's two models; the rows (A) to (E) are
        named after the row and the value they change, e.g. `"A-h16"`, `"B-dk32"`, `"C-N2"`, `"D-ls0.2"`,
        `"E-learned"`. `PRESETS` lists them all. d_k and d_v follow `d_model / h` unless the row or the
        overrides set them, so `from_preset("base", h=16)` is row (A)'s d_k = 32.
        """
        if name not in PRESETS:
            moved = " (the small test configurations moved to hf_vanilla_transformer.small_config)"
            raise ValueError(
                f"Unknown preset {name!r}; known presets: {', '.join(PRESETS)}"
                + (moved if name in ("tiny", "demo") else "")
                + "."
            )
        if unknown := _describe_unknown_fields(overrides, library_keys=False):
            raise ValueError(f"Unknown configuration field(s) {unknown} for VanillaTransformerConfig.from_preset.")
        return cls(**{**PRESETS[name], **overrides})


def _describe_unknown_fields(given: dict[str, Any], library_keys: bool = True) -> str:
    """The keys of `given` that are not fields of VanillaTransformerConfig (nor, with `library_keys`, keys of the
    library), each with the nearest field; "" when there are none."""
    fields = VanillaTransformerConfig.__dataclass_fields__
    allowed = set(fields) | set(VanillaTransformerConfig.attribute_map)
    if library_keys:
        from transformers import GenerationConfig

        allowed |= LIBRARY_CONFIG_KEYS | set(GenerationConfig._get_default_generation_params())
    unknown = [key for key in given if key not in allowed]
    hints = [difflib.get_close_matches(key, fields, n=1) for key in unknown]
    return ", ".join(
        f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for key, hint in zip(unknown, hints, strict=True)
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Table 3 of the paper. Empty cells equal the base row; a row states only what it changes. d_k and d_v are
# d_model / h except in row (B), which sets d_k alone.
_BASE: dict[str, Any] = {
    "d_model": 512,
    "d_ff": 2048,
    "h": 8,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "dropout": 0.1,
    "label_smoothing": 0.1,
}


def _row(**changes: Any) -> dict[str, Any]:
    return {**_BASE, **changes}


PRESETS: dict[str, dict[str, Any]] = {
    "base": _row(),
    "A-h1": _row(h=1),
    "A-h4": _row(h=4),
    "A-h16": _row(h=16),
    "A-h32": _row(h=32),
    "B-dk16": _row(d_k=16, d_v=64),
    "B-dk32": _row(d_k=32, d_v=64),
    "C-N2": _row(encoder_layers=2, decoder_layers=2),
    "C-N4": _row(encoder_layers=4, decoder_layers=4),
    "C-N8": _row(encoder_layers=8, decoder_layers=8),
    "C-d256": _row(d_model=256),
    "C-d1024": _row(d_model=1024),
    "C-dff1024": _row(d_ff=1024),
    "C-dff4096": _row(d_ff=4096),
    "D-dropout0.0": _row(dropout=0.0),
    "D-dropout0.2": _row(dropout=0.2),
    "D-ls0.0": _row(label_smoothing=0.0),
    "D-ls0.2": _row(label_smoothing=0.2),
    "E-learned": _row(position_encoding="learned"),
    "big": _row(d_model=1024, d_ff=4096, h=16, dropout=0.3),
}

__all__ = ["PRESETS", "VanillaTransformerConfig"]
