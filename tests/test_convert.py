"""The converters against the implementations they read (no network): MarianMTModel for OPUS-MT folders,
transformers' FSMT (its port of fairseq's transformer) for fairseq checkpoints, sacremoses + subword-nmt for the BPE
tokenizer, and CTranslate2's own decoding for the exported models."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import generate_without_this_package
from interop_fixtures import demo_sentences, fairseq_folder, opus_mt_folder
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, FSMTTokenizer, MarianMTModel

from hf_vanilla_transformer import VanillaTransformerConfig, deviations_from_paper, paper_parameter_count
from hf_vanilla_transformer.convert import (
    ConversionError,
    convert_fairseq,
    convert_marian,
    export_ctranslate2,
    fairseq_arguments_to_config,
)
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoidal_position_encoding

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [s for s, _ in demo_sentences(8, seed=11)]
TARGETS = [t for _, t in demo_sentences(8, seed=11)]


def no_leftovers(folder: Path) -> list[str]:
    """Staging folders the converters write beside OUTPUT; none may outlive a call."""
    return [p.name for p in folder.iterdir() if ".converting-" in p.name or ".replaced-" in p.name]


# ---- OPUS-MT / Marian ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["shared", "separate"])
def marian_pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"marian-{request.param}")
    source = opus_mt_folder(root / "opus-mt", separate_vocabularies=request.param == "separate")
    output = convert_marian(source, root / "converted")
    return source, output


def test_marian_logits_and_tokens_equal_marian(marian_pair):
    source, output = marian_pair
    marian = MarianMTModel.from_pretrained(source).eval()
    ours = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert type(tokenizer).__name__ == "MarianTokenizer"
    original = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(SOURCES, text_target=TARGETS, return_tensors="pt", padding=True)
    assert torch.equal(batch.input_ids, original(SOURCES, return_tensors="pt", padding=True).input_ids)
    assert ours.config.activation_function == "swish" and ours.config.output_bias
    assert ours.config.sinusoid_layout == "concatenated" and ours.config.layer_norm_eps == 1e-5
    assert ours.config.decoder_start_token_id == ours.config.pad_token_id == marian.config.pad_token_id
    separate = marian.config.share_encoder_decoder_embeddings is False
    assert ours.config.share_encoder_decoder_embeddings is not separate
    assert ours.config.target_vocab_size == marian.config.decoder_vocab_size
    with torch.no_grad():
        expected = marian(**batch).logits
        got = ours(**batch).logits
    assert (expected - got).abs().max().item() < 1e-4
    for beams in (1, 4):  # the generation configs: Marian's own, and the converted one (its decoding kept)
        source = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        expected = marian.generate(**source, num_beams=beams)
        got = ours.generate(**source, num_beams=beams)
        assert torch.equal(expected, got), beams
    assert ours.generation_config.length_penalty_type == "transformers"
    assert ours.generation_config.bad_words_ids == marian.generation_config.bad_words_ids


def test_marian_paper_decoding_flag_gives_the_papers_generation_config(tmp_path):
    source = opus_mt_folder(tmp_path / "opus-mt")
    output = convert_marian(source, tmp_path / "paper", paper_decoding=True)
    generation = json.loads((output / "generation_config.json").read_text())
    assert generation["num_beams"] == 4 and generation["length_penalty"] == 0.6
    assert generation["length_penalty_type"] == "gnmt" and generation["max_new_tokens_over_source"] == 50


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_marian_other_activations_and_a_zero_bias(tmp_path, activation):
    source = opus_mt_folder(tmp_path / "opus-mt", activation=activation, final_logits_bias=False, seed=3)
    output = convert_marian(source, tmp_path / "converted")
    ours = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    assert ours.config.activation_function == activation
    assert not ours.config.output_bias and ours.lm_head.bias is None  # a zero bias is the paper's output layer
    marian = MarianMTModel.from_pretrained(source).eval()
    batch = AutoTokenizer.from_pretrained(output)(SOURCES, text_target=TARGETS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (marian(**batch).logits - ours(**batch).logits).abs().max().item() < 1e-4


def test_a_converted_folder_loads_where_the_package_is_not_installed(marian_pair, tmp_path):
    source, output = marian_pair
    marian = MarianMTModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(SOURCES[:3], return_tensors="pt", padding=True)
    expected = marian.generate(**batch, num_beams=4).tolist()
    assert generate_without_this_package(tmp_path, output, SOURCES[:3], num_beams=4) == expected


def test_marian_fine_tunes_with_seq2seq_trainer(marian_pair, tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    _, output = marian_pair
    model = AutoModelForSeq2SeqLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    rows = Dataset.from_dict({"src": SOURCES, "tgt": TARGETS}).map(
        lambda r: tokenizer(r["src"], text_target=r["tgt"]), batched=True, remove_columns=["src", "tgt"]
    )
    before = model.lm_head.weight.detach().clone()
    trainer = Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(tmp_path / "out", max_steps=3, per_device_train_batch_size=4, report_to=[],
                                      learning_rate=1e-3, save_strategy="no", use_cpu=True),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    )  # fmt: skip
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.lm_head.weight)


# ---- fairseq -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[("2018", True), ("2018", False), ("0.10", True), ("0.10", False)],
                ids=lambda p: f"{p[0]}-{'shared' if p[1] else 'separate'}")  # fmt: skip
def fairseq_pair(request, tmp_path_factory):
    layout, shared = request.param
    root = tmp_path_factory.mktemp(f"fairseq-{layout}-{shared}")
    folder, reference = fairseq_folder(root / "release", layout=layout, shared=shared)
    return folder, reference, convert_fairseq(folder, root / "converted")


def test_fairseq_logits_and_greedy_tokens_equal_fsmt(fairseq_pair):
    folder, reference, output = fairseq_pair
    ours = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output, trust_remote_code=True)
    assert isinstance(tokenizer, FSMTTokenizer) and type(tokenizer).__name__ == "FairseqBPETokenizer"
    config = ours.config
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id, config.position_offset) == (
        1,
        2,
        2,
        2,
    )
    assert (config.sinusoid_layout, config.sinusoid_frequencies) == ("concatenated", "tensor2tensor")
    batch = tokenizer(SOURCES, return_tensors="pt", padding=True)
    generator = torch.Generator().manual_seed(0)
    decoder_input_ids = torch.randint(4, config.target_vocab_size, (len(SOURCES), 9), generator=generator)
    decoder_input_ids[:, 0] = config.decoder_start_token_id
    with torch.no_grad():
        # FSMT's forward is exact only without its cache (with it, a whole target sequence is read wrongly)
        expected = reference(**batch, decoder_input_ids=decoder_input_ids, use_cache=False).logits
        got = ours(**batch, decoder_input_ids=decoder_input_ids).logits
    assert (expected - got).abs().max().item() < 1e-4
    expected = reference.generate(**batch, num_beams=1, max_new_tokens=20, do_sample=False)
    got = ours.generate(**batch, num_beams=1, max_new_tokens=20, bad_words_ids=None)
    assert torch.equal(expected, got)


def test_fairseq_bpe_tokenizer_reproduces_moses_and_subword_nmt(fairseq_pair):
    import io

    from sacremoses import MosesPunctNormalizer, MosesTokenizer
    from subword_nmt.apply_bpe import BPE

    folder, _, output = fairseq_pair
    tokenizer = AutoTokenizer.from_pretrained(output, trust_remote_code=True)
    bpe = BPE(io.StringIO((folder / "bpecodes").read_text()))
    moses, normalizer = MosesTokenizer(lang="en"), MosesPunctNormalizer(lang="en")
    dictionary = ["<s>", "<pad>", "</s>", "<unk>"] + [
        line.rsplit(" ", 1)[0] for line in (folder / "dict.en.txt").read_text().splitlines()
    ]
    sentences = SOURCES + ["Wednesday, March 3, 2021 - twenty-one", 'no-one\'s "quoted" text & more']
    for sentence in sentences:
        tokenized = moses.tokenize(
            normalizer.normalize(sentence), aggressive_dash_splits=True, escape=True, return_str=True
        )
        expected = bpe.process_line(tokenized).split()
        ids = tokenizer(sentence).input_ids
        assert ids[-1] == 2  # fairseq's source ends with </s>
        got = [dictionary[i] for i in ids[:-1]]
        assert got == [t if t in dictionary else "<unk>" for t in expected], sentence
    # targets: Moses in the target language, BPE, the target dictionary; decoded back to the sentence
    target_dictionary = ["<s>", "<pad>", "</s>", "<unk>"] + [
        line.rsplit(" ", 1)[0] for line in (folder / "dict.de.txt").read_text().splitlines()
    ]
    moses = MosesTokenizer(lang="de")
    for sentence in TARGETS:
        ids = tokenizer(text_target=sentence).input_ids
        tokenized = moses.tokenize(
            normalizer.normalize(sentence), aggressive_dash_splits=True, escape=True, return_str=True
        )
        assert [target_dictionary[i] for i in ids[:-1]] == bpe.process_line(tokenized).split()
        assert tokenizer.decode(ids, skip_special_tokens=True) == sentence


def test_fairseq_pre_ln_checkpoints_put_the_final_norms_in_place(tmp_path):
    folder, _ = fairseq_folder(tmp_path / "release", layout="0.10", shared=True)
    checkpoint = torch.load(folder / "model.pt", weights_only=False)
    checkpoint["cfg"]["model"].update(encoder_normalize_before=True, decoder_normalize_before=True)
    for stack in ("encoder", "decoder"):
        checkpoint["model"][f"{stack}.layer_norm.weight"] = torch.randn(32)
        checkpoint["model"][f"{stack}.layer_norm.bias"] = torch.randn(32)
    torch.save(checkpoint, folder / "model.pt")
    ours = AutoModelForSeq2SeqLM.from_pretrained(convert_fairseq(folder, tmp_path / "converted"))
    assert ours.config.norm_first
    for stack in ("encoder", "decoder"):
        final = getattr(ours.model, stack).final_norm
        assert torch.equal(final.weight, checkpoint["model"][f"{stack}.layer_norm.weight"])
        assert torch.equal(final.bias, checkpoint["model"][f"{stack}.layer_norm.bias"])


# ---- the named deviations against the implementations they come from --------------------------------------------
def test_sinusoid_deviations_equal_marian_and_fairseq_tables():
    from transformers.models.fsmt.modeling_fsmt import SinusoidalPositionalEmbedding
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    positions = torch.arange(60)
    for d in (32, 30):
        marian = MarianSinusoidalPositionalEmbedding(60, d).create_weight()
        ours = sinusoidal_position_encoding(positions, d, layout="concatenated")
        assert torch.allclose(ours, marian, atol=1e-5)
        fairseq = SinusoidalPositionalEmbedding.get_embedding(60 + 2, d, padding_idx=1)[2:]  # first position 2
        ours = sinusoidal_position_encoding(positions + 2, d, layout="concatenated", frequencies="tensor2tensor")
        assert torch.allclose(ours, fairseq, atol=1e-5)
    # the paper's layout is neither
    paper = sinusoidal_position_encoding(positions, 32)
    assert not torch.allclose(paper, MarianSinusoidalPositionalEmbedding(60, 32).create_weight(), atol=1e-2)


def test_the_new_deviations_are_off_by_default_and_named():
    config = VanillaTransformerConfig()
    assert (config.activation_function, config.sinusoid_layout, config.sinusoid_frequencies) == (
        "relu", "interleaved", "paper")  # fmt: skip
    assert config.position_offset == 0 and not config.output_bias
    assert config.share_encoder_decoder_embeddings and config.decoder_vocab_size is None
    assert deviations_from_paper(config) == []
    changed = VanillaTransformerConfig(
        activation_function="swish", sinusoid_layout="concatenated", sinusoid_frequencies="tensor2tensor",
        position_offset=2, output_bias=True, share_encoder_decoder_embeddings=False, decoder_vocab_size=30000,
    )  # fmt: skip
    named = " ".join(deviations_from_paper(changed))
    for field in ("activation_function", "sinusoid_layout", "sinusoid_frequencies", "position_offset", "output_bias",
                  "share_encoder_decoder_embeddings"):  # fmt: skip
        assert field in named, field


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"share_encoder_decoder_embeddings": False},
        {"share_encoder_decoder_embeddings": False, "decoder_vocab_size": 100},
        {"tie_word_embeddings": False, "share_encoder_decoder_embeddings": True},
        {"tie_word_embeddings": False},
        {"output_bias": True, "decoder_vocab_size": 90, "share_encoder_decoder_embeddings": False},
    ],
)
def test_parameter_count_formula_covers_the_embedding_deviations(overrides):
    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, small_config

    config = small_config("tiny", **overrides)
    model = VanillaTransformerForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == paper_parameter_count(config)


def test_bad_values_of_the_new_fields_are_refused():
    from huggingface_hub.errors import StrictDataclassError

    for values, message in [
        ({"activation_function": "tanh"}, "activation_function='tanh' is invalid"),
        ({"sinusoid_layout": "halves"}, "sinusoid_layout='halves' is invalid"),
        ({"sinusoid_frequencies": "t2t"}, "sinusoid_frequencies='t2t' is invalid"),
        ({"position_offset": -1}, "position_offset=-1 is invalid"),
        ({"decoder_vocab_size": 100}, "decoder_vocab_size=100 is invalid: expected None when share_encoder"),
    ]:
        with pytest.raises(StrictDataclassError, match=message):
            VanillaTransformerConfig(**values)


# ---- CTranslate2 -------------------------------------------------------------------------------------------------
def _ctranslate2_tokens(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    by_id = {i: token for token, i in tokenizer.encoder.items()}
    return [[by_id[i] for i in row[m.bool()].tolist()] for row, m in zip(ids, mask, strict=True)]


@pytest.mark.parametrize("origin", ["marian", "fairseq"])
def test_ctranslate2_fp32_tokens_equal_generate(origin, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    if origin == "marian":
        output = convert_marian(opus_mt_folder(tmp_path / "opus", separate_vocabularies=True), tmp_path / "ours")
    else:
        folder, _ = fairseq_folder(tmp_path / "release", layout="0.10", shared=False)
        output = convert_fairseq(folder, tmp_path / "ours")
    exported = export_ctranslate2(output, tmp_path / "ct2")
    model = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output, trust_remote_code=True)
    translator = ctranslate2.Translator(str(exported), device="cpu", compute_type="float32")
    batch = tokenizer(SOURCES, return_tensors="pt", padding=True)
    target_tokens = [tokenizer.decoder[i] for i in range(model.config.target_vocab_size)]
    for beams in (1, 4):
        # CTranslate2's beam search: scores / length^1, stopping once `beams` hypotheses are finished
        generated = model.generate(**batch, num_beams=beams, max_new_tokens=25, length_penalty=1.0,
                                   early_stopping=True, bad_words_ids=None, forced_eos_token_id=None)  # fmt: skip
        results = translator.translate_batch(
            _ctranslate2_tokens(tokenizer, batch.input_ids, batch.attention_mask), beam_size=beams,
            max_decoding_length=25, length_penalty=1.0,
        )  # fmt: skip
        for row, result in zip(generated.tolist(), results, strict=True):
            ids = [i for i in row[1:] if i != model.config.pad_token_id]
            ids = ids[:-1] if ids and ids[-1] == model.config.eos_token_id else ids
            assert [target_tokens[i] for i in ids] == result.hypotheses[0], beams


def test_ctranslate2_quantizations_write_smaller_models(tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    output = convert_marian(opus_mt_folder(tmp_path / "opus", d_model=64), tmp_path / "ours")
    full = export_ctranslate2(output, tmp_path / "fp32")
    int8 = export_ctranslate2(output, tmp_path / "int8", quantization="int8")
    assert (int8 / "model.bin").stat().st_size < 0.6 * (full / "model.bin").stat().st_size
    tokenizer = AutoTokenizer.from_pretrained(output)
    batch = tokenizer(SOURCES[:2], return_tensors="pt", padding=True)
    translator = ctranslate2.Translator(str(int8), device="cpu", compute_type="int8")
    results = translator.translate_batch(
        _ctranslate2_tokens(tokenizer, batch.input_ids, batch.attention_mask), max_decoding_length=5
    )
    assert all(len(r.hypotheses[0]) >= 1 for r in results)


def test_ctranslate2_export_of_a_marian_folder_names_the_conversion_first(tmp_path, capsys):
    """A plain MarianMTModel folder given to `convert ctranslate2`: one line naming the model type and the command that
    converts it, exit status 2, nothing written (it was a 43-line traceback about decoder_vocab_size)."""
    pytest.importorskip("ctranslate2")
    from hf_vanilla_transformer.convert import main

    source = opus_mt_folder(tmp_path / "opus-mt", d_model=64)
    capsys.readouterr()  # the fixture's own progress bars
    with pytest.raises(ConversionError, match=r"is a 'marian' model, not one of this project"):
        export_ctranslate2(source, tmp_path / "ct2")
    with pytest.raises(SystemExit) as exit_:
        main(["ctranslate2", str(source), str(tmp_path / "ct2")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert f"Convert it first: vanilla-transformer-convert marian {source} OUTPUT, then export OUTPUT." in error
    assert not (tmp_path / "ct2").exists() and no_leftovers(tmp_path) == []


def test_exporting_a_loaded_model_leaves_its_weights_alone(tmp_path):
    pytest.importorskip("ctranslate2")
    from conftest import tiny_model
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    vocabulary = {f"t{i}": i for i in range(128)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="t3")))
    for quantization in ("int8", "int16", "float16"):  # CTranslate2 quantizes its arrays in place
        export_ctranslate2(model, tmp_path / quantization, tokenizer=tokenizer, quantization=quantization)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_ctranslate2_refuses_what_it_cannot_express(tmp_path):
    pytest.importorskip("ctranslate2")
    from conftest import tiny_model
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_model(d_k=4)  # Table 3 row (B): h * d_k != d_model
    vocabulary = {f"t{i}": i for i in range(128)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="t3")))
    with pytest.raises(ConversionError, match=r"d_k=4 with h=4: CTranslate2's attention needs h \* d_k == d_model"):
        export_ctranslate2(model, tmp_path / "ct2", tokenizer=tokenizer)
    assert not (tmp_path / "ct2").exists() and no_leftovers(tmp_path) == []
    with pytest.raises(ConversionError, match="quantization='int4'"):
        export_ctranslate2(tiny_model(), tmp_path / "ct2", tokenizer=tokenizer, quantization="int4")


# ---- bad input ---------------------------------------------------------------------------------------------------
def _edit_fairseq(folder: Path, **options) -> None:
    checkpoint = torch.load(folder / "model.pt", weights_only=False)
    checkpoint["cfg"]["model"].update(options)
    torch.save(checkpoint, folder / "model.pt")


@pytest.fixture
def fairseq_release(tmp_path):
    folder, _ = fairseq_folder(tmp_path / "release", layout="0.10", shared=True)
    return folder


@pytest.mark.parametrize(
    "options, message",
    [
        ({"layernorm_embedding": True}, "--layernorm-embedding=True: a layer norm on the embeddings"),
        ({"encoder_learned_pos": True}, "--encoder-learned-pos=True: learned positions"),
        ({"adaptive_softmax_cutoff": "1000,2000"}, "--adaptive-softmax-cutoff='1000,2000': an adaptive softmax"),
        ({"_name": "transformer_align", "alignment_heads": 1, "alignment_layer": 4}, "alignment heads"),
        (
            {"decoder_normalize_before": True},
            "--encoder-normalize-before=False differs from --decoder-normalize-before=True",
        ),
        ({"activation_fn": "tanh"}, "--activation-fn='tanh'"),
        ({"decoder_output_dim": 16}, "--decoder-output-dim=16 differs"),
    ],
)
def test_fairseq_options_that_cannot_be_converted_are_refused_by_name(fairseq_release, tmp_path, options, message):
    _edit_fairseq(fairseq_release, **options)
    with pytest.raises(ConversionError, match=message):
        convert_fairseq(fairseq_release, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_fairseq_ensembles_missing_dictionaries_and_foreign_dictionaries_are_refused(fairseq_release, tmp_path):
    (fairseq_release / "model.pt").rename(fairseq_release / "model1.pt")
    (fairseq_release / "model2.pt").write_bytes((fairseq_release / "model1.pt").read_bytes())
    with pytest.raises(ConversionError, match="an ensemble cannot be converted"):
        convert_fairseq(fairseq_release, tmp_path / "out")
    (fairseq_release / "model2.pt").unlink()
    (fairseq_release / "model1.pt").rename(fairseq_release / "model.pt")
    dictionary = (fairseq_release / "dict.de.txt").read_text()
    (fairseq_release / "dict.de.txt").unlink()
    with pytest.raises(ConversionError, match=r"dict\.de\.txt is missing"):
        convert_fairseq(fairseq_release, tmp_path / "out")
    (fairseq_release / "dict.de.txt").write_text("\n".join(dictionary.splitlines()[:-20]) + "\n")
    with pytest.raises(ConversionError, match="does not belong to this checkpoint"):
        convert_fairseq(fairseq_release, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


class Planted:
    """An object whose unpickling would run code (writes a file)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("ran",))


