"""The models this project is measured against, built on the same weights as a VanillaTransformer model.

- `marian_twin`: transformers' `MarianMTModel` configured as the paper's model (ReLU, post-LN, sinusoids, one shared
  embedding matrix, tied output layer) with every weight copied, and its position table replaced by the paper's
  interleaved sinusoids, so it computes the same function (up to its LayerNorm epsilon of 1e-5).
- `TorchTransformerLM`: `torch.nn.Transformer` with token embeddings, sinusoids and a tied output layer.
- `export_ctranslate2`: a CTranslate2 model directory holding the same weights, written by the user-facing exporter
  (`hf_vanilla_transformer.convert.export_ctranslate2`) with a synthetic tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MarianConfig, MarianMTModel

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, convert
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoidal_position_encoding


def marian_config(config) -> MarianConfig:
    return MarianConfig(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.h,
        decoder_attention_heads=config.h,
        encoder_ffn_dim=config.d_ff,
        decoder_ffn_dim=config.d_ff,
        activation_function="relu",
        scale_embedding=True,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=None,
    )


@torch.no_grad()
def marian_twin(model: VanillaTransformerForConditionalGeneration) -> MarianMTModel:
    """A MarianMTModel holding `model`'s weights (only h * d_k == h * d_v == d_model is expressible in Marian), its
    position tables replaced by the paper's interleaved sinusoids. Tensors are matched by name (the converter's
    `marian_name`), so a layer added to this model fails here loudly instead of being left at random."""
    config = model.config
    if config.h * config.d_k != config.d_model or config.h * config.d_v != config.d_model:
        raise ValueError("MarianMTModel needs h * d_k == h * d_v == d_model.")
    marian = MarianMTModel(marian_config(config)).eval()
    table = sinusoidal_position_encoding(torch.arange(marian.config.max_position_embeddings), config.d_model)
    state = {convert.marian_name(name): tensor for name, tensor in model.state_dict().items()}
    state["model.shared.weight"] = state["model.encoder.embed_tokens.weight"]
    state["final_logits_bias"] = torch.zeros_like(marian.final_logits_bias)
    for stack in ("encoder", "decoder"):
        state[f"model.{stack}.embed_positions.weight"] = table
    marian.load_state_dict(state, strict=True)
    marian.generation_config.max_length = None
    marian.generation_config.num_beams = 1
    marian.generation_config.bad_words_ids = None
    return marian


class TorchTransformerLM(nn.Module):
    """`torch.nn.Transformer` (post-LN, ReLU) with the paper's scaled shared embeddings, sinusoids and a tied output
    layer, trained with the same label-smoothed loss. nn.Transformer always adds a final LayerNorm to each stack."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=config.d_model**-0.5)
        self.transformer = nn.Transformer(
            d_model=config.d_model,
            nhead=config.h,
            num_encoder_layers=config.encoder_layers,
            num_decoder_layers=config.decoder_layers,
            dim_feedforward=config.d_ff,
            dropout=config.dropout,
            batch_first=True,
        )

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        positions = sinusoidal_position_encoding(torch.arange(ids.shape[1], device=ids.device), self.config.d_model)
        return F.dropout(
            self.embed(ids) * math.sqrt(self.config.d_model) + positions, self.config.dropout, self.training
        )

    def forward(self, input_ids, attention_mask, labels):
        decoder_input_ids = labels.new_full(labels.shape, self.config.pad_token_id)
        decoder_input_ids[:, 1:] = labels[:, :-1].clamp(min=0)
        decoder_input_ids[:, 0] = self.config.decoder_start_token_id
        padding = attention_mask == 0
        causal = nn.Transformer.generate_square_subsequent_mask(labels.shape[1], device=labels.device)
        hidden = self.transformer(
            self.embed_tokens(input_ids),
            self.embed_tokens(decoder_input_ids),
            tgt_mask=causal,
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
            tgt_is_causal=True,
        )
        logits = F.linear(hidden, self.embed.weight)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=-100,
            label_smoothing=self.config.label_smoothing,
        )
        return loss


