"""Existing checkpoints in, deployment out.

    python -m hf_vanilla_transformer.convert marian Helsinki-NLP/opus-mt-en-de opus-mt-en-de-vanilla
    python -m hf_vanilla_transformer.convert fairseq wmt14.en-fr.joined-dict.transformer wmt14-en-fr-vanilla
    python -m hf_vanilla_transformer.convert ctranslate2 opus-mt-en-de-vanilla opus-mt-en-de-ct2 --quantization int8

(also `vanilla-transformer-convert ...`, and the functions `convert_marian`, `convert_fairseq`, `export_ctranslate2`).

- `marian`: a `MarianMTModel` folder or Hub id (OPUS-MT). Its differences from the paper become named config
  deviations: swish, [sin | cos] sinusoids, `final_logits_bias` (kept only when it is not zero), LayerNorm eps 1e-5,
  pad as the decoder start, separate vocabularies. The tokenizer is saved along (`MarianTokenizer`), the generation
  config keeps the source's decoding (`length_penalty_type="transformers"`); `paper_decoding=True` gives §6.1's.
- `fairseq`: a fairseq translation checkpoint folder (`model.pt`, `dict.<src>.txt`, `dict.<tgt>.txt`, optional
  `bpecodes`), the 2018 WMT layout (argparse `args`, fused `in_proj_weight`, `layer_norms.0/1`, `embed_out`) or
  fairseq >= 0.10's (`cfg`). fairseq's sinusoids are tensor2tensor's ([sin | cos], 1/10000^(i/(d/2-1)), first
  position padding_idx + 1). With `bpecodes` the folder gets transformers' `FSMTTokenizer` (Moses + BPE, the port of
  fairseq's WMT pipeline; as `FairseqBPETokenizer`, with the target dictionary for `text_target`, loaded with
  `trust_remote_code=True`). The checkpoint is read with `torch.load(weights_only=True)`, allowing only argparse's
  Namespace and numpy scalars; anything else needs `trust_checkpoint=True` (`--trust-checkpoint`).
- `ctranslate2`: a model folder of this project (with its tokenizer) to a CTranslate2 model directory, with
  `quantization` as CTranslate2 allows. Every config deviation is exported or refused by name.

What cannot be represented is refused with a `ConversionError` naming the option; the output is written to a
temporary folder beside OUTPUT and moved in place only when complete, so a failure leaves nothing behind, and an
existing OUTPUT is replaced only with `overwrite=True` (`--overwrite`), after the new one is complete.

transformers has converters for neither direction of this model, nor a fairseq importer beyond FSMT's WMT'19 script,
and CTranslate2's converters read Marian / fairseq / OpenNMT checkpoints, not this model: these are written here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .configuration_vanilla_transformer import ACTIVATIONS, VanillaTransformerConfig
from .generation_vanilla_transformer import paper_generation_config
from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration, sinusoidal_position_encoding

CTRANSLATE2_QUANTIZATIONS = (
    "float32",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
)
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary: bos 0, pad 1, eos 2, unk 3


class ConversionError(ValueError):
    """A checkpoint (or option) that the converters cannot represent exactly; the message names the option."""


# --------------------------------------------------------------------------------------------------------------
# Writing the output folder: complete or not at all
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _atomic_output(output: str | Path, overwrite: bool, sources: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """A temporary folder beside `output`, moved to `output` when the block completes; removed if it fails."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite (overwrite=True) to replace it.")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder; remove it or choose another output.")
    for source in sources:
        if Path(source).exists() and output.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
            raise ValueError(f"The output {output} would replace the source {source}; choose another output folder.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    try:
        yield staging
        if output.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
            output.rename(retired / output.name)
            staging.rename(output)
            shutil.rmtree(retired)
        else:
            staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _build_model(
    config: VanillaTransformerConfig, state: dict[str, torch.Tensor]
) -> VanillaTransformerForConditionalGeneration:
    """The model of `config` holding `state` (our names; tied copies may be left out), loaded strictly: every tensor
    named, none left over, each at the config's shape."""
    model = VanillaTransformerForConditionalGeneration(config).eval()
    for tied, source in model.get_expanded_tied_weights_keys(all_submodels=True).items():
        if source in state:
            state.setdefault(tied, state[source])
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:  # a bug in a converter's name mapping, not a user error
        raise RuntimeError(f"converter left tensors unmapped: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConversionError(
                f"{name}: the checkpoint's tensor has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[name].shape)}."
            )
    model.load_state_dict({name: tensor.to(torch.float32) for name, tensor in state.items()}, strict=True)
    return model


def _save_model_folder(
    staging: Path, config: VanillaTransformerConfig, state: dict[str, torch.Tensor], generation_config: Any
) -> None:
    """`_build_model`, saved with its code, config (`auto_map`) and generation config into `staging`."""
    model = _build_model(config, state)
    model.generation_config = generation_config
    model.save_pretrained(staging)


# --------------------------------------------------------------------------------------------------------------
# OPUS-MT / Marian
# --------------------------------------------------------------------------------------------------------------
# Our parameter names (after "model.{encoder,decoder}.layers.N.") -> MarianMTModel's.
_MARIAN_LAYER_NAMES = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.o_proj": "self_attn.out_proj",
    "cross_attn.q_proj": "encoder_attn.q_proj",
    "cross_attn.k_proj": "encoder_attn.k_proj",
    "cross_attn.v_proj": "encoder_attn.v_proj",
    "cross_attn.o_proj": "encoder_attn.out_proj",
    "self_attn_residual.layer_norm": "self_attn_layer_norm",
    "cross_attn_residual.layer_norm": "encoder_attn_layer_norm",
    "ffn_residual.layer_norm": "final_layer_norm",
    "ffn.fc1": "fc1",
    "ffn.fc2": "fc2",
}


