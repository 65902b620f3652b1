"""The Transformer of "Attention Is All You Need" (Vaswani et al. 2017) as a Hugging Face model.

The file follows the paper: scaled dot-product and multi-head attention (§3.2), the position-wise feed-forward
network (§3.3), embeddings and the interleaved sinusoidal positional encoding (§3.4, §3.5), the residual sub-layer
and the post-LN encoder and decoder layers and stacks (§3.1, §5.4), then the Hugging Face glue. The decoding policy
of §6.1 is in `generation_vanilla_transformer.py`, the loss of §5.4 in `loss_vanilla_transformer.py`.

Notation in the shape comments:
    B  batch size               S  source length             T  target length (this step's tokens)
    h  attention heads          d_k, d_v  per-head widths     d  d_model          V  vocab_size
"""

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, is_torchdynamo_compiling, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .compatibility_vanilla_transformer import check_transformers_version, saved_with_stale_code
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .generation_vanilla_transformer import VanillaTransformerGenerationMixin, paper_generation_config
from .loss_vanilla_transformer import check_label_values, label_smoothed_cross_entropy

logger = logging.get_logger(__name__)

check_transformers_version()  # this file also runs as a saved folder's remote code, under any transformers


# --------------------------------------------------------------------------------------------------------------
# §3.2.1 Scaled dot-product attention
# --------------------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, h, T, d_k)
    key: torch.Tensor,  # (B, h, S, d_k)
    value: torch.Tensor,  # (B, h, S, d_v)
    attention_mask: torch.Tensor | None,  # (B, 1, T, S) additive or boolean, or None
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: softmax(Q K^T / sqrt(d_k)) V, with masked positions at the dtype's minimum before the softmax."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # (B, h, T, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    # Deviation from the paper when dropout > 0 (config.attention_dropout): §5.4 has no attention dropout.
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (B, h, T, d_v)
    return output.transpose(1, 2).contiguous(), weights  # (B, T, h, d_v)


