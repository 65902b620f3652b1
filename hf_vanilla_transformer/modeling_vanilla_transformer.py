"""The Transformer of "Attention Is All You Need" (Vaswani et al. 2017) as a Hugging Face model.

The file follows the paper: scaled dot-product and multi-head attention (§3.2), the position-wise feed-forward
network (§3.3), embeddings and the interleaved sinusoidal positional encoding (§3.4, §3.5), the post-LN encoder
and decoder layers and stacks (§3.1, §5.4), then the Hugging Face glue (outputs, cache, generation).

Notation in the shape comments:
    B  batch size               S  source length             T  target length (this step's tokens)
    h  attention heads          d_k, d_v  per-head widths     d  d_model          V  vocab_size
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vanilla_transformer import VanillaTransformerConfig


# --------------------------------------------------------------------------------------------------------------
# §3.2.1 Scaled dot-product attention
# --------------------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, h, T, d_k)
    key: torch.Tensor,  # (B, h, S, d_k)
    value: torch.Tensor,  # (B, h, S, d_v)
    attention_mask: torch.Tensor | None,  # (B, 1, T, S) additive, or None
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

    The projections of all heads are one linear layer each (with biases, as in the authors' tensor2tensor code).
    `d_k` and `d_v` are independent of `d_model / h` (Table 3 row B).
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
        self.w_q = nn.Linear(config.d_model, self.h * self.d_k)
        self.w_k = nn.Linear(config.d_model, self.h * self.d_k)
        self.w_v = nn.Linear(config.d_model, self.h * self.d_v)
        self.w_o = nn.Linear(self.h * self.d_v, config.d_model)
        # Set by `VanillaTransformerForConditionalGeneration.generate` for the duration of a call: W^Q, W^K and W^V
        # of self-attention as one `DecodingLinear`, so a decoding step runs one matrix product instead of three.
        # The parameters above stay the model's weights; training always uses them one by one.
        self.decoding_qkv: DecodingLinear | None = None

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, d): the queries
        key_value_states: torch.Tensor | None = None,  # (B, S, d): the encoder output, for cross-attention
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, _ = hidden_states.shape
        fused, decoding_qkv = None, self.decoding_qkv  # read once: another thread's generate() may reset it
        if decoding_qkv is not None and not self.is_cross_attention:
            fused = decoding_qkv(hidden_states).split([self.h * self.d_k, self.h * self.d_k, self.h * self.d_v], -1)
        query = fused[0] if fused is not None else self.w_q(hidden_states)
        query = query.view(batch_size, length, self.h, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

        cache = None
        if past_key_values is not None:
            cache = (
                past_key_values.cross_attention_cache
                if self.is_cross_attention
                else past_key_values.self_attention_cache
            )

        if self.is_cross_attention and cache is not None and past_key_values.is_updated.get(self.layer_idx):
            # The encoder output does not change while decoding: its keys and values are computed once.
            key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
        else:
            source = key_value_states if self.is_cross_attention else hidden_states
            source_length = source.shape[1]
            key, value = fused[1:] if fused is not None else (self.w_k(source), self.w_v(source))
            key = key.view(batch_size, source_length, self.h, self.d_k).transpose(1, 2)  # (B, h, S, d_k)
            value = value.view(batch_size, source_length, self.h, self.d_v).transpose(1, 2)  # (B, h, S, d_v)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
                if self.is_cross_attention:
                    past_key_values.is_updated[self.layer_idx] = True

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
        return self.w_o(output), weights


# --------------------------------------------------------------------------------------------------------------
# §3.3 Position-wise feed-forward network
# --------------------------------------------------------------------------------------------------------------
class VanillaTransformerFeedForward(nn.Module):
    """Eq. 2: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.w_1 = nn.Linear(config.d_model, config.d_ff)
        self.w_2 = nn.Linear(config.d_ff, config.d_model)
        # Deviation from the paper when non-zero (config.activation_dropout): §5.4 has no dropout inside the FFN.
        self.activation_dropout = config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.w_1(x))  # (B, T, d_ff)
        x = F.dropout(x, p=self.activation_dropout, training=self.training)
        return self.w_2(x)  # (B, T, d)