def marian_name(name: str) -> str | None:
    """The MarianMTModel tensor that holds our tensor `name` (None: the output bias, taken from final_logits_bias)."""
    match = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match:
        stack, index, module, kind = match.groups()
        return f"model.{stack}.layers.{index}.{_MARIAN_LAYER_NAMES[module]}.{kind}"
    match = re.fullmatch(r"model\.(encoder|decoder)\.embeddings\.embed_tokens\.weight", name)
    if match:
        return f"model.{match.group(1)}.embed_tokens.weight"
    if name == "lm_head.weight":
        return "lm_head.weight"
    if name == "lm_head.bias":
        return None
    raise RuntimeError(f"no Marian name for {name}")


def marian_config_to_ours(marian_config: Any) -> VanillaTransformerConfig:
    """The `VanillaTransformerConfig` of a `MarianConfig`; what it cannot express is refused by name."""
    c = marian_config
    if getattr(c, "model_type", None) != "marian":
        raise ConversionError(f"model_type={getattr(c, 'model_type', None)!r}: the marian converter reads 'marian'.")
    for encoder_name, decoder_name in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if getattr(c, encoder_name) != getattr(c, decoder_name):
            raise ConversionError(
                f"{encoder_name}={getattr(c, encoder_name)} differs from {decoder_name}={getattr(c, decoder_name)}: "
                "the model has one value for both stacks."
            )
    if c.activation_function not in ACTIVATIONS:
        raise ConversionError(f"activation_function={c.activation_function!r}: expected one of {ACTIVATIONS}.")
    if c.d_model % c.encoder_attention_heads:
        raise ConversionError(f"d_model={c.d_model} is not a multiple of encoder_attention_heads.")
    shared = bool(c.share_encoder_decoder_embeddings)
    decoder_vocab_size = None
    if not shared and (c.decoder_vocab_size or c.vocab_size) != c.vocab_size:
        decoder_vocab_size = c.decoder_vocab_size
    return VanillaTransformerConfig(
        vocab_size=c.vocab_size,
        decoder_vocab_size=decoder_vocab_size,
        d_model=c.d_model,
        d_ff=c.encoder_ffn_dim,
        h=c.encoder_attention_heads,
        encoder_layers=c.encoder_layers,
        decoder_layers=c.decoder_layers,
        dropout=c.dropout,
        attention_dropout=c.attention_dropout,
        activation_dropout=c.activation_dropout,
        label_smoothing=0.0,  # MarianMTModel's loss is plain cross-entropy
        layer_norm_eps=1e-5,  # nn.LayerNorm's default, which MarianMTModel uses
        max_position_embeddings=c.max_position_embeddings,
        scale_embedding=c.scale_embedding,
        tie_word_embeddings=c.tie_word_embeddings,
        share_encoder_decoder_embeddings=shared,
        activation_function=c.activation_function,
        sinusoid_layout="concatenated",
        sinusoid_frequencies="paper",
        initializer="normal",
        init_std=c.init_std,
        pad_token_id=c.pad_token_id,
        bos_token_id=None,
        eos_token_id=c.eos_token_id if isinstance(c.eos_token_id, int) else c.eos_token_id[0],
        unk_token_id=None,
        decoder_start_token_id=c.decoder_start_token_id,
    )


def _source_generation_config(source_generation_config: Any, config: VanillaTransformerConfig, paper: bool) -> Any:
    """The source model's decoding, scored as transformers scores it; or §6.1's, keeping the source's forbidden tokens."""
    if paper:
        generation_config = paper_generation_config(config)
        generation_config.bad_words_ids = source_generation_config.bad_words_ids
        return generation_config
    generation_config = source_generation_config.__class__.from_dict(source_generation_config.to_dict())
    generation_config._from_model_config = False  # ours, not to be rebuilt from the model config
    generation_config.length_penalty_type = "transformers"
    generation_config.max_new_tokens_over_source = None
    generation_config.decoder_start_token_id = config.decoder_start_token_id
    return generation_config


@torch.no_grad()
def marian_weights(
    marian: Any, unk_token_id: int | None = None
) -> tuple[VanillaTransformerConfig, dict[str, torch.Tensor]]:
    """The config and the state dict (our names) of a loaded `MarianMTModel`."""
    config = marian_config_to_ours(marian.config)
    if unk_token_id is not None and unk_token_id < min(config.vocab_size, config.target_vocab_size):
        config.unk_token_id = unk_token_id
    bias = marian.final_logits_bias.detach().reshape(-1)
    config.output_bias = bool(bias.any())  # an all-zero bias changes nothing: the paper's output layer stays
    marian_state = marian.state_dict()
    if config.share_encoder_decoder_embeddings:
        marian_state.setdefault("model.encoder.embed_tokens.weight", marian.model.shared.weight)
        marian_state.setdefault("model.decoder.embed_tokens.weight", marian.model.shared.weight)
    state = {}
    for name in VanillaTransformerForConditionalGeneration(config).state_dict():
        source = marian_name(name)
        state[name] = bias if source is None else marian_state[source]
    return config, state