# --------------------------------------------------------------------------------------------------------------
# §3.2.2 Multi-head attention
# --------------------------------------------------------------------------------------------------------------
class VanillaTransformerAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O with head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The projections of all heads are one linear layer each (with biases, as in the authors' tensor2tensor code):
    `q_proj` is W^Q, `k_proj` W^K, `v_proj` W^V, `o_proj` W^O. `d_k` and `d_v` are independent of `d_model / h`
    (Table 3 row B).
    """

    def __init__(self, config: VanillaTransformerConfig, layer_idx: int, is_causal: bool, is_cross_attention: bool):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        # Read by the SDPA / flash backends when no mask is given: the encoder and cross-attention must not be causal.
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.h, self.d_k, self.d_v = config.h, config.d_k, config.d_v
        self.scaling = self.d_k**-0.5
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.d_model, self.h * self.d_k)  # W^Q
        self.k_proj = nn.Linear(config.d_model, self.h * self.d_k)  # W^K
        self.v_proj = nn.Linear(config.d_model, self.h * self.d_v)  # W^V
        self.o_proj = nn.Linear(self.h * self.d_v, config.d_model)  # W^O

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, d): the queries
        key_value_states: torch.Tensor | None = None,  # (B, S, d): the encoder output, for cross-attention
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, length, self.h, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

        layer_cache = None
        if cache is not None:
            layer_cache = cache.cross_attention_cache if self.is_cross_attention else cache.self_attention_cache

        if self.is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            # The encoder output does not change while decoding: its keys and values are computed once.
            key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
        else:
            source = key_value_states if self.is_cross_attention else hidden_states
            source_length = source.shape[1]
            key = (
                self.k_proj(source).view(batch_size, source_length, self.h, self.d_k).transpose(1, 2)
            )  # (B, h, S, d_k)
            value = (
                self.v_proj(source).view(batch_size, source_length, self.h, self.d_v).transpose(1, 2)
            )  # (B, h, S, d_v)
            if layer_cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if self.is_cross_attention:
                    cache.is_updated[self.layer_idx] = True

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch_size, length, self.h * self.d_v)  # Concat(head_1, ..., head_h)
        return self.o_proj(output), weights


# --------------------------------------------------------------------------------------------------------------
# §3.3 Position-wise feed-forward network
# --------------------------------------------------------------------------------------------------------------
class VanillaTransformerFeedForward(nn.Module):
    """Eq. 2: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, with `fc1` = W_1 and `fc2` = W_2.

    Deviation from the paper when `config.activation_function` is not "relu" (OPUS-MT's swish, fairseq's gelu).
    """

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)  # W_1, b_1
        self.fc2 = nn.Linear(config.d_ff, config.d_model)  # W_2, b_2
        self.activation = F.relu if config.activation_function == "relu" else ACT2FN[config.activation_function]
        # Deviation from the paper when non-zero (config.activation_dropout): §5.4 has no dropout inside the FFN.
        self.activation_dropout = config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.fc1(x))  # max(0, x W_1 + b_1): (B, T, d_ff)
        x = F.dropout(x, p=self.activation_dropout, training=self.training)
        return self.fc2(x)  # (B, T, d)


# --------------------------------------------------------------------------------------------------------------
# §3.4 Embeddings and §3.5 positional encoding
# --------------------------------------------------------------------------------------------------------------
def sinusoidal_position_encoding(
    positions: torch.Tensor,
    d_model: int,
    dtype: torch.dtype = torch.float32,
    layout: str = "interleaved",
    frequencies: str = "paper",
) -> torch.Tensor:
    """§3.5, interleaved: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    Computed for the positions asked for (a tensor, so any length works and a traced graph keeps the length
    symbolic). The deviations existing checkpoints need (config `sinusoid_layout`, `sinusoid_frequencies`):
    `layout="concatenated"` puts all sines before all cosines ([sin | cos], tensor2tensor, fairseq, Marian);
    `frequencies="tensor2tensor"` uses 1 / 10000^(i / (d_model/2 - 1)) for i < d_model/2 (tensor2tensor, fairseq).
    """
    if frequencies == "paper":
        two_i = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)  # (ceil(d/2),)
        inverse_frequencies = 1.0 / torch.pow(10000.0, two_i / d_model)
    else:  # "tensor2tensor": an odd d_model gets a zero last column, as in fairseq
        i = torch.arange(d_model // 2, device=positions.device, dtype=torch.float32)
        inverse_frequencies = torch.exp(i * -(math.log(10000.0) / (d_model // 2 - 1)))
    angles = positions.to(torch.float32)[:, None] * inverse_frequencies  # (T, ceil(d/2))
    if layout == "interleaved":
        encoding = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)  # (T, 2*ceil(d/2))
    else:  # "concatenated"
        encoding = torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1)
    if encoding.shape[-1] < d_model:
        encoding = F.pad(encoding, (0, d_model - encoding.shape[-1]))
    return encoding[:, :d_model].to(dtype)  # (T, d)


class VanillaTransformerEmbeddings(nn.Module):
    """Dropout(sqrt(d_model) * E[x] + PE(pos)): the input of either stack (§3.4, §3.5, §5.4).

    `embed_tokens` is the one matrix E that both stacks (and the output projection) share when
    `share_encoder_decoder_embeddings` and `tie_word_embeddings`; `embed_positions` is Table 3 row (E)'s learned table, or None for the sinusoids.
    """

    def __init__(self, config: VanillaTransformerConfig, vocab_size: int):
        super().__init__()
        self.d_model = config.d_model
        self.embed_tokens = nn.Embedding(vocab_size, config.d_model)
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        # Deviations that existing checkpoints need (0, "interleaved", "paper" are §3.5): see the config.
        self.position_offset = config.position_offset
        self.sinusoid_layout = config.sinusoid_layout
        self.sinusoid_frequencies = config.sinusoid_frequencies
        self.embed_positions = None
        if config.position_encoding == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, d): rows of E, scaled here as input_ids are
        past_length: int | torch.Tensor = 0,  # positions start here (the tokens already in the cache)
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        positions = torch.arange(length, device=inputs_embeds.device) + (past_length + self.position_offset)  # (T,)
        if self.embed_positions is None:
            position_encoding = sinusoidal_position_encoding(
                positions, self.d_model, inputs_embeds.dtype, self.sinusoid_layout, self.sinusoid_frequencies
            )
        else:
            last = past_length + self.position_offset + length
            if isinstance(past_length, int) and last > self.embed_positions.num_embeddings:
                raise ValueError(
                    f"Position {last - 1} is past max_position_embeddings="
                    f"{self.embed_positions.num_embeddings} of the learned positional embeddings "
                    "(position_encoding='learned'); use shorter inputs, or a model with "
                    "position_encoding='sinusoidal', which has no length limit."
                )
            position_encoding = self.embed_positions(positions).to(inputs_embeds.dtype)
        return self.dropout(inputs_embeds * self.scale + position_encoding)  # (B, T, d)


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Token ids outside the vocabulary would fail deep inside the embedding (or as a device-side assert). The range
    check reads the ids, so it runs in eager mode only: torch.compile and torch.export trace the model without it."""
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"{name} must hold token ids of dtype torch.int64 (or torch.int32), got {input_ids.dtype}; narrower "
            "integers may already have wrapped, and floats or booleans are not token ids."
        )
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}.")
    if input_ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input_ids.shape)}); give at least one token per sequence.")
    if is_torchdynamo_compiling():
        return
    low, high = torch.aminmax(input_ids)
    if low < 0 or high >= vocab_size:
        bad = int(low) if low < 0 else int(high)
        raise ValueError(f"{name} contains token id {bad}, outside the vocabulary [0, vocab_size={vocab_size}).")