# --------------------------------------------------------------------------------------------------------------
# §3.4 Embeddings and §3.5 positional encoding
# --------------------------------------------------------------------------------------------------------------
def sinusoidal_position_encoding(
    positions: torch.Tensor, d_model: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """§3.5, interleaved: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    Computed for the positions asked for, so any length works. (fairseq and tensor2tensor concatenate [sin | cos];
    that is not the paper's layout.)
    """
    two_i = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)  # (ceil(d/2),)
    angles = positions.to(torch.float32)[:, None] / torch.pow(10000.0, two_i / d_model)  # (T, ceil(d/2))
    encoding = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)  # (T, 2*ceil(d/2)) interleaved
    return encoding[:, :d_model].to(dtype)  # (T, d)


class VanillaTransformerPositionalEncoding(nn.Module):
    """§3.5 sinusoids (no parameters), or Table 3 row (E)'s learned positional embeddings."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.d_model = config.d_model
        self.learned = None
        if config.position_encoding == "learned":
            self.learned = nn.Embedding(config.max_position_embeddings, config.d_model)

        # The sinusoids of positions 0 .. n-1, computed once and grown by doubling when a longer input comes
        # (decoding asks for one position per step). Not a buffer: it is no weight and is never saved.
        self._table: torch.Tensor | None = None

    def forward(self, length: int, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self.learned is None:
            table = self._table
            if table is None or table.shape[0] < offset + length or table.device != device:
                size = max(256, 1 << (offset + length - 1).bit_length())
                table = self._table = sinusoidal_position_encoding(torch.arange(size, device=device), self.d_model)
            return table[offset : offset + length].to(dtype)  # (T, d)
        positions = torch.arange(offset, offset + length, device=device)
        if offset + length > self.learned.num_embeddings:
            raise ValueError(
                f"Position {offset + length - 1} is past max_position_embeddings={self.learned.num_embeddings} of the "
                "learned positional embeddings (position_encoding='learned'); use shorter inputs, or a model with "
                "position_encoding='sinusoidal', which has no length limit."
            )
        return self.learned(positions).to(dtype)  # (T, d)


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Token ids outside the vocabulary would fail deep inside the embedding (or as a device-side assert)."""
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}.")
    if input_ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input_ids.shape)}); give at least one token per sequence.")
    low, high = torch.aminmax(input_ids)
    if low < 0 or high >= vocab_size:
        bad = int(low) if low < 0 else int(high)
        raise ValueError(f"{name} contains token id {bad}, outside the vocabulary [0, vocab_size={vocab_size}).")


def check_attention_mask(attention_mask: torch.Tensor | None, shape: torch.Size, name: str, ids_name: str) -> None:
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape != shape:
        raise ValueError(
            f"{name} has shape {tuple(attention_mask.shape)} but {ids_name} has shape {tuple(shape)}; they must match."
        )