@torch.no_grad()
def marian_to_ours(marian: Any) -> VanillaTransformerForConditionalGeneration:
    """A loaded `MarianMTModel` as this project's model, in memory (no tokenizer, no folder); `convert_marian` writes
    the folder."""
    config, state = marian_weights(marian)
    model = _build_model(config, state)
    model.generation_config = _source_generation_config(marian.generation_config, config, paper=False)
    return model


@torch.no_grad()
def convert_marian(
    source: str | Path, output: str | Path, *, overwrite: bool = False, paper_decoding: bool = False
) -> Path:
    """Converts a `MarianMTModel` (a folder or a Hub id) into a model folder of this project at `output`."""
    from transformers import AutoTokenizer, MarianMTModel

    with _atomic_output(output, overwrite, sources=(source,)) as staging:
        marian = MarianMTModel.from_pretrained(source, dtype=torch.float32).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as error:  # TypeError: MarianTokenizer without its .spm files
            raise ConversionError(
                f"{source} has no tokenizer that loads ({error}); the OPUS-MT layout has source.spm, target.spm and "
                "vocab.json (MarianTokenizer needs the sentencepiece package)."
            ) from error
        config, state = marian_weights(marian, unk_token_id=tokenizer.unk_token_id)
        generation_config = _source_generation_config(marian.generation_config, config, paper_decoding)
        _save_model_folder(staging, config, state, generation_config)
        tokenizer.save_pretrained(staging)
    return Path(output)


# --------------------------------------------------------------------------------------------------------------
# fairseq
# --------------------------------------------------------------------------------------------------------------
def _safe_fairseq_globals() -> list[Any]:
    """What a fairseq checkpoint may hold besides tensors and containers: argparse's Namespace (the 2018 releases'
    `args`) and numpy scalars (the best validation loss in `extra_state`). No code runs when these are rebuilt."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:
        return allowed
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    # numpy < 2 pickled the scalar as numpy.core.multiarray.scalar, numpy 2 as numpy._core.multiarray.scalar
    allowed += [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8")]
    return allowed


def load_fairseq_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """`torch.load` with `weights_only=True` and `_safe_fairseq_globals`; anything else is refused (it would run code
    from the pickle) unless `trust_checkpoint`."""
    if trust_checkpoint:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_safe_fairseq_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights_only" not in str(error) and "Unsupported global" not in str(error):
            raise
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            needed = []
        raise ConversionError(
            f"{path} needs arbitrary unpickling to load (it refers to {', '.join(needed) or 'objects other than tensors'}"
            "), which can run code from the file. Pass --trust-checkpoint (trust_checkpoint=True) only if you trust "
            "where it comes from."
        ) from None


def read_fairseq_dictionary(path: Path, rows: int) -> list[str]:
    """fairseq's Dictionary order: <s>, <pad>, </s>, <unk>, then the file's tokens ("token count [flags]" lines),
    then `madeupwordNNNN` fillers up to the embedding's `rows` (fairseq pads dictionaries to a multiple of 8)."""
    if not path.is_file():
        raise ConversionError(f"The dictionary {path} is missing; a fairseq model folder has dict.<lang>.txt files.")
    tokens = list(FAIRSEQ_SPECIALS)
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.rstrip().rsplit(" ", 2 if line.rstrip().endswith("#fairseq:overwrite") else 1)
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
            raise ConversionError(f"{path}:{number}: {line!r} is not a 'token count' line of a fairseq dictionary.")
        tokens.append(fields[0])
    if len(tokens) < rows:
        if rows != math.ceil(len(tokens) / 8) * 8:
            raise ConversionError(
                f"{path} has {len(tokens)} entries (with fairseq's 4 special tokens) but the checkpoint's embedding "
                f"has {rows} rows: the dictionary does not belong to this checkpoint."
            )
        tokens += [f"madeupword{i:04d}" for i in range(rows - len(tokens))]
    elif len(tokens) > rows:
        raise ConversionError(
            f"{path} has {len(tokens)} entries (with fairseq's 4 special tokens) but the checkpoint's embedding has "
            f"{rows} rows: the dictionary does not belong to this checkpoint."
        )
    return tokens


def _fairseq_arguments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's options: `cfg["model"]` (fairseq >= 0.10, a dict or a Namespace) or `args` (2018 releases)."""
    cfg = checkpoint.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        model = cfg["model"]
        arguments = dict(vars(model)) if isinstance(model, argparse.Namespace) else dict(model)
        task = cfg.get("task") or {}
        task = vars(task) if isinstance(task, argparse.Namespace) else dict(task)
        for key in ("source_lang", "target_lang"):
            arguments.setdefault(key, task.get(key))
        return arguments
    if checkpoint.get("args") is not None:
        return dict(vars(checkpoint["args"]))
    raise ConversionError(
        "The checkpoint has neither 'cfg' (fairseq >= 0.10) nor 'args' (fairseq < 0.10): not a fairseq model."
    )