def check_labels(labels: torch.Tensor, source: torch.Tensor | None, encoder_outputs: Any, vocab_size: int) -> None:
    if labels.dim() != 2 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"labels must be token ids of shape (batch_size, target_length) and dtype torch.int64, got shape "
            f"{tuple(labels.shape)} and dtype {labels.dtype}."
        )
    check_label_values(labels, vocab_size)  # before the shifted copy is checked (and named) as decoder_input_ids
    if source is None and encoder_outputs is not None:
        source = encoder_outputs[0]
    if source is not None and source.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels have batch size {labels.shape[0]} but the source has {source.shape[0]}; give one row of labels "
            "per source sentence."
        )


def check_inputs_embeds(inputs_embeds: torch.Tensor, d_model: int, name: str, dtype: torch.dtype) -> None:
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != d_model or inputs_embeds.dtype != dtype:
        raise ValueError(
            f"{name} must be a tensor of shape (batch_size, sequence_length, d_model={d_model}) and the model's "
            f"dtype {dtype}, got shape {tuple(inputs_embeds.shape)} and dtype {inputs_embeds.dtype}."
        )
    if inputs_embeds.shape[1] == 0:
        raise ValueError(f"{name} has zero length (shape {tuple(inputs_embeds.shape)}).")


def check_attention_mask(
    attention_mask: torch.Tensor | None, shape: torch.Size, name: str, ids_name: str, values: bool = True
) -> None:
    """A padding mask is (batch_size, length) of 1 (attend) and 0 (padding). Other values would be read as 1 by the
    masking code but summed as they are by length limits, so they are refused (in eager mode: the check reads the
    values) rather than half-used; so are the library's 4-D masks, which this model does not document."""
    if attention_mask is None:
        return
    if attention_mask.dim() != 2:
        raise ValueError(
            f"{name} must have shape (batch_size, sequence_length) = {tuple(shape)}, with 1 for tokens and 0 for "
            f"padding; got shape {tuple(attention_mask.shape)}."
        )
    if attention_mask.shape != shape:
        raise ValueError(
            f"{name} has shape {tuple(attention_mask.shape)} but {ids_name} has shape {tuple(shape)}; they must match."
        )
    if values and not is_torchdynamo_compiling() and attention_mask.dtype != torch.bool:
        other = (attention_mask != 0) & (attention_mask != 1)
        if other.any():
            raise ValueError(
                f"{name} holds {attention_mask[other][0].item()}; expected only 1 (token) and 0 (padding)."
            )


# --------------------------------------------------------------------------------------------------------------
# §3.1 Encoder and decoder layers: every sub-layer is LayerNorm(x + Dropout(Sublayer(x))) (§5.4)
# --------------------------------------------------------------------------------------------------------------
class VanillaTransformerResidual(nn.Module):
    """One sub-layer's residual connection and layer norm: LayerNorm(x + Dropout(Sublayer(x))) (§3.1, §5.4).

    Deviation from the paper when `config.norm_first`: pre-LN, x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.layer_norm(x)))
        return self.layer_norm(x + self.dropout(sublayer(x)))


class VanillaTransformerEncoderLayer(GradientCheckpointingLayer):
    """Self-attention, then the feed-forward network, each in its residual sub-layer (§3.1)."""

    def __init__(self, config: VanillaTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaTransformerAttention(config, layer_idx, is_causal=False, is_cross_attention=False)
        self.self_attn_residual = VanillaTransformerResidual(config)
        self.ffn = VanillaTransformerFeedForward(config)
        self.ffn_residual = VanillaTransformerResidual(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        x = self.self_attn_residual(
            hidden_states, lambda y: self.self_attn(y, attention_mask=attention_mask, **kwargs)[0]
        )
        return self.ffn_residual(x, self.ffn)  # (B, S, d)


class VanillaTransformerDecoderLayer(GradientCheckpointingLayer):
    """Masked self-attention, attention over the encoder output, then the feed-forward network (§3.1)."""

    def __init__(self, config: VanillaTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaTransformerAttention(config, layer_idx, is_causal=True, is_cross_attention=False)
        self.self_attn_residual = VanillaTransformerResidual(config)
        self.cross_attn = VanillaTransformerAttention(config, layer_idx, is_causal=False, is_cross_attention=True)
        self.cross_attn_residual = VanillaTransformerResidual(config)
        self.ffn = VanillaTransformerFeedForward(config)
        self.ffn_residual = VanillaTransformerResidual(config)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, d)
        attention_mask: torch.Tensor | None,  # causal self-attention mask, or None for SDPA's is_causal
        encoder_hidden_states: torch.Tensor,  # (B, S, d)
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        def self_attn(y: torch.Tensor) -> torch.Tensor:
            return self.self_attn(y, attention_mask=attention_mask, cache=cache, **kwargs)[0]

        def cross_attn(y: torch.Tensor) -> torch.Tensor:
            return self.cross_attn(
                y,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                cache=cache,
                **kwargs,
            )[0]

        x = self.self_attn_residual(hidden_states, self_attn)
        x = self.cross_attn_residual(x, cross_attn)
        return self.ffn_residual(x, self.ffn)  # (B, T, d)


# --------------------------------------------------------------------------------------------------------------
# Hugging Face glue: pretrained base class, the two stacks, the model and the model with the output projection
# --------------------------------------------------------------------------------------------------------------
# Checkpoints saved before the modules took the library's names (the demo's, 2026-11) load through this mapping.
LEGACY_KEY_MAPPING = {
    r"_attn\.w_([qkvo])\.": r"_attn.\1_proj.",  # self_attn.w_q -> self_attn.q_proj, cross_attn.w_o -> ...o_proj
    r"\.ffn\.w_([12])\.": r".ffn.fc\1.",
    r"\.(self_attn|cross_attn|ffn)_norm\.": r".\1_residual.layer_norm.",
    r"(encoder|decoder)\.embed_tokens\.": r"\1.embeddings.embed_tokens.",
    r"(encoder|decoder)\.embed_positions\.learned\.": r"\1.embeddings.embed_positions.",
}


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    """A `load_state_dict` pre-hook: state dicts with the names of before 2026-11 (a 0.1 Trainer checkpoint, which the
    Trainer loads with `load_state_dict`, not `from_pretrained`) get the current names."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + _apply_legacy_mapping(key[len(prefix) :])
        if new != key and new not in state_dict:
            state_dict[new] = state_dict.pop(key)


