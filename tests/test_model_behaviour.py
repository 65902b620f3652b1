"""Hugging Face behaviour against an uncached, unbatched or eager run of the same model."""

import copy

import pytest
import torch
from conftest import random_batch, tiny_config, tiny_model
from transformers import AutoModel, AutoModelForSeq2SeqLM, EncoderDecoderCache

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, VanillaTransformerModel


def test_kv_cached_incremental_decoding_equals_a_full_forward():
    model = tiny_model(encoder_layers=2, decoder_layers=3)
    ids, mask, labels = random_batch()
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        cache, steps = None, []
        for t in range(decoder_ids.shape[1]):
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=mask,
                decoder_input_ids=decoder_ids[:, t : t + 1],
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            steps.append(out.logits)
    assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == decoder_ids.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_a_padded_batch_equals_each_sentence_alone():
    model = tiny_model()
    ids, mask, labels = random_batch(batch=3, source=9)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[2, 4:] = 0
    with torch.no_grad():
        batched = model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask
        )
        for i in range(3):
            n, m = int(mask[i].sum()), int(decoder_mask[i].sum())
            alone = model(input_ids=ids[i : i + 1, :n], decoder_input_ids=decoder_ids[i : i + 1, :m])
            torch.testing.assert_close(batched.logits[i, :m], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                batched.encoder_last_hidden_state[i, :n], alone.encoder_last_hidden_state[0], atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("overrides", [{}, {"d_k": 4, "d_v": 12}, {"norm_first": True}])
def test_eager_equals_sdpa(overrides):
    config = tiny_config(**overrides)
    ids, mask, labels = random_batch()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = VanillaTransformerForConditionalGeneration._from_config(
            copy.deepcopy(config), attn_implementation=implementation
        )
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = model.eval()(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(outputs["eager"].logits, outputs["sdpa"].logits, atol=1e-5, rtol=1e-5)


def test_set_attn_implementation_switches_backend():
    model = tiny_model()
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"


def test_output_attentions_and_hidden_states():
    config = tiny_config()
    model = VanillaTransformerForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    ids, mask, labels = random_batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True, output_hidden_states=True)
    B, S, T, h = 3, 9, 7, 4
    assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (B, h, S, S)
    assert len(out.decoder_attentions) == 2 and out.decoder_attentions[0].shape == (B, h, T, T)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (B, h, T, S)
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 3
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    # Causal: no weight on future target positions; padding: no weight on padded source positions.
    assert out.decoder_attentions[0][0].triu(1).abs().max() == 0
    assert out.cross_attentions[0][2][..., int(mask[2].sum()) :].abs().max() == 0
    torch.testing.assert_close(out.encoder_attentions[0].sum(-1), torch.ones(B, h, S))


def test_return_dict_false_returns_a_tuple():
    model = tiny_model()
    ids, mask, labels = random_batch()
    as_tuple = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    as_dict = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_activation_checkpointing_gives_the_same_gradients():
    ids, mask, labels = random_batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_resize_token_embeddings_keeps_the_three_way_tie():
    model = tiny_model()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(140)
    embedding = model.get_input_embeddings().weight
    assert embedding.shape == (140, 32) and model.config.vocab_size == 140
    assert model.lm_head.weight is embedding and model.model.decoder.embeddings.embed_tokens.weight is embedding
    torch.testing.assert_close(embedding[:128], old)
    out = model(input_ids=torch.tensor([[139, 5]]), labels=torch.tensor([[139, 6]]))
    assert out.logits.shape == (1, 2, 140)


def test_loss_does_not_shift_twice():
    """The loss is the cross-entropy of logits[t] against labels[t]: the decoder input is the shifted copy."""
    model = tiny_model(label_smoothing=0.0)
    ids, mask, labels = random_batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    manual = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(out.loss, manual)
    decoder_ids = model(
        input_ids=ids, attention_mask=mask, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)
    )
    torch.testing.assert_close(decoder_ids.logits, out.logits)