def fairseq_arguments_to_config(
    arguments: dict[str, Any], source_rows: int, target_rows: int
) -> VanillaTransformerConfig:
    """Our config from fairseq's transformer options; every option it cannot express is refused by name."""
    a = arguments

    def get(name: str, default: Any = None) -> Any:
        value = a.get(name, default)
        return default if value is None else value

    arch = str(get("arch", get("_name", "transformer")))
    if "align" in arch or get("alignment_heads") is not None and get("alignment_layer") is not None:
        raise ConversionError(f"arch={arch!r}: alignment heads (transformer_align) cannot be converted.")
    if not arch.startswith("transformer"):
        raise ConversionError(f"arch={arch!r}: only fairseq's transformer translation models can be converted.")
    refused = {
        "layernorm_embedding": "a layer norm on the embeddings",
        "encoder_learned_pos": "learned positions (fairseq's layout, offset by padding_idx + 1)",
        "decoder_learned_pos": "learned positions (fairseq's layout, offset by padding_idx + 1)",
        "adaptive_softmax_cutoff": "an adaptive softmax",
        "adaptive_input": "adaptive input embeddings",
        "tie_adaptive_weights": "adaptive input/softmax tying",
        "no_token_positional_embeddings": "no positional embeddings",
        "cross_self_attention": "cross+self attention",
        "no_decoder_final_norm": "a pre-LN decoder without its final norm",
        "encoder_layers_to_keep": "pruned encoder layers",
        "decoder_layers_to_keep": "pruned decoder layers",
        "quant_noise_pq": "quantization noise blocks",
    }
    for name, what in refused.items():
        value = a.get(name)
        if value not in (None, False, 0, 0.0, "", "0"):
            raise ConversionError(f"--{name.replace('_', '-')}={value!r}: {what} cannot be converted.")
    d_model = get("encoder_embed_dim", 512)
    for name in ("decoder_embed_dim", "decoder_output_dim", "decoder_input_dim"):
        if get(name, d_model) != d_model:
            raise ConversionError(f"--{name.replace('_', '-')}={get(name)} differs from encoder_embed_dim={d_model}.")
    for encoder_name, decoder_name, default in (
        ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim", 2048),
        ("encoder_attention_heads", "decoder_attention_heads", 8),
        ("encoder_normalize_before", "decoder_normalize_before", False),
    ):
        if get(encoder_name, default) != get(decoder_name, default):
            raise ConversionError(
                f"--{encoder_name.replace('_', '-')}={get(encoder_name, default)} differs from "
                f"--{decoder_name.replace('_', '-')}={get(decoder_name, default)}: the model has one value for both."
            )
    activation = get("activation_fn", "relu")
    activation = {"gelu_accurate": "gelu_new", "gelu_fast": "gelu_new"}.get(activation, activation)
    if activation not in ACTIVATIONS:
        raise ConversionError(f"--activation-fn={get('activation_fn')!r}: expected relu, gelu or gelu_accurate.")
    share_all = bool(get("share_all_embeddings", False))
    return VanillaTransformerConfig(
        vocab_size=source_rows,
        decoder_vocab_size=None if share_all else target_rows,
        d_model=d_model,
        d_ff=get("encoder_ffn_embed_dim", 2048),
        h=get("encoder_attention_heads", 8),
        encoder_layers=get("encoder_layers", 6),
        decoder_layers=get("decoder_layers", 6),
        dropout=get("dropout", 0.1),
        attention_dropout=get("attention_dropout", 0.0),
        activation_dropout=get("activation_dropout", get("relu_dropout", 0.0)),
        label_smoothing=0.0,
        layer_norm_eps=1e-5,  # fairseq's LayerNorm: nn.LayerNorm's default
        norm_first=bool(get("encoder_normalize_before", False)),
        scale_embedding=not get("no_scale_embedding", False),
        share_encoder_decoder_embeddings=share_all,
        tie_word_embeddings=share_all or bool(get("share_decoder_input_output_embed", False)),
        activation_function=activation,
        sinusoid_layout="concatenated",
        sinusoid_frequencies="tensor2tensor",
        position_offset=FAIRSEQ_SPECIALS.index("<pad>") + 1,
        max_position_embeddings=max(get("max_source_positions", 1024), get("max_target_positions", 1024)),
        pad_token_id=FAIRSEQ_SPECIALS.index("<pad>"),
        bos_token_id=FAIRSEQ_SPECIALS.index("<s>"),
        eos_token_id=FAIRSEQ_SPECIALS.index("</s>"),
        unk_token_id=FAIRSEQ_SPECIALS.index("<unk>"),
        decoder_start_token_id=FAIRSEQ_SPECIALS.index("</s>"),  # fairseq starts the target with eos
    )