def test_a_checkpoint_that_needs_arbitrary_unpickling_is_refused(fairseq_release, tmp_path):
    marker = tmp_path / "marker.txt"
    checkpoint = torch.load(fairseq_release / "model.pt", weights_only=False)
    checkpoint["extra_state"] = {"planted": Planted.__new__(Planted)}
    checkpoint["extra_state"]["planted"].path = str(marker)
    torch.save(checkpoint, fairseq_release / "model.pt")
    marker.unlink(missing_ok=True)
    with pytest.raises(ConversionError, match="needs arbitrary unpickling .* --trust-checkpoint"):
        convert_fairseq(fairseq_release, tmp_path / "out")
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "out").exists()
    # the explicit flag loads it (and runs the planted code, as the flag says)
    convert_fairseq(fairseq_release, tmp_path / "out", trust_checkpoint=True)
    assert marker.exists() and (tmp_path / "out" / "model.safetensors").exists()


def test_an_existing_output_is_kept_unless_overwrite(fairseq_release, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert_fairseq(fairseq_release, output)
    assert (output / "mine.txt").read_text() == "keep"
    _edit_fairseq(fairseq_release, layernorm_embedding=True)
    with pytest.raises(ConversionError):
        convert_fairseq(fairseq_release, output, overwrite=True)  # a failed overwrite keeps the old folder
    assert (output / "mine.txt").read_text() == "keep"
    _edit_fairseq(fairseq_release, layernorm_embedding=False)
    convert_fairseq(fairseq_release, output, overwrite=True)
    assert not (output / "mine.txt").exists() and (output / "config.json").exists()
    assert no_leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="would replace the source"):
        convert_fairseq(fairseq_release, fairseq_release, overwrite=True)
    assert (fairseq_release / "model.pt").exists()