def _apply_legacy_mapping(key: str) -> str:
    for pattern, replacement in LEGACY_KEY_MAPPING.items():
        key = re.sub(pattern, replacement, key)
    return key


def _forget_legacy_renames(model: PreTrainedModel) -> None:
    """transformers keeps the renames a load used and reverts them in `save_pretrained` (to write the original
    format). The old names are not a format to write again: a folder loaded through LEGACY_KEY_MAPPING is saved
    with the current names."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [
            c for c in conversions if not set(getattr(c, "source_patterns", ())) <= LEGACY_KEY_MAPPING.keys()
        ]


def _warn_if_saved_with_stale_code(model: PreTrainedModel) -> None:
    """A folder saved by this package before 0.3.0 carries code files (for `trust_remote_code`) that decode wrongly
    under transformers >= 5.24. Loading it here runs the installed package's code, which is right; its users who load
    it as remote code get the old files, so say how to refresh them."""
    config = model.config
    if getattr(config, "auto_map", None) and saved_with_stale_code(config.vanilla_transformer_version):
        logger.warning(
            f"{config.name_or_path or 'This folder'} was saved by hf_vanilla_transformer "
            f"{config.vanilla_transformer_version or 'before 0.3.0'}: its code files (modeling_vanilla_transformer.py "
            "and the others) decode wrongly with transformers >= 5.24 when the folder is loaded with "
            "trust_remote_code=True where this package is not installed. This load uses the installed package and is "
            "correct. Refresh the folder with model.save_pretrained(folder) and, if it is on the Hub, push its code "
            "files again (vanilla-transformer-push-to-hub)."
        )


def _umask() -> int:
    try:  # Linux: read without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _comparable_key(key: str) -> str:
    """A checkpoint or model key without the base model's prefix, with the current module names."""
    key = _apply_legacy_mapping(key)
    return key[len("model.") :] if key.startswith("model.") else key


class _CheckpointFile:
    """The names, dtypes and shapes of a checkpoint file's tensors without reading their data: a safetensors header,
    or a PyTorch file (pytorch_model.bin) memory-mapped with weights_only."""

    def __init__(self, path: str):
        self.path = str(path)
        self.safetensors = self.path.endswith(".safetensors")
        if self.safetensors:
            with safe_open(self.path, framework="pt") as handle:
                self.entries = {
                    key: (handle.get_slice(key).get_dtype(), tuple(handle.get_slice(key).get_shape()))
                    for key in handle.keys()  # noqa: SIM118 (a safetensors handle is not iterable)
                }
        else:
            self.state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            self.entries = {key: (str(t.dtype), tuple(t.shape)) for key, t in self.state.items()}

    @staticmethod
    def is_float(dtype: str) -> bool:
        return dtype.startswith(("F", "BF", "torch.float", "torch.bfloat", "torch.half", "torch.double"))

    def tensor(self, key: str) -> torch.Tensor:
        if not self.safetensors:
            return self.state[key]
        with safe_open(self.path, framework="pt") as handle:
            return handle.get_tensor(key)