def _fairseq_state(weights: dict[str, torch.Tensor], config: VanillaTransformerConfig) -> dict[str, torch.Tensor]:
    """Our state dict from fairseq's, in either layout (fused `in_proj_weight` and `layer_norms.0/1` of 2018, or
    `q_proj`/`k_proj`/`v_proj` and named layer norms); every fairseq tensor must be used."""
    weights = {k: v for k, v in weights.items() if not k.endswith((".version", "._float_tensor"))}
    used: set[str] = set()
    d = config.d_model

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return weights[name]

    def attention(prefix: str, ours: str, state: dict[str, torch.Tensor]) -> None:
        for kind in ("weight", "bias"):
            if f"{prefix}.in_proj_{kind}" in weights:  # the 2018 layout: q, k, v stacked in that order
                q, k, v = take(f"{prefix}.in_proj_{kind}").split(d)
            else:
                q, k, v = (take(f"{prefix}.{p}_proj.{kind}") for p in "qkv")
            state[f"{ours}.q_proj.{kind}"], state[f"{ours}.k_proj.{kind}"], state[f"{ours}.v_proj.{kind}"] = q, k, v
            state[f"{ours}.o_proj.{kind}"] = take(f"{prefix}.out_proj.{kind}")

    def norm(fairseq_names: tuple[str, ...], ours: str, state: dict[str, torch.Tensor]) -> None:
        name = next((n for n in fairseq_names if f"{n}.weight" in weights), fairseq_names[0])
        for kind in ("weight", "bias"):
            state[f"{ours}.{kind}"] = take(f"{name}.{kind}")

    state: dict[str, torch.Tensor] = {}
    for stack, depth in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(depth):
            src, dst = f"{stack}.layers.{i}", f"model.{stack}.layers.{i}"
            attention(f"{src}.self_attn", f"{dst}.self_attn", state)
            norm((f"{src}.self_attn_layer_norm", f"{src}.layer_norms.0"), f"{dst}.self_attn_residual.layer_norm", state)
            if stack == "decoder":
                attention(f"{src}.encoder_attn", f"{dst}.cross_attn", state)
                norm((f"{src}.encoder_attn_layer_norm",), f"{dst}.cross_attn_residual.layer_norm", state)
            for fc in ("fc1", "fc2"):
                for kind in ("weight", "bias"):
                    state[f"{dst}.ffn.{fc}.{kind}"] = take(f"{src}.{fc}.{kind}")
            norm((f"{src}.final_layer_norm", f"{src}.layer_norms.1"), f"{dst}.ffn_residual.layer_norm", state)
        if config.norm_first:
            norm((f"{stack}.layer_norm",), f"model.{stack}.final_norm", state)
    state["model.encoder.embeddings.embed_tokens.weight"] = take("encoder.embed_tokens.weight")
    if not config.share_encoder_decoder_embeddings:
        state["model.decoder.embeddings.embed_tokens.weight"] = take("decoder.embed_tokens.weight")
    else:
        used.add("decoder.embed_tokens.weight")
    if not config.tie_word_embeddings:
        name = (
            "decoder.output_projection.weight" if "decoder.output_projection.weight" in weights else "decoder.embed_out"
        )
        state["lm_head.weight"] = take(name)
    else:
        used.update({"decoder.output_projection.weight"} & weights.keys())
    left = sorted(weights.keys() - used)
    if left:
        raise ConversionError(
            f"The checkpoint has tensors the model has no place for: {', '.join(left[:8])}"
            f"{' ...' if len(left) > 8 else ''} (an option of the architecture that cannot be converted)."
        )
    decoder_embeddings = weights.get("decoder.embed_tokens.weight", weights["encoder.embed_tokens.weight"])
    if config.share_encoder_decoder_embeddings and not torch.equal(
        decoder_embeddings, weights["encoder.embed_tokens.weight"]
    ):
        raise ConversionError("--share-all-embeddings is set but the encoder and decoder embeddings differ.")
    return state


def _fairseq_tokenizer(
    staging: Path, folder: Path, languages: tuple[str, str], dictionaries: tuple[list[str], list[str]]
):
    """`FairseqBPETokenizer` (transformers' FSMTTokenizer, Moses + BPE as fairseq's WMT pipeline, with a target mode)
    from `bpecodes` and the dictionaries: fairseq marks a word-inner piece with a trailing "@@", FSMT's BPE marks a
    word-final piece with "</w>"."""
    from .tokenization_vanilla_transformer import FairseqBPETokenizer

    def fsmt_vocabulary(tokens: list[str]) -> dict[str, int]:
        vocabulary = {}
        for index, token in enumerate(tokens):
            if index < len(FAIRSEQ_SPECIALS):
                key = token
            elif token.endswith("@@"):
                key = token[:-2]
            else:
                key = token + "</w>"
            vocabulary.setdefault(key, index)
        return vocabulary

    merges = []
    for line in (folder / "bpecodes").read_text(encoding="utf-8").split("\n"):
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#version"):
            merges.append(f"{parts[0]} {parts[1]}")
    files = {"src": staging / "fairseq-vocab-src.json", "tgt": staging / "fairseq-vocab-tgt.json"}
    for path, tokens in zip(files.values(), dictionaries, strict=True):
        path.write_text(json.dumps(fsmt_vocabulary(tokens), ensure_ascii=False), encoding="utf-8")
    merges_file = staging / "fairseq-merges.txt"
    merges_file.write_text("\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = FairseqBPETokenizer(
        langs=list(languages), src_vocab_file=str(files["src"]), tgt_vocab_file=str(files["tgt"]),
        merges_file=str(merges_file),
    )  # fmt: skip
    tokenizer.save_pretrained(staging)
    for path in (*files.values(), merges_file):
        path.unlink()


