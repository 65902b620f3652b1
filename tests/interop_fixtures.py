"""Checkpoints in the formats the converters read, made locally from random weights (no network).

- `opus_mt_folder`: a `MarianMTModel` folder in the OPUS-MT layout (swish, [sin | cos] sinusoids, a non-zero
  `final_logits_bias`, pad as the decoder start; shared or separate vocabularies) with a `MarianTokenizer` whose
  sentencepiece models are trained here on the demo corpus.
- `fairseq_folder`: a fairseq translation checkpoint (`model.pt`, `dict.<src>.txt`, `dict.<tgt>.txt`, `bpecodes`)
  written from a random `FSMTForConditionalGeneration`, transformers' port of fairseq's transformer, which is then
  the reference. Both layouts: 2018 (`args`, fused `in_proj_weight`, `layer_norms.0/1`, no output projection when
  shared, `decoder.embed_out` otherwise) and fairseq >= 0.10 (`cfg`, named projections and norms).
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import torch

from hf_vanilla_transformer_training.data import demo_pair


def demo_sentences(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [demo_pair(rng) for _ in range(count)]


# ---- OPUS-MT / Marian ------------------------------------------------------------------------------------------
def _sentencepiece(texts: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=2, unk_id=1, pad_id=-1,
        minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def _marian_vocabulary(spm_model: bytes, pad_last: bool = True) -> dict[str, int]:
    """OPUS-MT's vocab.json: "</s>" 0, "<unk>" 1, the pieces, "<pad>" last (or third, for two vocabularies of different
    sizes that must agree on the special ids)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=spm_model)
    vocabulary = {"</s>": 0, "<unk>": 1} if pad_last else {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for i in range(processor.get_piece_size()):
        vocabulary.setdefault(processor.id_to_piece(i), len(vocabulary))
    vocabulary.setdefault("<pad>", len(vocabulary))
    return vocabulary


def opus_mt_folder(
    folder: Path,
    *,
    separate_vocabularies: bool = False,
    activation: str = "swish",
    final_logits_bias: bool = True,
    d_model: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A random MarianMTModel saved with its MarianTokenizer as an OPUS-MT folder."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    pairs = demo_sentences(400, seed=seed)
    source_spm = _sentencepiece([s for s, _ in pairs], 60)
    target_spm = _sentencepiece([t for _, t in pairs], 70) if separate_vocabularies else source_spm
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.spm").write_bytes(source_spm)
    (folder / "target.spm").write_bytes(target_spm)
    source_vocabulary = _marian_vocabulary(source_spm, pad_last=not separate_vocabularies)
    target_vocabulary = _marian_vocabulary(target_spm, pad_last=not separate_vocabularies)
    if separate_vocabularies:
        assert len(source_vocabulary) != len(target_vocabulary)
        (folder / "vocab.json").write_text(json.dumps(source_vocabulary))
        (folder / "target_vocab.json").write_text(json.dumps(target_vocabulary))
        tokenizer = MarianTokenizer(
            str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
            target_vocab_file=str(folder / "target_vocab.json"), separate_vocabs=True,
            source_lang="en", target_lang="de",
        )  # fmt: skip
    else:
        merged = dict(source_vocabulary)
        (folder / "vocab.json").write_text(json.dumps(merged))
        tokenizer = MarianTokenizer(
            str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
            source_lang="en", target_lang="de",
        )  # fmt: skip
    pad = tokenizer.pad_token_id
    config = MarianConfig(
        vocab_size=len(source_vocabulary),
        decoder_vocab_size=len(target_vocabulary),
        share_encoder_decoder_embeddings=not separate_vocabularies,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        activation_function=activation,
        scale_embedding=True,
        max_position_embeddings=128,
        pad_token_id=pad,
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        init_std=0.3,  # large enough for outputs that differ clearly between tokens
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:  # LayerNorm gains and biases away from 1 and 0, so that a swapped one shows
                parameter.copy_(torch.randn_like(parameter) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                parameter.normal_(std=0.1)
        if final_logits_bias:
            model.final_logits_bias.normal_(std=1.0)
    model.generation_config.num_beams = 4
    model.generation_config.max_length = 40
    model.generation_config.bad_words_ids = [[pad]]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- fairseq -----------------------------------------------------------------------------------------------------
def _learn_bpe(texts: list[str], merges: int) -> str:
    """subword-nmt's learn_bpe on Moses-tokenized text: the bpecodes of a fairseq release."""
    from sacremoses import MosesTokenizer
    from subword_nmt.learn_bpe import learn_bpe

    moses = MosesTokenizer(lang="en")
    tokenized = io.StringIO("\n".join(moses.tokenize(t, return_str=True, escape=True) for t in texts) + "\n")
    codes = io.StringIO()
    learn_bpe(tokenized, codes, merges, min_frequency=2)
    return codes.getvalue()


def _fairseq_dictionary(texts: list[str], codes: str) -> list[str]:
    """fairseq-preprocess's dict: every BPE'd token by frequency ("token count" lines), without the 4 specials, padded
    to a multiple of 8 with madeupword entries (which fairseq writes into the file)."""
    from collections import Counter

    from sacremoses import MosesTokenizer
    from subword_nmt.apply_bpe import BPE

    bpe = BPE(io.StringIO(codes))
    moses = MosesTokenizer(lang="en")
    counts = Counter()
    for text in texts:
        counts.update(bpe.process_line(moses.tokenize(text, return_str=True, escape=True)).split())
    tokens = [token for token, _ in counts.most_common()]
    lines = [f"{token} {counts[token]}" for token in tokens]
    while (len(lines) + 4) % 8:
        lines.append(f"madeupword{len(lines) + 4 - len(tokens) - 4:04d} 0")
    return lines


def fairseq_folder(
    folder: Path,
    *,
    layout: str = "2018",
    shared: bool = True,
    normalize_before: bool = False,
    activation: str = "relu",
    seed: int = 0,
):
    """A fairseq checkpoint folder from a random FSMT model; returns (folder, the FSMT model, its source dictionary)."""
    from transformers import FSMTConfig, FSMTForConditionalGeneration

    if normalize_before:
        raise ValueError("FSMT (the reference) is post-LN only")
    pairs = demo_sentences(400, seed=seed)
    texts = [s for s, _ in pairs] + ([t for _, t in pairs] if shared else [])
    codes = _learn_bpe(texts, 80)
    source_lines = _fairseq_dictionary(texts if shared else [s for s, _ in pairs], codes)
    target_lines = source_lines if shared else _fairseq_dictionary([t for _, t in pairs], codes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bpecodes").write_text(codes)
    (folder / "dict.en.txt").write_text("\n".join(source_lines) + "\n")
    (folder / "dict.de.txt").write_text("\n".join(target_lines) + "\n")
    source_rows, target_rows = len(source_lines) + 4, len(target_lines) + 4

    d, heads, ffn, layers = 32, 4, 64, 2
    config = FSMTConfig(
        langs=["en", "de"], src_vocab_size=source_rows, tgt_vocab_size=target_rows, d_model=d,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, activation_function=activation, tie_word_embeddings=shared,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
        max_position_embeddings=128, init_std=0.3, dropout=0.1,
    )  # fmt: skip
    torch.manual_seed(seed)
    reference = FSMTForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "layer_norm" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                parameter.normal_(std=0.1)
    state = {
        name[len("model.") :]: tensor.clone()
        for name, tensor in reference.state_dict().items()
        if "embed_positions" not in name
    }
    options = {
        "arch": "transformer_vaswani_wmt_en_de_big" if layout == "2018" else "transformer",
        "source_lang": "en",
        "target_lang": "de",
        "encoder_embed_dim": d,
        "decoder_embed_dim": d,
        "encoder_ffn_embed_dim": ffn,
        "decoder_ffn_embed_dim": ffn,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_normalize_before": False,
        "decoder_normalize_before": False,
        "share_all_embeddings": shared,
        "share_decoder_input_output_embed": shared,
        "activation_fn": {"gelu_new": "gelu_accurate"}.get(activation, activation),
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "relu_dropout": 0.0,
        "max_source_positions": 1024,
        "max_target_positions": 1024,
        "encoder_learned_pos": False,
        "decoder_learned_pos": False,
        "no_scale_embedding": False,
        "adaptive_softmax_cutoff": None,
    }
    if layout == "2018":
        for name in [n for n in state if n.endswith("q_proj.weight") or n.endswith("q_proj.bias")]:
            prefix, kind = name.rsplit(".q_proj.", 1)
            fused = torch.cat([state.pop(f"{prefix}.{p}_proj.{kind}") for p in "qkv"])
            state[f"{prefix}.in_proj_{kind}"] = fused
        for name in [n for n in state if n.startswith("encoder.layers.") and "layer_norm." in n]:
            renamed = name.replace("self_attn_layer_norm", "layer_norms.0").replace("final_layer_norm", "layer_norms.1")
            state[renamed] = state.pop(name)
        projection = state.pop("decoder.output_projection.weight")
        if not shared:
            state["decoder.embed_out"] = projection
        state["encoder.version"] = torch.tensor([2.0])
        state["decoder.version"] = torch.tensor([2.0])
        options.pop("activation_fn")  # 2018 args had no activation_fn (ReLU)
        checkpoint = {"args": argparse.Namespace(**options), "model": state, "optimizer_history": []}
    else:
        state["encoder.embed_positions._float_tensor"] = torch.zeros(1)
        state["decoder.embed_positions._float_tensor"] = torch.zeros(1)
        options["_name"] = options.pop("arch")
        checkpoint = {
            "cfg": {"model": options, "task": {"source_lang": "en", "target_lang": "de"}},
            "args": None,
            "model": state,
            "extra_state": {"val_loss": 3.25},
        }
    torch.save(checkpoint, folder / "model.pt")
    return folder, reference