def synthetic_tokenizer(config):
    """A word-level tokenizer whose token i is the string f"t{i}" (the special tokens named): the benchmark's models
    have random weights and no trained tokenizer, and CTranslate2 takes tokens as strings."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = [f"t{i}" for i in range(config.vocab_size)]
    specials = {"pad": config.pad_token_id, "bos": config.bos_token_id, "eos": config.eos_token_id,
                "unk": config.unk_token_id}  # fmt: skip
    names = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    for kind, index in specials.items():
        if index is not None:
            tokens[index] = names[kind]
    unk = tokens[config.unk_token_id] if config.unk_token_id is not None else tokens[0]
    vocabulary = {token: i for i, token in enumerate(tokens)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token=unk)))


def export_ctranslate2(
    model: VanillaTransformerForConditionalGeneration, output_dir: str | Path, quantization: str | None = None
) -> list[str]:
    """Writes `model` as a CTranslate2 model with the user-facing exporter (`hf_vanilla_transformer.convert`) and the
    synthetic tokenizer; returns the vocabulary (token i is the string f"t{i}", specials named)."""
    tokenizer = synthetic_tokenizer(model.config)
    convert.export_ctranslate2(model, output_dir, tokenizer=tokenizer, quantization=quantization, overwrite=True)
    return tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))


# The worker's program: loads the model once, then answers one JSON line per request with the outputs and the time
# of translate_batch alone (as generate() alone is timed for the other contenders).
_CTRANSLATE2_WORKER = """
import json, sys, time
import ctranslate2
folder, compute_type, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
translator = ctranslate2.Translator(folder, device=sys.argv[4], device_index=int(sys.argv[5]),
                                    compute_type=compute_type, inter_threads=1, intra_threads=threads)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    start = time.perf_counter()
    results = translator.translate_batch(request["source"], **request["options"])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "outputs": [r.hypotheses[0] for r in results]}), flush=True)
"""


class CTranslate2Process:
    """CTranslate2's Translator in a process of its own, holding `model`'s weights at `compute_type`.

    In the process that also runs torch it is measured wrong: CTranslate2 and torch each bring their own OpenMP
    runtime (two libgomp copies) and math libraries, and once both have run in one process, both decode markedly
    slower on 2 cores than each does alone. A deployment runs one engine per process; so does the benchmark."""

    def __init__(
        self, model, compute_type: str = "float32", threads: int = 1, device: str = "cpu", tokenizer=None,
        device_index: int = 0,
    ):  # fmt: skip
        """`tokenizer`: the model's own (its tokens are then the CTranslate2 vocabulary); None: the synthetic one."""
        self.compute_type = compute_type
        self._folder = tempfile.TemporaryDirectory(prefix="ctranslate2-")
        if tokenizer is None:
            self.tokens = export_ctranslate2(model, self._folder.name)
        else:
            convert.export_ctranslate2(model, self._folder.name, tokenizer=tokenizer, overwrite=True)
            self.tokens = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CTRANSLATE2_WORKER,
                self._folder.name,
                compute_type,
                str(threads),
                device,
                str(device_index),
            ],  # fmt: skip
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()

    def _read(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            raise RuntimeError(f"The CTranslate2 worker ({self.compute_type}) stopped with exit status {code}.")
        return json.loads(line)

    def translate(self, input_ids: torch.Tensor, beams: int, new_tokens: int) -> tuple[list[list[int]], float]:
        """Token ids of the best hypothesis of each source (exactly `new_tokens` of them), and the seconds
        translate_batch took."""
        source = [[self.tokens[i] for i in row] for row in input_ids.tolist()]
        options = {"beam_size": beams, "max_decoding_length": new_tokens, "min_decoding_length": new_tokens}
        return self.translate_tokens(source, **options)

    def translate_tokens(self, source: list[list[str]], **options) -> tuple[list[list[int]], float]:
        """translate_batch(source, **options) in the worker: the best hypotheses as token ids, and its seconds."""
        self._process.stdin.write(json.dumps({"source": source, "options": options}) + "\n")
        self._process.stdin.flush()
        answer = self._read()
        return [[self.index[token] for token in row] for row in answer["outputs"]], answer["seconds"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=60)
        self._folder.cleanup()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