@torch.no_grad()
def convert_fairseq(
    source: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    paper_decoding: bool = False,
) -> Path:
    """Converts a fairseq translation checkpoint folder (`model.pt`, `dict.<src>.txt`, `dict.<tgt>.txt`, optional
    `bpecodes`) or a checkpoint file beside its dictionaries into a model folder of this project at `output`."""
    from transformers import GenerationConfig

    source = Path(source)
    if source.is_file():
        folder, checkpoint_path = source.parent, source
    elif source.is_dir():
        folder = source
        checkpoint_path = folder / "model.pt"
        if not checkpoint_path.is_file():
            found = sorted(folder.glob("*.pt"))
            if len(found) > 1:
                raise ConversionError(
                    f"{folder} holds {len(found)} checkpoints ({', '.join(p.name for p in found)}) and no model.pt: an "
                    "ensemble cannot be converted into one model; give one checkpoint file as SOURCE."
                )
            if not found:
                raise ConversionError(f"{folder} has no model.pt (nor any other *.pt checkpoint).")
            checkpoint_path = found[0]
    else:
        raise FileNotFoundError(f"{source} does not exist.")
    if ":" in checkpoint_path.name:
        raise ConversionError(f"{checkpoint_path.name}: an ensemble (checkpoints joined by ':') cannot be converted.")

    with _atomic_output(output, overwrite, sources=(folder,)) as staging:
        checkpoint = load_fairseq_checkpoint(checkpoint_path, trust_checkpoint)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise ConversionError(f"{checkpoint_path} is not a fairseq checkpoint (no 'model' state dict).")
        arguments = _fairseq_arguments(checkpoint)
        weights = {k: v for k, v in checkpoint["model"].items() if isinstance(v, torch.Tensor)}
        if "encoder.embed_tokens.weight" not in weights:
            raise ConversionError(f"{checkpoint_path} has no encoder.embed_tokens.weight: not a fairseq transformer.")
        source_rows = weights["encoder.embed_tokens.weight"].shape[0]
        target_rows = weights.get("decoder.embed_tokens.weight", weights["encoder.embed_tokens.weight"]).shape[0]
        languages = arguments.get("source_lang"), arguments.get("target_lang")
        if not all(languages):
            found = sorted(p.name[len("dict.") : -len(".txt")] for p in folder.glob("dict.*.txt"))
            if len(found) != 2:
                raise ConversionError(
                    f"The checkpoint names no source_lang/target_lang and {folder} has dictionaries for {found}; "
                    "expected dict.<src>.txt and dict.<tgt>.txt."
                )
            languages = tuple(found)
        dictionaries = (
            read_fairseq_dictionary(folder / f"dict.{languages[0]}.txt", source_rows),
            read_fairseq_dictionary(folder / f"dict.{languages[1]}.txt", target_rows),
        )
        config = fairseq_arguments_to_config(arguments, source_rows, target_rows)
        state = _fairseq_state(weights, config)
        generation_config = GenerationConfig(
            # fairseq-generate's defaults: beam 5, scores divided by length^1 (--lenpen 1), at most 200 tokens
            # (--max-len-b 200), never a pad.
            num_beams=5,
            length_penalty=1.0,
            max_new_tokens=200,
            bad_words_ids=[[config.pad_token_id]],
            pad_token_id=config.pad_token_id,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            decoder_start_token_id=config.decoder_start_token_id,
        )
        generation_config = _source_generation_config(generation_config, config, paper_decoding)
        _save_model_folder(staging, config, state, generation_config)
        if (folder / "bpecodes").is_file():
            _fairseq_tokenizer(staging, folder, languages, dictionaries)
        else:
            print(
                f"{folder} has no bpecodes: the converted folder has no tokenizer (encode as the fairseq model did).",
                file=sys.stderr,
            )
    return Path(output)


# --------------------------------------------------------------------------------------------------------------
# CTranslate2
# --------------------------------------------------------------------------------------------------------------
def _vocabulary(tokens: list[str | None], size: int, side: str) -> list[str]:
    """CTranslate2 maps tokens by string: `size` unique strings, placeholders where the tokenizer has no token."""
    vocabulary = [token if token is not None else f"<unused{i}>" for i, token in enumerate(tokens[:size])]
    vocabulary += [f"<unused{i}>" for i in range(len(vocabulary), size)]
    seen: dict[str, int] = {}
    for index, token in enumerate(vocabulary):
        if token in seen:
            raise ConversionError(
                f"The {side} vocabulary has {token!r} at ids {seen[token]} and {index}: CTranslate2 maps tokens by "
                "string and needs each once."
            )
        seen[token] = index
    return vocabulary


def _tokenizer_vocabularies(tokenizer: Any, config: VanillaTransformerConfig) -> tuple[list[str], list[str]]:
    """The token strings of the source and target ids. MarianTokenizer and FSMTTokenizer keep the source's
    token -> id in `encoder` and the target's id -> token in `decoder` (their `convert_ids_to_tokens` reads the
    target's); other tokenizers have one vocabulary."""
    encoder, decoder = getattr(tokenizer, "encoder", None), getattr(tokenizer, "decoder", None)
    if isinstance(encoder, dict) and isinstance(decoder, dict) and all(isinstance(k, int) for k in decoder):
        by_id = {index: token for token, index in encoder.items()}
        source = [by_id.get(i) for i in range(config.vocab_size)]
        target = [decoder.get(i) for i in range(config.target_vocab_size)]
    else:
        if config.decoder_vocab_size is not None:
            raise ConversionError(
                f"The tokenizer ({type(tokenizer).__name__}) has one vocabulary, but the model has a separate target "
                f"vocabulary (decoder_vocab_size={config.decoder_vocab_size})."
            )
        source = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), config.vocab_size))))
        target = source
    return (
        _vocabulary(source, config.vocab_size, "source"),
        _vocabulary(target, config.target_vocab_size, "target"),
    )