# --------------------------------------------------------------------------------------------------------------
# §3.1 Encoder and decoder layers: every sub-layer is LayerNorm(x + Dropout(Sublayer(x))) (§5.4)
# --------------------------------------------------------------------------------------------------------------
class VanillaTransformerEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: VanillaTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaTransformerAttention(config, layer_idx, is_causal=False, is_cross_attention=False)
        self.self_attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = VanillaTransformerFeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        # Deviation from the paper when True: pre-LN, x + Dropout(Sublayer(LayerNorm(x))).
        self.norm_first = config.norm_first

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        x = hidden_states  # (B, S, d)
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_norm(x), attention_mask=attention_mask, **kwargs)[0])
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.self_attn_norm(x + self.dropout(self.self_attn(x, attention_mask=attention_mask, **kwargs)[0]))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class VanillaTransformerDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: VanillaTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaTransformerAttention(config, layer_idx, is_causal=True, is_cross_attention=False)
        self.self_attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = VanillaTransformerAttention(config, layer_idx, is_causal=False, is_cross_attention=True)
        self.cross_attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = VanillaTransformerFeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, d)
        attention_mask: torch.Tensor | None,  # causal self-attention mask, or None for SDPA's is_causal
        encoder_hidden_states: torch.Tensor,  # (B, S, d)
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        x = hidden_states

        def self_attn(y: torch.Tensor) -> torch.Tensor:
            return self.self_attn(y, attention_mask=attention_mask, past_key_values=past_key_values, **kwargs)[0]

        def cross_attn(y: torch.Tensor) -> torch.Tensor:
            return self.cross_attn(
                y,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                past_key_values=past_key_values,
                **kwargs,
            )[0]

        if self.norm_first:
            x = x + self.dropout(self_attn(self.self_attn_norm(x)))
            x = x + self.dropout(cross_attn(self.cross_attn_norm(x)))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.self_attn_norm(x + self.dropout(self_attn(x)))
        x = self.cross_attn_norm(x + self.dropout(cross_attn(x)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class DecodingLinear:
    """y = x W^T + b, with W copied into the layout that is fastest for products with few rows, which is what a
    decoding step computes (batch x beams rows); benchmarks/speed.py measures the effect on generate():
    - on CPU, for matrices of 2^18 elements or more, oneDNN's packed layout where torch has oneDNN. Its fixed cost
      per call is larger than MKL's, so smaller matrices stay as they are;
    - on CPU without oneDNN, a wide matrix (the output projection, V x d_model) transposed, which MKL streams
      faster than nn.Linear's layout for one row;
    - elsewhere W itself (no copy).
    Only for inference: there is no backward."""

    ONEDNN_MIN_ELEMENTS = 1 << 18

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias, self.weight_t, self.packed = weight, bias, None, None
        if weight.device.type != "cpu" or weight.numel() < self.ONEDNN_MIN_ELEMENTS:
            return
        if weight.dtype == torch.float32 and _onednn_linear_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        elif weight.shape[0] >= 4 * weight.shape[1]:
            self.weight_t = weight.detach().t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.weight_t is not None:
            y = x @ self.weight_t
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)  # (also for inputs of another dtype, e.g. under autocast)


@functools.cache
def _onednn_linear_available() -> bool:
    """oneDNN's packed linear (the kernels torch.compile's CPU backend uses) is in torch builds with oneDNN; checked
    once by running it."""
    try:
        weight, x = torch.ones(3, 2), torch.ones(1, 2)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), x @ weight.t()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


