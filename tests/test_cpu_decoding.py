"""The opt-in CPU layout (hf_vanilla_transformer.cpu_decoding) against the plain nn.Linear model: same logits, same
tokens, same parameters and ties, weights changed in place picked up, training untouched, and undone cleanly."""

import pytest
import torch
from conftest import random_batch, tiny_model
from torch import nn

from hf_vanilla_transformer.cpu_decoding import (
    PackedLinear,
    onednn_packed_linear_available,
    pack_for_cpu_decoding,
    unpack_cpu_decoding,
)

pytestmark = pytest.mark.skipif(not onednn_packed_linear_available(), reason="torch without oneDNN's packed ops")


def packed_pair(seed=0):
    plain, packed = tiny_model(seed=seed), tiny_model(seed=seed)
    names = pack_for_cpu_decoding(packed, min_elements=0)  # the tiny model's matrices are all below the default
    return plain, packed, names


def test_only_the_decoder_and_the_output_projection_are_swapped_and_share_their_parameters():
    model = tiny_model()
    parameters = dict(model.named_parameters())
    names = pack_for_cpu_decoding(model, min_elements=0)
    config = model.config
    assert len(names) == config.decoder_layers * (4 + 4 + 2) + 1 and "lm_head" in names
    assert all(".decoder." in f".{n}" or n == "lm_head" for n in names)
    assert all(type(model.get_submodule(n)) is PackedLinear for n in names)
    assert type(model.model.encoder.layers[0].self_attn.q_proj) is nn.Linear
    assert dict(model.named_parameters()) == parameters  # the same Parameter objects, names unchanged
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the tie holds
    # The default threshold skips small matrices.
    assert pack_for_cpu_decoding(tiny_model()) == []


@pytest.mark.parametrize("num_beams", [1, 4])
def test_packed_generate_equals_the_plain_model(num_beams):
    plain, packed, _ = packed_pair(seed=3)
    ids, mask, _ = random_batch(batch=3)
    kwargs = dict(
        attention_mask=mask, num_beams=num_beams, max_new_tokens=10, return_dict_in_generate=True, output_scores=True
    )
    a, b = plain.generate(ids, **kwargs), packed.generate(ids, **kwargs)
    torch.testing.assert_close(b.sequences, a.sequences)
    torch.testing.assert_close(torch.stack(b.scores), torch.stack(a.scores), atol=1e-5, rtol=1e-5)


def test_a_weight_changed_in_place_is_used_at_the_next_call():
    plain, packed, _ = packed_pair(seed=4)
    ids, mask, dec = random_batch()
    with torch.no_grad():
        before = packed(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        for model in (plain, packed):
            model.model.decoder.layers[1].ffn.fc2.weight.mul_(-3.0)
            model.lm_head.weight.add_(0.5)
        after = packed(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        reference = plain(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)


def test_training_through_a_packed_model_is_the_plain_models():
    plain, packed, _ = packed_pair(seed=5)
    ids, mask, labels = random_batch()
    losses = []
    for model in (plain, packed):
        model.train()
        torch.manual_seed(0)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        losses.append((loss.detach(), model.model.decoder.layers[0].self_attn.q_proj.weight.grad))
    torch.testing.assert_close(losses[1][0], losses[0][0])
    torch.testing.assert_close(losses[1][1], losses[0][1])


def test_saving_a_packed_model_writes_what_the_plain_one_writes(tmp_path):
    from safetensors.torch import load_file

    plain, packed, _ = packed_pair(seed=6)
    plain.save_pretrained(tmp_path / "plain")
    packed.save_pretrained(tmp_path / "packed")
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "packed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unpack_restores_nn_linear_with_the_same_parameters():
    model = tiny_model()
    parameters = dict(model.named_parameters())
    names = pack_for_cpu_decoding(model, min_elements=0)
    assert sorted(unpack_cpu_decoding(model)) == sorted(names)
    assert not [m for m in model.modules() if type(m) is PackedLinear]
    assert dict(model.named_parameters()) == parameters


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match=r"min_elements=-1 is invalid: expected an integer >= 0"):
        pack_for_cpu_decoding(tiny_model(), min_elements=-1)


def test_gradients_pass_through_frozen_packed_layers():
    """Fine-tuning the encoder under a frozen, packed decoder: gradients flow as without packing."""
    plain, packed, _ = packed_pair(seed=7)
    ids, mask, labels = random_batch()
    grads = []
    for model in (plain, packed):
        model.requires_grad_(False)
        model.model.encoder.requires_grad_(True)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append(model.model.encoder.layers[0].ffn.fc1.weight.grad)
    assert grads[1] is not None
    torch.testing.assert_close(grads[1], grads[0])


def test_a_used_packed_model_copies_pickles_and_follows_dtype_round_trips():
    import copy
    import io

    plain, packed, _ = packed_pair(seed=8)
    ids, mask, dec = random_batch()
    with torch.no_grad():
        packed(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)  # the packed copies now exist
        copied = copy.deepcopy(packed)
        torch.save(packed, io.BytesIO())
        for model in (plain, packed):
            model.half().float()  # new weight tensors (rounded): the packed copies must follow
        reference = plain(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(packed(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits, reference)
        assert copied(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.shape == reference.shape


def test_packing_again_picks_up_writes_through_data():
    plain, packed, _ = packed_pair(seed=9)
    ids, mask, dec = random_batch()
    with torch.no_grad():
        packed(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        for model in (plain, packed):
            model.lm_head.weight.data.mul_(2.0)  # no version bump: documented, refreshed by packing again
        pack_for_cpu_decoding(packed, min_elements=0)
        torch.testing.assert_close(
            packed(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            plain(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
        )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"min_elements=True is invalid"):
        pack_for_cpu_decoding(tiny_model(), min_elements=True)
    with pytest.raises(TypeError, match=r"expects a model \(nn.Module\), got NoneType"):
        pack_for_cpu_decoding(None)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_at_the_paper_width_the_default_threshold_packs_and_generate_is_unchanged(num_beams):
    """At d_model 512 (the base model's widths, one layer each) the default threshold (2^18 weights) packs the
    decoder's projections and the output layer, so generate() runs the packed path, and it decodes what the plain
    model decodes."""
    from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

    config = VanillaTransformerConfig.from_preset("base", vocab_size=1000, encoder_layers=1, decoder_layers=1)
    torch.manual_seed(0)
    plain = VanillaTransformerForConditionalGeneration(config).eval()
    packed = VanillaTransformerForConditionalGeneration(config).eval()
    packed.load_state_dict(plain.state_dict())
    names = pack_for_cpu_decoding(packed)
    assert (
        "lm_head" in names
        and "model.decoder.layers.0.self_attn.q_proj" in names
        and "model.decoder.layers.0.ffn.fc1" in names
    )
    ids, mask, _ = random_batch(vocab_size=1000, batch=3, source=12)
    kwargs = dict(attention_mask=mask, num_beams=num_beams, max_new_tokens=12, return_dict_in_generate=True,
                  output_scores=True)  # fmt: skip
    a, b = plain.generate(ids, **kwargs), packed.generate(ids, **kwargs)
    torch.testing.assert_close(b.sequences, a.sequences)
    torch.testing.assert_close(torch.stack(b.scores), torch.stack(a.scores), atol=1e-4, rtol=1e-4)