_CT2_ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "gelu_new": "GELUTanh", "swish": "SWISH", "silu": "SWISH"}


def ctranslate2_spec(
    model: VanillaTransformerForConditionalGeneration,
    source_tokens: list[str],
    target_tokens: list[str],
    max_positions: int | None = None,
):
    """CTranslate2's `TransformerSpec` holding `model`'s weights (positions as a table of `max_positions` rows)."""
    from ctranslate2.specs import common_spec, transformer_spec

    config = model.config
    for name in ("d_k", "d_v"):
        if getattr(config, name) * config.h != config.d_model:
            raise ConversionError(
                f"{name}={getattr(config, name)} with h={config.h}: CTranslate2's attention needs h * {name} == "
                f"d_model={config.d_model} (Table 3 row B cannot be exported)."
            )
    ours = model.model
    spec = transformer_spec.TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.h,
        pre_norm=config.norm_first,
        activation=getattr(common_spec.Activation, _CT2_ACTIVATIONS[config.activation_function]),
    )

    def numpy(tensor: torch.Tensor) -> Any:
        # a copy: CTranslate2 quantizes the arrays in place, and .numpy() would share the model's memory
        return tensor.detach().to("cpu", torch.float32, copy=True).numpy()

    def linear(target: Any, *sources: torch.nn.Linear) -> None:
        target.weight = numpy(torch.cat([s.weight for s in sources]))
        target.bias = numpy(torch.cat([s.bias for s in sources]))

    def norm(target: Any, source: torch.nn.LayerNorm) -> None:
        target.gamma, target.beta = numpy(source.weight), numpy(source.bias)

    rows = max_positions or config.max_position_embeddings
    for target, stack in ((spec.encoder, ours.encoder), (spec.decoder, ours.decoder)):
        embeddings = target.embeddings[0] if isinstance(target.embeddings, list) else target.embeddings
        embeddings.weight = numpy(stack.embeddings.embed_tokens.weight)
        target.scale_embeddings = config.scale_embedding  # sqrt(d_model)
        if stack.embeddings.embed_positions is not None:  # learned (row E): the table, from position_offset on
            table = stack.embeddings.embed_positions.weight[config.position_offset :]
        else:
            positions = torch.arange(rows) + config.position_offset
            table = sinusoidal_position_encoding(
                positions, config.d_model, layout=config.sinusoid_layout, frequencies=config.sinusoid_frequencies
            )
        target.position_encodings.encodings = numpy(table)
        if config.norm_first:
            norm(target.layer_norm, stack.final_norm)
    for target, layer in zip(spec.encoder.layer, ours.encoder.layers, strict=True):
        attn = layer.self_attn
        linear(target.self_attention.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        linear(target.self_attention.linear[1], attn.o_proj)
        norm(target.self_attention.layer_norm, layer.self_attn_residual.layer_norm)
        linear(target.ffn.linear_0, layer.ffn.fc1)
        linear(target.ffn.linear_1, layer.ffn.fc2)
        norm(target.ffn.layer_norm, layer.ffn_residual.layer_norm)
    for target, layer in zip(spec.decoder.layer, ours.decoder.layers, strict=True):
        attn, cross = layer.self_attn, layer.cross_attn
        linear(target.self_attention.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        linear(target.self_attention.linear[1], attn.o_proj)
        norm(target.self_attention.layer_norm, layer.self_attn_residual.layer_norm)
        linear(target.attention.linear[0], cross.q_proj)
        linear(target.attention.linear[1], cross.k_proj, cross.v_proj)
        linear(target.attention.linear[2], cross.o_proj)
        norm(target.attention.layer_norm, layer.cross_attn_residual.layer_norm)
        linear(target.ffn.linear_0, layer.ffn.fc1)
        linear(target.ffn.linear_1, layer.ffn.fc2)
        norm(target.ffn.layer_norm, layer.ffn_residual.layer_norm)
    spec.decoder.projection.weight = numpy(model.lm_head.weight)
    if model.lm_head.bias is not None:
        spec.decoder.projection.bias = numpy(model.lm_head.bias)

    spec.register_source_vocabulary(source_tokens)
    spec.register_target_vocabulary(target_tokens)
    spec.config.layer_norm_epsilon = config.layer_norm_eps
    spec.config.decoder_start_token = target_tokens[config.decoder_start_token_id]
    spec.config.eos_token = target_tokens[config.eos_token_id]
    spec.config.unk_token = target_tokens[config.unk_token_id] if config.unk_token_id is not None else "<unk>"
    spec.config.bos_token = target_tokens[config.bos_token_id] if config.bos_token_id is not None else "<s>"
    spec.config.add_source_bos = False  # the tokenizer's ids are given as they are (with its </s>)
    spec.config.add_source_eos = False
    spec.validate()
    return spec


@torch.no_grad()
def _check_our_model_type(source: str | Path) -> None:
    """A folder (or Hub id) of another kind of model is refused by name, before any weight is read."""
    from transformers import PreTrainedConfig

    try:
        found = PreTrainedConfig.get_config_dict(str(source))[0].get("model_type")
    except (OSError, ValueError) as error:
        raise ConversionError(f"{source}: cannot read its config.json ({error}).") from error
    if found != VanillaTransformerConfig.model_type:
        kind = {"marian": "marian", "fsmt": "fairseq"}.get(found, "marian|fairseq")
        raise ConversionError(
            f"{source} is a {found!r} model, not one of this project ({VanillaTransformerConfig.model_type!r}). "
            f"Convert it first: vanilla-transformer-convert {kind} {source} OUTPUT, then export OUTPUT."
        )


def export_ctranslate2(
    source: str | Path | VanillaTransformerForConditionalGeneration,
    output: str | Path,
    *,
    quantization: str | None = None,
    overwrite: bool = False,
    tokenizer: Any = None,
    max_positions: int | None = None,
) -> Path:
    """Writes a model of this project (a folder or Hub id with its tokenizer, or a loaded model with `tokenizer`) as a
    CTranslate2 model directory. `quantization` is one of `CTRANSLATE2_QUANTIZATIONS` (None: as the weights are)."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError as error:
        raise ImportError("The ctranslate2 exporter needs the ctranslate2 package: pip install ctranslate2") from error
    if quantization is not None and quantization not in CTRANSLATE2_QUANTIZATIONS:
        raise ConversionError(f"quantization={quantization!r}: expected one of {CTRANSLATE2_QUANTIZATIONS}.")
    sources = () if isinstance(source, torch.nn.Module) else (source,)
    with _atomic_output(output, overwrite, sources=sources) as staging:
        if isinstance(source, torch.nn.Module):
            model = source
        else:
            _check_our_model_type(source)
            model = VanillaTransformerForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
            if tokenizer is None:
                from transformers import AutoTokenizer

                from .tokenization_vanilla_transformer import FairseqBPETokenizer

                settings = Path(source) / "tokenizer_config.json"
                own = settings.is_file() and "FairseqBPETokenizer" in settings.read_text(encoding="utf-8")
                try:  # the tokenizer of converted fairseq models is this package's own: no remote code to trust
                    tokenizer = (FairseqBPETokenizer if own else AutoTokenizer).from_pretrained(source)
                except (OSError, ValueError) as error:
                    raise ConversionError(
                        f"{source} has no tokenizer ({error}); CTranslate2 models carry their vocabulary as strings."
                    ) from error
        if tokenizer is None:
            raise ConversionError("export_ctranslate2 of a loaded model needs its tokenizer (tokenizer=...).")
        source_tokens, target_tokens = _tokenizer_vocabularies(tokenizer, model.config)
        spec = ctranslate2_spec(model.eval(), source_tokens, target_tokens, max_positions)
        spec.optimize(quantization=quantization)
        spec.save(str(staging))
    return Path(output)


# --------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vanilla-transformer-convert",
        description="Convert OPUS-MT/Marian and fairseq checkpoints into this project's model folders, and export "
        "them to CTranslate2.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    marian = commands.add_parser("marian", help="a MarianMTModel folder or Hub id (OPUS-MT) -> a model folder")
    fairseq = commands.add_parser(
        "fairseq",
        help="a fairseq checkpoint folder (model.pt, dict.<src>.txt, dict.<tgt>.txt, bpecodes) -> a model folder",
    )
    ct2 = commands.add_parser("ctranslate2", help="a model folder of this project -> a CTranslate2 model directory")
    for sub in (marian, fairseq, ct2):
        sub.add_argument("source", help="what to convert")
        sub.add_argument("output", help="the folder to write (must not exist unless --overwrite)")
        sub.add_argument("--overwrite", action="store_true", help="replace OUTPUT once the new one is complete")
    for sub in (marian, fairseq):
        sub.add_argument(
            "--paper-decoding",
            action="store_true",
            help="the generation config of §6.1 (beam 4, GNMT length penalty 0.6, source length + 50) instead of "
            "the source model's",
        )
    fairseq.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the checkpoint without restrictions (runs code from it: only for files you trust)",
    )
    ct2.add_argument("--quantization", choices=CTRANSLATE2_QUANTIZATIONS, default=None)
    ct2.add_argument(
        "--max-positions",
        type=int,
        default=None,
        help="rows of the position table (default: the config's max_position_embeddings)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "marian":
            written = convert_marian(
                args.source, args.output, overwrite=args.overwrite, paper_decoding=args.paper_decoding
            )
        elif args.command == "fairseq":
            written = convert_fairseq(
                args.source, args.output, overwrite=args.overwrite, trust_checkpoint=args.trust_checkpoint,
                paper_decoding=args.paper_decoding,
            )  # fmt: skip
        else:
            written = export_ctranslate2(
                args.source, args.output, quantization=args.quantization, overwrite=args.overwrite,
                max_positions=args.max_positions,
            )  # fmt: skip
    except (ConversionError, FileExistsError, FileNotFoundError) as error:
        print(f"vanilla-transformer-convert: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