def check_checkpoint_tensors(
    model: "VanillaTransformerPreTrainedModel", checkpoint_files: list[str], shapes: bool = True
) -> None:
    """Reads the checkpoint's headers (no tensor data) and refuses non-float tensors for float parameters and, with
    `shapes`, tensors of another shape, naming each; then refuses a checkpoint that holds two different matrices
    where the config ties them into one (the library would keep one of them silently)."""
    expected = {_comparable_key(k): t for k, t in model.state_dict().items()}
    stored: dict[str, tuple[_CheckpointFile, str]] = {}  # comparable key -> (file, key)
    wrong_kind, wrong_shape = [], []
    for path in checkpoint_files:
        file = _CheckpointFile(path)
        for key, (dtype, shape) in file.entries.items():
            stored[_comparable_key(key)] = (file, key)
            target = expected.get(_comparable_key(key))
            if target is None:
                continue  # tensors the model has no place for are reported after loading
            if target.is_floating_point() and not file.is_float(dtype):
                wrong_kind.append(f"{key} ({dtype}, for a {str(target.dtype).removeprefix('torch.')} parameter)")
            elif shapes and shape != tuple(target.shape):
                wrong_shape.append(f"{key} (checkpoint {shape}, model {tuple(target.shape)})")
    if wrong_kind:
        raise ValueError(
            f"The checkpoint holds non-float tensors where the model's parameters are floats: {', '.join(wrong_kind[:10])}"
            f"{' ...' if len(wrong_kind) > 10 else ''}. Casting them would give wrong weights; the file is damaged or "
            "not a checkpoint of this model."
        )
    if wrong_shape:
        raise ValueError(
            f"Tensors have other shapes in the checkpoint than in the model: {', '.join(wrong_shape[:10])}"
            f"{' ...' if len(wrong_shape) > 10 else ''}. The config.json does not describe these weights; pass "
            "ignore_mismatched_sizes=True to re-initialise them."
        )
    for tied, source in (model._tied_weights_keys or {}).items():
        if _comparable_key(tied) in stored and _comparable_key(source) in stored:
            (file_a, key_a), (file_b, key_b) = stored[_comparable_key(tied)], stored[_comparable_key(source)]
            if not torch.equal(file_a.tensor(key_a), file_b.tensor(key_b)):
                field = "tie_word_embeddings" if "lm_head" in tied else "share_encoder_decoder_embeddings"
                raise ValueError(
                    f"The checkpoint holds two different matrices {key_a} and {key_b}, but config.json ties them "
                    f"({field}=True), so one would be lost. The config.json does not describe these weights; set "
                    f"{field} to false."
                )


def describe_unexpected_tensors(model: "VanillaTransformerPreTrainedModel", unexpected: list[str]) -> str:
    """The checkpoint's tensors that the model has no place for, each group with the config field it contradicts."""
    config = model.config
    groups: dict[str, list[str]] = {}
    for key in sorted(unexpected):
        name = _comparable_key(key)
        if name.startswith("lm_head.") and not hasattr(model, "lm_head"):
            continue  # the base model loaded from a checkpoint with the output layer
        layer = re.match(r"(encoder|decoder)\.layers\.(\d+)\.", name)
        if layer and int(layer[2]) >= getattr(config, f"{layer[1]}_layers"):
            stack = layer[1]
            reason = f"more {stack} layers than {stack}_layers={getattr(config, f'{stack}_layers')}"
        elif "embed_positions" in name and config.position_encoding != "learned":
            reason = f"learned positions, but position_encoding={config.position_encoding!r}"
        elif "final_norm" in name and not config.norm_first:
            reason = "final layer norms of a pre-LN model, but norm_first=False"
        elif name.startswith("lm_head.") and config.tie_word_embeddings:
            reason = "a separate output layer, but tie_word_embeddings=True"
        elif name.startswith("decoder.embeddings.embed_tokens") and config.share_encoder_decoder_embeddings:
            reason = "a separate decoder embedding, but share_encoder_decoder_embeddings=True"
        else:
            reason = "no such module in this configuration"
        groups.setdefault(reason, []).append(key)
    return "; ".join(
        f"{', '.join(keys[:4])}{f' and {len(keys) - 4} more' if len(keys) > 4 else ''} ({reason})"
        for reason, keys in groups.items()
    )