def test_marian_options_that_cannot_be_converted_are_refused(tmp_path):
    from transformers import MarianConfig

    from hf_vanilla_transformer.convert import marian_config_to_ours

    with pytest.raises(ConversionError, match="encoder_attention_heads=4 differs from decoder_attention_heads=8"):
        marian_config_to_ours(MarianConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=8))
    with pytest.raises(ConversionError, match="activation_function='tanh'"):
        marian_config_to_ours(MarianConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
                                           activation_function="tanh"))  # fmt: skip
    source = opus_mt_folder(tmp_path / "opus")
    for name in ("source.spm", "target.spm"):
        (source / name).unlink()
    with pytest.raises(ConversionError, match="has no tokenizer that loads"):
        convert_marian(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_fairseq_config_reader_refuses_unknown_architectures():
    with pytest.raises(ConversionError, match="arch='lstm'"):
        fairseq_arguments_to_config(vars(argparse.Namespace(arch="lstm")), 16, 16)


def test_the_command_has_help_and_reports_errors_without_a_traceback(fairseq_release, tmp_path):
    result = subprocess.run([sys.executable, "-m", "hf_vanilla_transformer.convert", "--help"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0 and all(c in result.stdout for c in ("marian", "fairseq", "ctranslate2"))
    (tmp_path / "out").mkdir()
    command = [
        sys.executable,
        "-m",
        "hf_vanilla_transformer.convert",
        "fairseq",
        str(fairseq_release),
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "exists; pass --overwrite" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([*command, "--overwrite"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").exists()