def test_loss_label_smoothing_and_num_items_in_batch():
    model = tiny_model(label_smoothing=0.1)
    ids, mask, labels = random_batch()
    labels[0, 5:] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    n = (labels != -100).sum()
    total = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1, reduction="sum"
    )
    torch.testing.assert_close(out.loss, total / n)
    # With num_items_in_batch (Trainer + gradient accumulation): sum / the count over the whole accumulated batch.
    accumulated = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(50))
    torch.testing.assert_close(accumulated.loss, total / 50)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_the_fused_loss_equals_torch_cross_entropy(dtype, epsilon, monkeypatch):
    """LabelSmoothedCrossEntropy (no log-probabilities kept, blocks of rows) against F.cross_entropy: value and
    gradient, with ignored rows, over several blocks."""
    from hf_vanilla_transformer import loss_vanilla_transformer
    from hf_vanilla_transformer.loss_vanilla_transformer import LabelSmoothedCrossEntropy

    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(300, 1000, generator=generator)).to(dtype).requires_grad_()
    labels = torch.randint(0, 1000, (300,), generator=generator)
    labels[::7] = -100
    monkeypatch.setattr(loss_vanilla_transformer, "BLOCK_ELEMENTS", 64_000)  # blocks of 64 rows, the last of 44
    ours = LabelSmoothedCrossEntropy.apply(logits, labels, epsilon)
    (ours_grad,) = torch.autograd.grad(0.5 * ours, logits)
    reference = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=epsilon, reduction="sum")
    (reference_grad,) = torch.autograd.grad(0.5 * reference, logits)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    assert ours_grad.dtype == dtype
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-6 if dtype == torch.float32 else 1e-4)
    assert (ours_grad[::7] == 0).all()


def test_labels_outside_the_vocabulary_are_named():
    model = tiny_model()
    ids, mask, labels = random_batch()
    for bad in (model.config.vocab_size, -5):
        labels[0, -1] = bad  # the last label is not fed back as a decoder input
        with pytest.raises(ValueError, match=f"labels contain {bad}, which is neither a token id"):
            model(input_ids=ids, attention_mask=mask, labels=labels)


def test_base_model_and_auto_classes():
    config = tiny_config()
    base = AutoModel.from_config(copy.deepcopy(config))
    assert type(base) is VanillaTransformerModel
    lm = AutoModelForSeq2SeqLM.from_config(copy.deepcopy(config))
    assert type(lm) is VanillaTransformerForConditionalGeneration
    ids, mask, labels = random_batch()
    out = base(input_ids=ids, attention_mask=mask, decoder_input_ids=labels)
    assert out.last_hidden_state.shape == (3, 7, 32)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        base(input_ids=ids, attention_mask=mask)


def test_inputs_embeds_equal_input_ids():
    model = tiny_model()
    ids, mask, labels = random_batch()
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        b = model(inputs_embeds=embed(ids), attention_mask=mask, decoder_inputs_embeds=embed(decoder_ids))
    torch.testing.assert_close(a.logits, b.logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_ids": torch.tensor([[5, 128]])},
            r"input_ids contains token id 128, outside the vocabulary \[0, vocab_size=128\)",
        ),
        ({"input_ids": torch.tensor([[-3, 5]])}, r"input_ids contains token id -3"),
        (
            {"input_ids": torch.tensor([[5, 6]]), "decoder_input_ids": torch.tensor([[1, 999]])},
            r"decoder_input_ids contains token id 999",
        ),
        (
            {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 2)},
            r"attention_mask has shape \(1, 2\) but input_ids has shape \(1, 3\)",
        ),
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, r"input_ids is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    kwargs.setdefault("decoder_input_ids", torch.tensor([[1]]))
    with pytest.raises(ValueError, match=message):
        tiny_model()(**kwargs)


@pytest.mark.slow
def test_flex_attention_equals_eager():
    """Flex attention (compiled for the CPU here). Its CPU kernel fails in beam search inside torch's inductor, for
    transformers' MarianMTModel as well, so the check is the forward pass and greedy decoding."""
    ids, mask, labels = random_batch()
    results = {}
    for implementation in ("eager", "flex_attention"):
        torch.manual_seed(0)
        model = VanillaTransformerForConditionalGeneration._from_config(
            tiny_config(), attn_implementation=implementation
        )
        with torch.no_grad():
            logits = model.eval()(input_ids=ids, attention_mask=mask, labels=labels).logits
        results[implementation] = (logits, model.generate(ids, attention_mask=mask, num_beams=1, max_new_tokens=6))
    torch.testing.assert_close(results["eager"][0], results["flex_attention"][0], atol=1e-5, rtol=1e-5)
    assert torch.equal(results["eager"][1], results["flex_attention"][1])


def test_the_loss_is_the_librarys_loss_function_hook_and_can_be_replaced():
    from hf_vanilla_transformer import label_smoothed_cross_entropy

    model = tiny_model(label_smoothing=0.1)
    ids, mask, labels = random_batch()
    assert model.loss_function is label_smoothed_cross_entropy
    seen = {}

    def plain_cross_entropy(logits, labels, vocab_size=None, num_items_in_batch=None, **kwargs):
        seen.update(kwargs, vocab_size=vocab_size)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    model.loss_function = plain_cross_entropy
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    reference = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, reference)  # no label smoothing: the replacement ran, not §5.4's loss
    assert seen == {"label_smoothing": 0.1, "vocab_size": 128}  # the hook is told the config's smoothing
    assert tiny_model().loss_function is label_smoothed_cross_entropy  # per model, not per class