class VanillaTransformerPreTrainedModel(PreTrainedModel):
    config: VanillaTransformerConfig
    config_class = VanillaTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VanillaTransformerEncoderLayer", "VanillaTransformerDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def post_init(self) -> None:
        super().post_init()
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict[str, str]:
        # The library ties nothing unless config.tie_word_embeddings; here the encoder/decoder sharing is a switch of
        # its own (share_encoder_decoder_embeddings), so `_tied_weights_keys` (full names, see _tied_embeddings) is
        # the whole answer.
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys or {})

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):  # noqa: ANN001, ANN205
        # The library's loading step, after the model was built on the meta device and before any weight is
        # materialised: the checkpoint's headers are read first, so that a tensor of another dtype kind or shape is
        # refused by name before memory is allocated for a model of the wrong size (the library's own shape error
        # names no tensor).
        if (
            state_dict is None
            and checkpoint_files
            and all(str(f).endswith((".safetensors", ".bin")) for f in checkpoint_files)
        ):
            check_checkpoint_tensors(model, checkpoint_files, shapes=not load_config.ignore_mismatched_sizes)
        return PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys)

    @classmethod
    def from_pretrained(cls, *args: Any, allow_missing_weights: bool = False, **kwargs: Any) -> Any:
        """`PreTrainedModel.from_pretrained`, except that a checkpoint missing some of the model's tensors (or
        holding them at other shapes) is an error naming them: transformers would initialise them at random and
        only warn, which turns a damaged checkpoint into a model that silently translates garbage. Pass
        `allow_missing_weights=True` to initialise missing tensors anyway (e.g. when adding layers), and
        `ignore_mismatched_sizes=True` to re-initialise tensors of the wrong shape.

        With `output_loading_info=True` or an explicit `state_dict`, the caller takes charge of what was loaded:
        the library's behaviour and its loading report, no error. Folders saved with the module names of before
        2026-11 (`w_q`, `w_1`, `self_attn_norm`, ...) load through `LEGACY_KEY_MAPPING`.

        Always refused, before any weight is materialised: a tensor whose dtype is not a float where the model's
        parameter is one (an int64 or bool tensor would be cast silently). Refused unless `output_loading_info=True`:
        tensors the model has no place for (a config.json edited to fewer layers, to tied embeddings, to sinusoids
        or to post-LN while the tensors say otherwise), named with the config field they contradict.
        """
        kwargs.setdefault("key_mapping", LEGACY_KEY_MAPPING)
        if kwargs.get("output_loading_info") or "state_dict" in kwargs:
            loaded = super().from_pretrained(*args, **kwargs)
            _forget_legacy_renames(loaded[0] if isinstance(loaded, tuple) else loaded)
            _warn_if_saved_with_stale_code(loaded[0] if isinstance(loaded, tuple) else loaded)
            return loaded
        try:  # tensors of other shapes are refused by name in _load_pretrained_model, before loading
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except Exception as error:
            if "safetensors" in type(error).__module__ or "SafetensorError" in type(error).__name__:
                raise OSError(
                    f"The weights file of {args[0] if args else kwargs.get('pretrained_model_name_or_path')} is "
                    f"truncated or corrupted and cannot be read ({error}); save or download it again."
                ) from error
            raise
        missing = sorted(info.get("missing_keys", []))
        if missing and not allow_missing_weights:
            raise ValueError(
                f"The checkpoint lacks {len(missing)} of the model's tensors: {', '.join(missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}. They would be initialised at random; pass "
                "allow_missing_weights=True if that is what you want."
            )
        if unexpected := describe_unexpected_tensors(model, info.get("unexpected_keys", [])):
            raise ValueError(
                f"The checkpoint holds tensors this model has no place for: {unexpected}. The config.json does not "
                "describe these weights; fix it, or pass output_loading_info=True to load what fits and inspect "
                "the report."
            )
        _forget_legacy_renames(model)
        _warn_if_saved_with_stale_code(model)
        return model

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        # transformers writes only the saved class's own Auto entry into `auto_map`; a folder must also load with
        # the other Auto class (AutoModel for the LM and the reverse), so both are written.
        module = "modeling_vanilla_transformer"
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": f"{module}.VanillaTransformerModel",
            "AutoModelForSeq2SeqLM": f"{module}.VanillaTransformerForConditionalGeneration",
        }
        started = time.time()
        result = super().save_pretrained(save_directory, *args, **kwargs)
        # safetensors writes its files with mode 0600; a model folder is shared like any other file (0644 under
        # the usual umask), as the library's other files (config.json, ...) already are.
        mode = 0o666 & ~_umask()
        for path in Path(save_directory).glob("*.safetensors*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= started - 1:
                path.chmod(mode)
        return result

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The paper gives no initialisation; this is tensor2tensor's and fairseq's (see the config's `initializer`)."""
        config = self.config
        if isinstance(module, nn.Linear):
            if config.initializer == "xavier_uniform":
                init.xavier_uniform_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=config.embedding_init_std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # N(0, d_model^-0.5): after the sqrt(d_model) scaling of §3.4 the embeddings have unit variance.
            init.normal_(module.weight, mean=0.0, std=config.embedding_init_std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class VanillaTransformerEncoder(VanillaTransformerPreTrainedModel):
    """The encoder stack (§3.1): N layers of self-attention and feed-forward sub-layers."""

    _can_record_outputs = {
        "hidden_states": VanillaTransformerEncoderLayer,
        "attentions": VanillaTransformerAttention,
    }

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.embeddings = VanillaTransformerEmbeddings(config, config.vocab_size)
        self.layers = nn.ModuleList(VanillaTransformerEncoderLayer(config, i) for i in range(config.encoder_layers))
        # Pre-LN needs a final norm; the paper's post-LN stack has none.
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, S)`): source token ids.
        attention_mask (`torch.Tensor` of shape `(B, S)`): 1 for tokens, 0 for padding.
        inputs_embeds (`torch.Tensor` of shape `(B, S, d)`): instead of `input_ids`, the rows of the embedding
            matrix (scaled by sqrt(d_model) here, as `input_ids` are).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds to the encoder.")
        if input_ids is not None:
            check_input_ids(input_ids, self.config.vocab_size, "input_ids")
            inputs_embeds = self.embeddings.embed_tokens(input_ids)
        else:
            check_inputs_embeds(
                inputs_embeds, self.config.d_model, "inputs_embeds", self.embeddings.embed_tokens.weight.dtype
            )
        source_name = "input_ids" if input_ids is not None else "inputs_embeds"
        check_attention_mask(attention_mask, inputs_embeds.shape[:2], "attention_mask", source_name)
        hidden_states = self.embeddings(inputs_embeds=inputs_embeds)  # (B, S, d)

        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)


class VanillaTransformerDecoder(VanillaTransformerPreTrainedModel):
    """The decoder stack (§3.1): N layers of masked self-attention, cross-attention and feed-forward sub-layers."""

    _can_record_outputs = {
        "hidden_states": VanillaTransformerDecoderLayer,
        "attentions": OutputRecorder(VanillaTransformerAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VanillaTransformerAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.embeddings = VanillaTransformerEmbeddings(config, config.target_vocab_size)
        self.layers = nn.ModuleList(VanillaTransformerDecoderLayer(config, i) for i in range(config.decoder_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)  # the name before 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, T)`): target token ids, shifted right (they start with
            `decoder_start_token_id`). With a cache, only the tokens not yet in it.
        attention_mask (`torch.Tensor` of shape `(B, past + T)`): 1 for tokens, 0 for padding.
        encoder_hidden_states (`torch.Tensor` of shape `(B, S, d)`): the encoder's output.
        encoder_attention_mask (`torch.Tensor` of shape `(B, S)`): the source padding mask.
        cache (`EncoderDecoderCache`): keys and values of earlier steps (self-attention) and of the
            encoder output (cross-attention).

        The ids are checked against the vocabulary where a sequence starts (no cache, or an empty one); the ids
        `generate()` appends step by step are the model's own predictions and are not read again.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of decoder_input_ids or decoder_inputs_embeds to the decoder.")
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs encoder_hidden_states (the encoder's output) for its cross-attention.")
        if use_cache and cache is None:
            # No config: the caches grow a layer at a time (the config's num_hidden_layers is the encoder's depth).
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise ValueError(f"cache must be an EncoderDecoderCache, got {type(cache).__name__}.")
        # An int for the dynamic cache; a 0-d tensor for a filled static cache (no host synchronisation).
        past_length = cache.get_seq_length() if cache is not None else 0
        if input_ids is not None:
            if isinstance(past_length, int) and past_length == 0:
                check_input_ids(input_ids, self.config.target_vocab_size, "decoder_input_ids")
            inputs_embeds = self.embeddings.embed_tokens(input_ids)
        else:
            check_inputs_embeds(
                inputs_embeds, self.config.d_model, "decoder_inputs_embeds", self.embeddings.embed_tokens.weight.dtype
            )

        batch_size, length = inputs_embeds.shape[:2]
        if encoder_hidden_states.shape[0] != batch_size:
            raise ValueError(
                f"The decoder's input has batch size {batch_size} but the encoder's output "
                f"{encoder_hidden_states.shape[0]}; give one target row per source row."
            )
        # generate() with a compileable (static) cache prepares the self-attention mask itself: (B, 1, T, cache size).
        prepared = attention_mask is not None and attention_mask.dim() == 4 and cache is not None
        if prepared and not (
            cache.self_attention_cache.is_compileable and attention_mask.shape[:3] == (batch_size, 1, length)
        ):
            raise ValueError(
                f"decoder_attention_mask has shape {tuple(attention_mask.shape)}: a 4-D mask is only taken from "
                f"generate() with a static cache, as ({batch_size}, 1, {length}, cache length); give a 2-D mask of 1 "
                "for tokens and 0 for padding."
            )
        if attention_mask is not None and isinstance(past_length, int) and not prepared:
            if attention_mask.dim() != 2:
                raise ValueError(
                    f"decoder_attention_mask must have shape (batch_size, target_length) = ({batch_size}, "
                    f"{past_length + length}), with 1 for tokens and 0 for padding; got shape "
                    f"{tuple(attention_mask.shape)}."
                )
            check_attention_mask(
                attention_mask, attention_mask.shape, "decoder_attention_mask", "", values=past_length == 0
            )
            if attention_mask.shape[0] != batch_size or attention_mask.shape[1] not in (length, past_length + length):
                raise ValueError(
                    f"decoder_attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch_size}, "
                    f"{past_length + length}) for decoder_input_ids of shape {(batch_size, length)} after {past_length} "
                    "cached tokens."
                )
            if attention_mask.shape[1] == length and past_length > 0:
                attention_mask = torch.cat([attention_mask.new_ones(batch_size, past_length), attention_mask], dim=1)

        hidden_states = self.embeddings(inputs_embeds=inputs_embeds, past_length=past_length)  # (B, T, d)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache.self_attention_cache if cache is not None else None,
        )
        encoder_attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,  # positional, for gradient checkpointing
                encoder_attention_mask=encoder_attention_mask,
                cache=cache,
                **kwargs,
            )
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, cache=cache if use_cache else None
        )