# --------------------------------------------------------------------------------------------------------------
# Hugging Face glue: pretrained base class, the two stacks, the model and the model with the output projection
# --------------------------------------------------------------------------------------------------------------
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

    @classmethod
    def from_pretrained(cls, *args: Any, allow_missing_weights: bool = False, **kwargs: Any) -> Any:
        """`PreTrainedModel.from_pretrained`, except that a checkpoint missing some of the model's tensors (or
        holding them at other shapes) is an error naming them: transformers would initialise them at random and
        only warn, which turns a damaged checkpoint into a model that silently translates garbage. Pass
        `allow_missing_weights=True` to initialise missing tensors anyway (e.g. when adding layers), and
        `ignore_mismatched_sizes=True` to re-initialise tensors of the wrong shape."""
        wants_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            # Loaded with ignore_mismatched_sizes=True so that the mismatches are reported by name below (the
            # library's own error names none of them).
            model, info = super().from_pretrained(
                *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
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
        mismatched = info.get("mismatched_keys", [])
        if mismatched and not ignore_mismatched_sizes:
            described = ", ".join(
                f"{key} (checkpoint {tuple(a)}, model {tuple(b)})" for key, a, b in sorted(mismatched)[:10]
            )
            raise ValueError(f"Tensors have other shapes in the checkpoint than in the model: {described}.")
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        # transformers writes only the saved class's own Auto entry into `auto_map`; a folder must also load with
        # the other Auto class (AutoModel for the LM and the reverse), so both are written.
        module = "modeling_vanilla_transformer"
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": f"{module}.VanillaTransformerModel",
            "AutoModelForSeq2SeqLM": f"{module}.VanillaTransformerForConditionalGeneration",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

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

    def __init__(self, config: VanillaTransformerConfig, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        self.embed_tokens = (
            embed_tokens if embed_tokens is not None else nn.Embedding(config.vocab_size, config.d_model)
        )
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = VanillaTransformerPositionalEncoding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(VanillaTransformerEncoderLayer(config, i) for i in range(config.encoder_layers))
        # Pre-LN needs a final norm; the paper's post-LN stack has none.
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
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
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds.shape[1] == 0:
            raise ValueError(f"inputs_embeds has zero length (shape {tuple(inputs_embeds.shape)}).")
        check_attention_mask(attention_mask, inputs_embeds.shape[:2], "attention_mask", "input_ids")
        inputs_embeds = inputs_embeds * self.embed_scale  # §3.4
        positions = self.embed_positions(inputs_embeds.shape[1], 0, inputs_embeds.device, inputs_embeds.dtype)
        hidden_states = self.dropout(inputs_embeds + positions)  # (B, S, d), §5.4

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

    def __init__(self, config: VanillaTransformerConfig, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        self.embed_tokens = (
            embed_tokens if embed_tokens is not None else nn.Embedding(config.vocab_size, config.d_model)
        )
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = VanillaTransformerPositionalEncoding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(VanillaTransformerDecoderLayer(config, i) for i in range(config.decoder_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, T)`): target token ids, shifted right (they start with
            `decoder_start_token_id`). With a cache, only the tokens not yet in it.
        attention_mask (`torch.Tensor` of shape `(B, past + T)`): 1 for tokens, 0 for padding.
        encoder_hidden_states (`torch.Tensor` of shape `(B, S, d)`): the encoder's output.
        encoder_attention_mask (`torch.Tensor` of shape `(B, S)`): the source padding mask.
        past_key_values (`EncoderDecoderCache`): keys and values of earlier steps (self-attention) and of the
            encoder output (cross-attention).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of decoder_input_ids or decoder_inputs_embeds to the decoder.")
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs encoder_hidden_states (the encoder's output) for its cross-attention.")
        if input_ids is not None:
            check_input_ids(input_ids, self.config.vocab_size, "decoder_input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds.shape[1] == 0:
            raise ValueError(f"decoder_inputs_embeds has zero length (shape {tuple(inputs_embeds.shape)}).")
        inputs_embeds = inputs_embeds * self.embed_scale  # §3.4

        if use_cache and past_key_values is None:
            # No config: the caches grow a layer at a time (the config's num_hidden_layers is the encoder's depth).
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if past_key_values is not None and not isinstance(past_key_values, EncoderDecoderCache):
            raise ValueError(f"past_key_values must be an EncoderDecoderCache, got {type(past_key_values).__name__}.")
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        batch_size, length = inputs_embeds.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 2:
            if attention_mask.shape[0] != batch_size or attention_mask.shape[1] not in (length, past_length + length):
                raise ValueError(
                    f"decoder_attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch_size}, "
                    f"{past_length + length}) for decoder_input_ids of shape {(batch_size, length)} after {past_length} "
                    "cached tokens."
                )
            if attention_mask.shape[1] == length and past_length > 0:
                attention_mask = torch.cat([attention_mask.new_ones(batch_size, past_length), attention_mask], dim=1)

        positions = self.embed_positions(length, past_length, inputs_embeds.device, inputs_embeds.dtype)
        hidden_states = self.dropout(inputs_embeds + positions)  # (B, T, d), §5.4

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values.self_attention_cache if past_key_values is not None else None,
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
                past_key_values=past_key_values,
                **kwargs,
            )
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None
        )


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
        # §3.4: one embedding matrix for source and target (shared vocabulary). Deviation when untied.
        self.encoder = VanillaTransformerEncoder(config)
        shared = self.encoder.embed_tokens if config.tie_word_embeddings else None
        self.decoder = VanillaTransformerDecoder(config, embed_tokens=shared)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value
        if self.config.tie_word_embeddings:
            self.decoder.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, S)`): source token ids.
        attention_mask (`torch.Tensor` of shape `(B, S)`): 1 for source tokens, 0 for padding.
        decoder_input_ids (`torch.LongTensor` of shape `(B, T)`): target ids shifted right.
        decoder_attention_mask (`torch.Tensor` of shape `(B, T)`): 1 for target tokens, 0 for padding.
        encoder_outputs (`BaseModelOutput` or tuple): a precomputed encoder output (used by `generate`).
        past_key_values (`EncoderDecoderCache`): the decoding cache.
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
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "Give decoder_input_ids (the target shifted right), or labels to the ForConditionalGeneration model."
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


# --------------------------------------------------------------------------------------------------------------
# §6.1 decoding: beam 4, GNMT length penalty alpha = 0.6, maximum output length = input length + 50
# --------------------------------------------------------------------------------------------------------------
LENGTH_PENALTY_TYPES = ("gnmt", "transformers")


def gnmt_length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """Wu et al. 2016, the paper's length penalty: lp(L) = ((5 + L) / 6) ** alpha; a hypothesis scores log p / lp(L).

    transformers' own `length_penalty` divides by L ** alpha instead.
    """
    return ((5 + length) / 6) ** alpha


class SourceLengthLimitLogitsProcessor(LogitsProcessor):
    """Ends each sentence after at most `max_new_tokens[i]` tokens by forcing end-of-sentence there (§6.1: the
    maximum output length is the input length + 50, per sentence). `generate` has only a batch-wide limit, so
    this is written here. Rows of `input_ids` are the batch's sentences, each repeated for its beams / samples."""

    def __init__(self, max_new_tokens: torch.LongTensor, eos_token_id: int, prompt_length: int = 1):
        self.max_new_tokens = max_new_tokens  # (B,)
        self.eos_token_id = eos_token_id
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows_per_sentence = input_ids.shape[0] // self.max_new_tokens.shape[0]
        limits = self.max_new_tokens.to(input_ids.device).repeat_interleave(rows_per_sentence)  # (B * beams,)
        at_limit = (input_ids.shape[1] - self.prompt_length) >= limits
        if not bool(at_limit.any()):
            return scores
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.eos_token_id] = 0.0
        return torch.where(at_limit[:, None], forced, scores)


class LabelSmoothedCrossEntropy(torch.autograd.Function):
    """The summed label-smoothed cross-entropy of §5.4 (epsilon_ls) over the rows of `logits` (N, V) whose label is
    not -100: for each, logsumexp(x) - (1 - eps) * x[label] - eps * mean(x), which equals
    `F.cross_entropy(logits.float(), labels, label_smoothing=eps, reduction="sum")`.

    Written here because torch's cross-entropy keeps a float32 (N, V) tensor of log-probabilities for the backward
    pass (plus a float32 copy of bf16 logits), and its backward makes several more (N, V) tensors; with the paper's
    37000-token vocabulary these are the largest tensors of a training step. This version keeps nothing but the
    logits, works through the rows in blocks whose float32 temporaries stay small, and writes the gradient,
    softmax(x) - (1 - eps) * onehot(label) - eps / V, straight into one tensor of the logits' dtype.
    """

    BLOCK_ELEMENTS = 1 << 22  # float32 temporaries of 16 MiB per block

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
        rows, vocab = logits.shape
        block = max(1, LabelSmoothedCrossEntropy.BLOCK_ELEMENTS // vocab)
        keep = labels != -100
        targets = labels.clamp(min=0)[:, None]  # (N, 1); ignored rows are zeroed below
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, rows, block):
            x = logits[start : start + block].float()  # (n, V)
            lse = torch.logsumexp(x, dim=-1)
            per_row = lse - (1.0 - epsilon) * x.gather(1, targets[start : start + block]).squeeze(1)
            if epsilon:
                per_row = per_row - epsilon * x.mean(dim=-1)
            total += torch.where(keep[start : start + block], per_row, 0.0).sum()
        ctx.save_for_backward(logits, targets, keep)
        ctx.epsilon = epsilon
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, keep = ctx.saved_tensors
        rows, vocab = logits.shape
        block = max(1, LabelSmoothedCrossEntropy.BLOCK_ELEMENTS // vocab)
        grad_logits = torch.empty_like(logits)
        scale = torch.where(keep, grad_total.float(), 0.0)[:, None]  # (N, 1): ignored rows get no gradient
        on_target = torch.full((1, 1), -(1.0 - ctx.epsilon), dtype=torch.float32, device=logits.device)
        for start in range(0, rows, block):
            end = start + block
            grad = torch.softmax(logits[start:end], dim=-1, dtype=torch.float32)  # (n, V)
            if ctx.epsilon:
                grad -= ctx.epsilon / vocab
            grad.scatter_add_(1, targets[start:end], on_target.expand(grad.shape[0], 1))
            torch.mul(grad, scale[start:end], out=grad_logits[start:end])
        return grad_logits, None, None


class VanillaTransformerForConditionalGeneration(VanillaTransformerPreTrainedModel, GenerationMixin):
    """The Transformer with its pre-softmax linear layer (§3.4), a loss and `generate()`."""

    _keys_to_ignore_on_load_unexpected = [r"lm_head\.bias"]

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.model = VanillaTransformerModel(config)
        # §3.4: the pre-softmax projection is the embedding matrix itself, with no bias.
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {
                "lm_head.weight": "model.encoder.embed_tokens.weight",
                "model.decoder.embed_tokens.weight": "model.encoder.embed_tokens.weight",
            }
        self.post_init()
        self.generation_config = paper_generation_config(config)

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
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(B, T)`): target ids, -100 where no loss is wanted. Without
            `decoder_input_ids` the decoder input is `labels` shifted right. The loss is the token-level
            cross-entropy with `config.label_smoothing`, summed and divided by the number of target tokens (or by
            `num_items_in_batch` when the Trainer gives it, so gradient accumulation is exact).
        logits_to_keep (`int`): if > 0, only the last `logits_to_keep` positions get logits (as in `generate`).

        The other arguments are those of [`VanillaTransformerModel.forward`].
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs: Seq2SeqModelOutput = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
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
            loss = self.loss(logits, labels, num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Label-smoothed cross-entropy (§5.4) per target token; labels are not shifted (they align with logits)."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}.")
        labels = labels.to(logits.device)
        low, high = torch.aminmax(labels)
        if (low < 0 and bool((labels[labels < 0] != -100).any())) or high >= logits.shape[-1]:
            bad = int(high) if high >= logits.shape[-1] else int(labels[(labels < 0) & (labels != -100)][0])
            raise ValueError(
                f"labels contain {bad}, which is neither a token id in [0, vocab_size={logits.shape[-1]}) nor -100 "
                "(the ignored position)."
            )
        total = LabelSmoothedCrossEntropy.apply(logits.flatten(0, 1), labels.flatten(), self.config.label_smoothing)
        if num_items_in_batch is None:
            num_items_in_batch = (labels != -100).sum()
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    # ---- generation ------------------------------------------------------------------------------------------
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: Any = None,
        logits_processor: LogitsProcessorList | None = None,
        **kwargs: Any,
    ) -> Any:
        """`GenerationMixin.generate` plus the paper's decoding options (§6.1), read from the generation config or
        given as keywords:

        - `length_penalty_type`: `"gnmt"` scores a finished hypothesis of length L as
          sum(log p) / ((5 + L) / 6) ** length_penalty; `"transformers"` is the library's sum(log p) / L ** length_penalty.
        - `max_new_tokens_over_source`: each sentence ends after at most (its source length + this) tokens;
          None turns the limit off. `max_new_tokens` / `max_length` given to the call (or `max_new_tokens` in the
          generation config) still cap the whole batch.
        """
        source = generation_config if generation_config is not None else self.generation_config
        length_penalty_type = kwargs.pop("length_penalty_type", getattr(source, "length_penalty_type", "transformers"))
        over_source = kwargs.pop("max_new_tokens_over_source", getattr(source, "max_new_tokens_over_source", None))
        if length_penalty_type not in LENGTH_PENALTY_TYPES:
            raise ValueError(
                f"length_penalty_type={length_penalty_type!r} is invalid: expected one of {LENGTH_PENALTY_TYPES}."
            )
        if over_source is not None and (
            not isinstance(over_source, int) or isinstance(over_source, bool) or over_source < 0
        ):
            raise ValueError(
                f"max_new_tokens_over_source={over_source!r} is invalid: expected None or an integer >= 0."
            )

        if over_source is not None:
            source_lengths = self._source_lengths(inputs, kwargs)
            eos_token_id = kwargs.get("eos_token_id", getattr(source, "eos_token_id", None))
            if isinstance(eos_token_id, list):
                eos_token_id = eos_token_id[0]
            eos_token_id = self.config.eos_token_id if eos_token_id is None else eos_token_id
            prompt = kwargs.get("decoder_input_ids")
            limit = SourceLengthLimitLogitsProcessor(
                source_lengths + over_source, eos_token_id, prompt.shape[1] if prompt is not None else 1
            )
            logits_processor = LogitsProcessorList([*(logits_processor or []), limit])
            # A limit given to this call, or a max_new_tokens in the generation config, also caps the batch. A
            # config's max_length does not: transformers fills it with its default of 20 (Seq2SeqTrainer writes
            # that into model.generation_config), which would cut the paper's limit short.
            user_limit = kwargs.get("max_new_tokens") is not None or kwargs.get("max_length") is not None
            user_limit = user_limit or getattr(source, "max_new_tokens", None) is not None
            if not user_limit:
                kwargs["max_new_tokens"] = int(source_lengths.max()) + over_source + 1  # + 1 for the forced EOS

        previous, self._length_penalty_type = getattr(self, "_length_penalty_type", "transformers"), length_penalty_type
        try:
            with self._decoding_weights():
                return super().generate(inputs, generation_config, logits_processor, **kwargs)
        finally:
            self._length_penalty_type = previous

    @contextlib.contextmanager
    def _decoding_weights(self):
        """For the duration of a `generate` call, the decoder's linear layers and the output projection compute with
        copies of their weights laid out for products with few rows (a decoding step has batch x beams rows), see
        `DecodingLinear`; each decoder self-attention's W^Q, W^K and W^V become one product. The copies are made
        per call (so they always hold the current weights), cost one copy of the decoder's weights while
        `generate` runs, and give the plain path's outputs up to float rounding. Skipped for weights that are not
        ordinary floating-point tensors (quantised, offloaded, or with hooks that replace `forward`)."""
        layers = self.model.decoder.layers
        linears = [self.lm_head]
        for layer in layers:
            linears += [layer.self_attn.w_o, layer.cross_attn.w_q, layer.cross_attn.w_o, layer.ffn.w_1, layer.ffn.w_2]
        projections = [getattr(layer.self_attn, name) for layer in layers for name in ("w_q", "w_k", "w_v")]
        usable = all(
            type(linear) is nn.Linear
            and linear.weight.is_floating_point()
            and linear.weight.device.type != "meta"
            and "forward" not in vars(linear)
            and not hasattr(linear, "_hf_hook")
            for linear in linears + projections
        )
        if not usable or layers[0].self_attn.decoding_qkv is not None:  # (a nested call uses the outer call's)
            yield
            return
        try:
            with torch.no_grad():
                for layer in layers:
                    attention = layer.self_attn
                    attention.decoding_qkv = DecodingLinear(
                        torch.cat([attention.w_q.weight, attention.w_k.weight, attention.w_v.weight]),
                        torch.cat([attention.w_q.bias, attention.w_k.bias, attention.w_v.bias]),
                    )
                for linear in linears:
                    linear.forward = DecodingLinear(linear.weight, linear.bias)  # shadows nn.Linear.forward
            yield
        finally:
            for layer in layers:
                layer.self_attn.decoding_qkv = None
            for linear in linears:
                vars(linear).pop("forward", None)

    def _reorder_cache(self, past_key_values: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search calls this after each step to move each beam's cache to its new place. Only the
        self-attention cache needs it: the cross-attention keys and values are the same for every beam of a
        sentence, and beams never move between sentences. (The library's default reorders both.)"""
        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.self_attention_cache.reorder_cache(beam_idx)
        else:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The inputs of one decoding step: the tokens not yet in the cache, the cache, the source mask and the
        encoder output. The library's version also builds position ids, token types and 4D masks this model does
        not take, and inspects `forward`'s signature at every step for models registered for the Auto classes,
        which this one is."""
        if next_sequence_length is not None:
            input_ids = input_ids[:, -next_sequence_length:]
        inputs = {"decoder_input_ids": input_ids, "past_key_values": past_key_values, "attention_mask": attention_mask}
        skipped = ("labels", "decoder_position_ids", "position_ids", "token_type_ids", "cache_position")
        for key, value in kwargs.items():
            if key not in skipped and key not in inputs:
                inputs[key] = value
        return inputs

    def _source_lengths(self, inputs: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.LongTensor:
        attention_mask = kwargs.get("attention_mask")
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if attention_mask is not None:
            return attention_mask.long().sum(-1)
        if input_ids is not None and input_ids.dim() == 2:
            return (input_ids != self.config.pad_token_id).long().sum(-1)
        encoder_outputs = kwargs.get("encoder_outputs")
        if encoder_outputs is not None:
            hidden = encoder_outputs[0]
            return torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long, device=hidden.device)
        raise ValueError("max_new_tokens_over_source needs the source: give input_ids or an attention_mask.")

    # transformers' beam search divides a finished hypothesis' score by L ** length_penalty in the two methods
    # below. For the GNMT form we divide by ((5 + L) / 6) ** alpha ourselves and hand the library a penalty of 0
    # (L ** 0 == 1), so its bookkeeping (finished beams, early stopping) is reused unchanged.
    def _update_finished_beams(self, *, topk_log_probs, cur_len, decoder_prompt_len, length_penalty, **kwargs):
        if getattr(self, "_length_penalty_type", "transformers") == "gnmt":
            topk_log_probs = topk_log_probs / gnmt_length_penalty(cur_len + 1 - decoder_prompt_len, length_penalty)
            length_penalty = 0.0
        return super()._update_finished_beams(
            topk_log_probs=topk_log_probs,
            cur_len=cur_len,
            decoder_prompt_len=decoder_prompt_len,
            length_penalty=length_penalty,
            **kwargs,
        )

    def _check_early_stop_heuristic(
        self, *, running_beam_scores, cur_len, max_length, decoder_prompt_len, early_stopping, length_penalty, **kwargs
    ):
        if getattr(self, "_length_penalty_type", "transformers") == "gnmt":
            # The best a running beam can still reach: the GNMT penalty grows with L, so with early_stopping="never"
            # the bound is at max_length (tensor2tensor's stopping rule); otherwise the library's heuristic length.
            best_length = (
                max_length if early_stopping == "never" and length_penalty > 0 else cur_len
            ) - decoder_prompt_len
            running_beam_scores = running_beam_scores / gnmt_length_penalty(best_length, length_penalty)
            length_penalty = 0.0
        return GenerationMixin._check_early_stop_heuristic(
            running_beam_scores=running_beam_scores,
            cur_len=cur_len,
            max_length=max_length,
            decoder_prompt_len=decoder_prompt_len,
            early_stopping=early_stopping,
            length_penalty=length_penalty,
            **kwargs,
        )


def paper_generation_config(config: VanillaTransformerConfig):
    """§6.1: beam size 4, GNMT length penalty alpha = 0.6, maximum output length = input length + 50, and early
    termination once no running beam can beat the finished ones (tensor2tensor's rule: `early_stopping="never"`
    with the bound computed at the maximum length)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        num_beams=4,
        length_penalty=0.6,
        length_penalty_type="gnmt",
        max_new_tokens_over_source=50,
        early_stopping="never",
        do_sample=False,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )


__all__ = [
    "SourceLengthLimitLogitsProcessor",
    "VanillaTransformerDecoder",
    "VanillaTransformerEncoder",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "gnmt_length_penalty",
    "paper_generation_config",
    "shift_tokens_right",
    "sinusoidal_position_encoding",
]
