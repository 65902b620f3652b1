"""§3 against independent truth: the paper's formulas written out, and torch.nn.Transformer with copied weights."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_config, tiny_model
from torch import nn

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    sinusoidal_position_encoding,
)


def test_positional_encoding_is_interleaved_as_in_section_3_5():
    d_model = 10
    encoding = sinusoidal_position_encoding(torch.arange(50), d_model, torch.float64)
    for pos in (0, 1, 7, 49):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert encoding[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert encoding[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    odd = sinusoidal_position_encoding(torch.arange(3), 7)
    assert odd.shape == (3, 7) and odd[2, 6].item() == pytest.approx(math.sin(2 / 10000 ** (6 / 7)), abs=1e-6)


def test_a_5000_token_input_works_with_sinusoids():
    model = tiny_model()
    ids = torch.randint(4, 128, (1, 5000))
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=torch.tensor([[1, 5, 6]]))
    assert out.logits.shape == (1, 3, 128) and torch.isfinite(out.logits).all()


def test_embeddings_are_one_matrix_scaled_by_sqrt_d_model():
    model = tiny_model()
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is embedding and model.model.decoder.embeddings.embed_tokens.weight is embedding
    assert model.lm_head.bias is None
    assert model.model.encoder.embeddings.scale == model.model.decoder.embeddings.scale == math.sqrt(32)
    assert embedding.std().item() == pytest.approx(32**-0.5, rel=0.1)


def test_post_ln_stacks_have_no_final_norm():
    model = tiny_model()
    assert model.model.encoder.final_norm is None and model.model.decoder.final_norm is None
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layer_norms) == 2 * 2 + 2 * 3  # 2 per encoder layer, 3 per decoder layer, nothing else


def test_dropout_is_where_section_5_4_puts_it():
    """P_drop on every sub-layer output and on the two embedding sums; nowhere else by default."""
    model = tiny_model(dropout=0.3).train()
    ids, mask, labels = random_batch()
    calls = []
    real_dropout = F.dropout

    def counting_dropout(x, p=0.5, training=True, inplace=False):
        if p > 0 and training:
            calls.append(p)
        return real_dropout(x, p, training, inplace)

    with mock.patch.object(F, "dropout", counting_dropout):
        model(input_ids=ids, attention_mask=mask, labels=labels)
    config = model.config
    assert calls == [0.3] * (2 + 2 * config.encoder_layers + 3 * config.decoder_layers)


def test_eval_mode_is_deterministic_and_train_mode_is_not():
    model = tiny_model(dropout=0.3)
    ids, mask, labels = random_batch()
    with torch.no_grad():
        a, b = (
            model(input_ids=ids, attention_mask=mask, labels=labels),
            model(input_ids=ids, attention_mask=mask, labels=labels),
        )
        assert torch.equal(a.logits, b.logits)
        model.train()
        c = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert not torch.allclose(a.logits, c.logits)


def reference_transformer(model: VanillaTransformerForConditionalGeneration) -> nn.Transformer:
    """torch.nn.Transformer (ReLU, batch_first) with our weights copied in: post-LN without final stack norms (the
    paper), or pre-LN with them (the `norm_first` deviation)."""
    config = model.config
    kwargs = dict(
        d_model=config.d_model,
        nhead=config.h,
        dim_feedforward=config.d_ff,
        dropout=0.0,
        activation="relu",
        layer_norm_eps=config.layer_norm_eps,
        batch_first=True,
        norm_first=config.norm_first,
    )
    final_norm = (lambda: nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)) if config.norm_first else None
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(**kwargs),
        config.encoder_layers,
        norm=final_norm and final_norm(),
        enable_nested_tensor=False,
    )
    decoder = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(**kwargs), config.decoder_layers, norm=final_norm and final_norm()
    )
    reference = nn.Transformer(**kwargs, custom_encoder=encoder, custom_decoder=decoder).eval()

    def copy_attention(ours, theirs):
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.o_proj.weight)
        theirs.out_proj.bias.copy_(ours.o_proj.bias)

    def copy_linear_or_norm(ours, theirs):
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)

    with torch.no_grad():
        for ours, theirs in zip(model.model.encoder.layers, reference.encoder.layers, strict=True):
            copy_attention(ours.self_attn, theirs.self_attn)
            for a, b in [
                (ours.ffn.fc1, theirs.linear1),
                (ours.ffn.fc2, theirs.linear2),
                (ours.self_attn_residual.layer_norm, theirs.norm1),
                (ours.ffn_residual.layer_norm, theirs.norm2),
            ]:
                copy_linear_or_norm(a, b)
        for ours, theirs in zip(model.model.decoder.layers, reference.decoder.layers, strict=True):
            copy_attention(ours.self_attn, theirs.self_attn)
            copy_attention(ours.cross_attn, theirs.multihead_attn)
            for a, b in [
                (ours.ffn.fc1, theirs.linear1),
                (ours.ffn.fc2, theirs.linear2),
                (ours.self_attn_residual.layer_norm, theirs.norm1),
                (ours.cross_attn_residual.layer_norm, theirs.norm2),
                (ours.ffn_residual.layer_norm, theirs.norm3),
            ]:
                copy_linear_or_norm(a, b)
        if config.norm_first:
            copy_linear_or_norm(model.model.encoder.final_norm, reference.encoder.norm)
            copy_linear_or_norm(model.model.decoder.final_norm, reference.decoder.norm)
    return reference


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_numerical_parity_with_torch_nn_transformer(attn_implementation, norm_first):
    config = tiny_config(
        d_model=64, h=4, d_ff=128, encoder_layers=3, decoder_layers=2, layer_norm_eps=1e-5, norm_first=norm_first
    )
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration._from_config(
        config, attn_implementation=attn_implementation
    ).eval()
    reference = reference_transformer(model)
    ids, mask, labels = random_batch(batch=4, source=11, target=8)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)

    embedding = model.get_input_embeddings().weight

    def embed(x):  # §3.4 and §3.5, from the paper's formula
        return embedding[x] * math.sqrt(config.d_model) + sinusoidal_position_encoding(
            torch.arange(x.shape[1]), config.d_model
        )

    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        memory = reference.encoder(embed(ids), src_key_padding_mask=mask == 0)
        causal = nn.Transformer.generate_square_subsequent_mask(decoder_ids.shape[1])
        decoded = reference.decoder(embed(decoder_ids), memory, tgt_mask=causal, memory_key_padding_mask=mask == 0)
        logits = decoded @ embedding.T

    real = mask.bool()
    torch.testing.assert_close(ours.encoder_last_hidden_state[real], memory[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.logits, logits, atol=1e-5, rtol=1e-5)


def test_row_b_d_k_differs_from_d_v():
    model = tiny_model(d_k=4, d_v=12)
    attention = model.model.encoder.layers[0].self_attn
    assert attention.q_proj.weight.shape == (4 * 4, 32) and attention.v_proj.weight.shape == (4 * 12, 32)
    assert attention.o_proj.weight.shape == (32, 4 * 12) and attention.scaling == 4**-0.5
    ids, mask, labels = random_batch()
    assert model(input_ids=ids, attention_mask=mask, labels=labels).logits.shape == (3, 7, 128)


def test_learned_positions_row_e():
    model = tiny_model(position_encoding="learned", max_position_embeddings=16)
    ids, mask, labels = random_batch()
    assert model(input_ids=ids, attention_mask=mask, labels=labels).loss.isfinite()
    with pytest.raises(ValueError, match=r"Position 19 is past max_position_embeddings=16"):
        model(input_ids=torch.randint(4, 128, (1, 20)), decoder_input_ids=torch.tensor([[1]]))
    # The learned table is what positions the tokens: changing row 3 changes the embedding layer's output at
    # position 3 only, and through self-attention the encoder's output.
    embeddings = model.model.encoder.embeddings
    source = ids[:1, :5]
    with torch.no_grad():
        embedded, encoded = embeddings(source), model.model.encoder(input_ids=source).last_hidden_state
        embeddings.embed_positions.weight[3] += 1.0
        changed = (embeddings(source) - embedded).abs().amax(-1)[0]
        assert changed[3] > 0 and torch.count_nonzero(changed) == 1
        assert not torch.allclose(model.model.encoder(input_ids=source).last_hidden_state, encoded)


def test_pre_ln_deviation_changes_the_output_and_adds_final_norms():
    post, pre = tiny_model(), tiny_model(norm_first=True)
    assert isinstance(pre.model.encoder.final_norm, nn.LayerNorm)
    ids, mask, labels = random_batch()
    with torch.no_grad():
        assert not torch.allclose(
            post(input_ids=ids, attention_mask=mask, labels=labels).logits,
            pre(input_ids=ids, attention_mask=mask, labels=labels).logits,
        )


def test_untied_embeddings_deviation():
    model = tiny_model(tie_word_embeddings=False)
    e = model.model.encoder.embeddings.embed_tokens.weight
    d, o = model.model.decoder.embeddings.embed_tokens.weight, model.lm_head.weight
    assert e is not d and e is not o and d is not o


def test_full_size_base_and_big_build_and_run():
    for name in ("base", "big"):
        torch.manual_seed(0)
        model = VanillaTransformerForConditionalGeneration(
            VanillaTransformerConfig.from_preset(name, vocab_size=1000)
        ).eval()
        with torch.no_grad():
            out = model(input_ids=torch.randint(4, 1000, (2, 6)), labels=torch.randint(4, 1000, (2, 5)))
        assert out.logits.shape == (2, 5, 1000) and out.loss.isfinite()


class HalfDropout(nn.Module):
    """A deterministic stand-in for dropout: x / 2 wherever the model drops out, so the place where dropout acts
    (before the residual sum, after it, after the LayerNorm) shows in the output."""

    def forward(self, x):
        return x * 0.5


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_dropout_acts_where_torch_nn_transformer_puts_it_in_train_mode(norm_first):
    """§5.4: dropout on each sub-layer's output before the residual sum, and on the embedding sums. In train mode
    with the stand-in replacing every dropout of both models (nn.Transformer's FFN-internal and attention-weight
    dropouts, which the paper does not have, are off), the outputs agree."""
    config = tiny_config(d_model=64, h=4, d_ff=128, encoder_layers=2, decoder_layers=2, layer_norm_eps=1e-5,
                         norm_first=norm_first, dropout=0.1)  # fmt: skip
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration._from_config(config, attn_implementation="eager")
    reference = reference_transformer(model)
    for module in (model, reference):
        for child in list(module.modules()):
            for attribute, value in list(vars(child).get("_modules", {}).items()):
                if isinstance(value, nn.Dropout):
                    # nn.Transformer's `dropout` inside the FFN is no part of the paper: identity there.
                    inside_ffn = module is reference and attribute == "dropout"
                    setattr(child, attribute, nn.Identity() if inside_ffn else HalfDropout())
    model.train()
    reference.train()
    ids, mask, labels = random_batch(batch=3, source=9, target=7)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    embedding = model.get_input_embeddings().weight

    def embed(x):  # the embedding sum, then the stand-in for its dropout (§5.4)
        position = sinusoidal_position_encoding(torch.arange(x.shape[1]), config.d_model)
        return (embedding[x] * math.sqrt(config.d_model) + position) * 0.5

    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        memory = reference.encoder(embed(ids), src_key_padding_mask=mask == 0)
        causal = nn.Transformer.generate_square_subsequent_mask(decoder_ids.shape[1])
        decoded = reference.decoder(embed(decoder_ids), memory, tgt_mask=causal, memory_key_padding_mask=mask == 0)
    real = mask.bool()
    torch.testing.assert_close(ours.encoder_last_hidden_state[real], memory[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.logits, decoded @ embedding.T, atol=1e-5, rtol=1e-5)