def _tied_embeddings(config: VanillaTransformerConfig, prefix: str) -> dict[str, str] | None:
    """`_tied_weights_keys` ({tied: source}) of the model under `prefix`: the decoder's embedding is the encoder's
    (share_encoder_decoder_embeddings) and the output projection the decoder's (tie_word_embeddings)."""
    encoder, decoder = (
        f"{prefix}encoder.embeddings.embed_tokens.weight",
        f"{prefix}decoder.embeddings.embed_tokens.weight",
    )
    tied = {}
    if config.share_encoder_decoder_embeddings:
        tied[decoder] = encoder
    if config.tie_word_embeddings and prefix:
        tied["lm_head.weight"] = encoder if config.share_encoder_decoder_embeddings else decoder
    return tied or None


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder input is the target shifted right by one, starting with the start token."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class VanillaTransformerModel(VanillaTransformerPreTrainedModel):
    """Encoder and decoder without the output projection; returns the decoder's last hidden state."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        # §3.4: one embedding matrix for source and target (shared vocabulary), tied by parameter through
        # `_tied_weights_keys` so that loading checks each name. Deviation when
        # `share_encoder_decoder_embeddings=False` (two matrices, possibly two vocabularies).
        self.encoder = VanillaTransformerEncoder(config)
        self.decoder = VanillaTransformerDecoder(config)
        self._tied_weights_keys = _tied_embeddings(config, prefix="")
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.set_input_embeddings(value)
        if self.config.share_encoder_decoder_embeddings:
            self.decoder.set_input_embeddings(value)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)  # the name before 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, S)`): source token ids.
        attention_mask (`torch.Tensor` of shape `(B, S)`): 1 for source tokens, 0 for padding.
        decoder_input_ids (`torch.LongTensor` of shape `(B, T)`): target ids shifted right.
        decoder_attention_mask (`torch.Tensor` of shape `(B, T)`): 1 for target tokens, 0 for padding.
        encoder_outputs (`BaseModelOutput` or tuple): a precomputed encoder output (used by `generate`).
        cache (`EncoderDecoderCache`): the decoding cache.
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        else:  # a precomputed encoder output (generate's): its mask's values were checked when the encoder ran
            check_attention_mask(
                attention_mask, encoder_outputs.last_hidden_state.shape[:2], "attention_mask", "the encoder output",
                values=False,
            )  # fmt: skip
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "Give decoder_input_ids (the target shifted right), or labels to the ForConditionalGeneration model."
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class VanillaTransformerForConditionalGeneration(VanillaTransformerPreTrainedModel, VanillaTransformerGenerationMixin):
    """The Transformer with its pre-softmax linear layer (§3.4), the loss of §5.4 and the decoding of §6.1."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.model = VanillaTransformerModel(config)
        # §3.4: the pre-softmax projection is the embedding matrix itself, with no bias. Deviations: an untied
        # matrix (tie_word_embeddings=False), a bias (output_bias, Marian's final_logits_bias).
        self.lm_head = nn.Linear(config.d_model, config.target_vocab_size, bias=config.output_bias)
        self._tied_weights_keys = _tied_embeddings(config, prefix="model.")
        self.post_init()
        self.generation_config = paper_generation_config(config)

    @property
    def loss_function(self) -> Callable[..., torch.Tensor]:
        """The loss `forward(labels=...)` computes: the library's hook, by default §5.4's label-smoothed
        cross-entropy (`loss_vanilla_transformer.label_smoothed_cross_entropy`); assign another to replace it."""
        return getattr(self, "_loss_function", label_smoothed_cross_entropy)

    @loss_function.setter
    def loss_function(self, value: Callable[..., torch.Tensor]) -> None:
        self._loss_function = value

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_encoder(self) -> VanillaTransformerEncoder:
        return self.model.encoder

    def get_decoder(self) -> VanillaTransformerDecoder:
        return self.model.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)  # the name before 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(B, T)`): target ids, -100 where no loss is wanted. Without
            `decoder_input_ids` the decoder input is `labels` shifted right. The loss is `self.loss_function`:
            the token-level cross-entropy with `config.label_smoothing`, summed and divided by the number of
            target tokens (or by `num_items_in_batch` when the Trainer gives it, so gradient accumulation is exact).
        logits_to_keep (`int`): if > 0, only the last `logits_to_keep` positions get logits (as in `generate`).

        The other arguments are those of [`VanillaTransformerModel.forward`].
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            check_labels(
                labels, input_ids if input_ids is not None else inputs_embeds, encoder_outputs,
                self.config.target_vocab_size,
            )  # fmt: skip
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs: Seq2SeqModelOutput = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)  # (B, T, V)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits,
                labels,
                vocab_size=self.config.target_vocab_size,
                num_items_in_batch=num_items_in_batch,
                label_smoothing=self.config.label_smoothing,
            )
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


__all__ = [
    "VanillaTransformerDecoder",
    "VanillaTransformerEncoder",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "shift_tokens_right",
    "sinusoidal_position_encoding",
]
