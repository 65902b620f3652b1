"""generate(): greedy, beam search with the paper's settings (§6.1), sampling, against uncached / unbatched runs."""

import math
import threading

import pytest
import torch
from conftest import random_batch, tiny_model
from transformers import GenerationConfig
from transformers.generation import LogitsProcessor
from transformers.modeling_outputs import Seq2SeqLMOutput

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, gnmt_length_penalty

EOS = 2


def test_paper_decoding_is_the_default_generation_config():
    config = tiny_model().generation_config
    assert (config.num_beams, config.length_penalty, config.length_penalty_type) == (4, 0.6, "gnmt")
    assert config.max_new_tokens_over_source == 50 and config.early_stopping == "never"
    assert gnmt_length_penalty(10, 0.6) == pytest.approx((15 / 6) ** 0.6)


def greedy_reference(model, ids, steps):
    """Uncached greedy decoding: a full forward over the whole prefix at every step."""
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id]])
    for _ in range(steps):
        logits = model(input_ids=ids, decoder_input_ids=decoder_ids, use_cache=False).logits[:, -1]
        decoder_ids = torch.cat([decoder_ids, logits.argmax(-1, keepdim=True)], dim=1)
        if decoder_ids[0, -1] == EOS:
            break
    return decoder_ids


def test_greedy_with_cache_equals_an_uncached_argmax_loop():
    model = tiny_model(seed=3)
    ids, mask, _ = random_batch(batch=1)
    out = model.generate(ids, attention_mask=mask, num_beams=1, max_new_tokens=12, max_new_tokens_over_source=None)
    torch.testing.assert_close(out, greedy_reference(model, ids, 12))


@pytest.mark.parametrize("num_beams, depths", [(1, (2, 2)), (4, (2, 2)), (4, (2, 3)), (4, (3, 1))])
def test_cached_generation_equals_uncached_generation(num_beams, depths):
    """The cache (beam search reorders only its self-attention half), the fused W^Q W^K W^V and the transposed
    output projection of generate() against full forwards over the whole prefix at every step."""
    model = tiny_model(seed=1, encoder_layers=depths[0], decoder_layers=depths[1])
    ids, mask, _ = random_batch(batch=3)
    kwargs = dict(
        attention_mask=mask, num_beams=num_beams, max_new_tokens=10, return_dict_in_generate=True, output_scores=True
    )
    cached, uncached = model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs)
    torch.testing.assert_close(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-5, rtol=1e-5)
    if num_beams > 1:
        torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)


def module_state(model):
    """Every module's own attributes (not its parameters, buffers or children), by identity of the values."""
    return {name: {k: id(v) for k, v in vars(module).items()} for name, module in model.named_modules()}


class Probe(LogitsProcessor):
    """A logits processor that runs `callback(step)` at every decoding step, inside generate()."""

    def __init__(self, callback):
        self.callback, self.step = callback, 0

    def __call__(self, input_ids, scores):
        self.callback(self.step)
        self.step += 1
        return scores


def test_generate_writes_no_state_into_the_modules_and_replaces_no_forward():
    model = tiny_model(seed=4)
    ids, mask, _ = random_batch(batch=2)
    before = module_state(model)
    during = []
    for num_beams in (1, 4):
        probe = Probe(lambda step: during.append(module_state(model)) if step == 2 else None)
        out = model.generate(
            ids, attention_mask=mask, num_beams=num_beams, min_new_tokens=5, max_new_tokens=5, logits_processor=[probe]
        )
        assert out.shape[1] == 6
    assert len(during) == 2 and all(state == before for state in during)
    assert module_state(model) == before
    assert not [name for name, module in model.named_modules() if "forward" in vars(module)]


def test_logits_of_generate_equal_plain_forwards_and_follow_weights_changed_between_calls():
    model = tiny_model(seed=4)
    ids, mask, _ = random_batch(batch=2)

    def generated_logits_against_plain_forwards():
        out = model.generate(
            ids,
            attention_mask=mask,
            num_beams=1,
            min_new_tokens=8,
            max_new_tokens=8,
            output_logits=True,
            return_dict_in_generate=True,
        )
        plain = model(input_ids=ids, attention_mask=mask, decoder_input_ids=out.sequences[:, :-1], use_cache=False)
        torch.testing.assert_close(torch.stack(out.logits, dim=1), plain.logits, atol=1e-5, rtol=1e-5)
        return out.logits[0]

    before = generated_logits_against_plain_forwards()
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
        model.model.decoder.layers[0].self_attn.k_proj.weight.mul_(2.0)
    assert not torch.allclose(generated_logits_against_plain_forwards(), before)


def test_ids_are_checked_once_per_call_not_per_step(monkeypatch):
    from hf_vanilla_transformer import modeling_vanilla_transformer as modeling

    calls = []
    real = modeling.check_input_ids
    monkeypatch.setattr(
        modeling, "check_input_ids", lambda ids, vocab, name: (calls.append(name), real(ids, vocab, name))
    )
    model = tiny_model()
    ids, mask, _ = random_batch(batch=2)
    model.generate(ids, attention_mask=mask, num_beams=4, min_new_tokens=10, max_new_tokens=10)
    assert calls == ["input_ids", "decoder_input_ids"]


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_batch_generates_what_each_sentence_generates_alone(num_beams):
    model = tiny_model(seed=2)
    ids, mask, _ = random_batch(batch=3)
    batched = model.generate(ids, attention_mask=mask, num_beams=num_beams, max_new_tokens=9)
    for i in range(3):
        alone = model.generate(ids[i : i + 1, : int(mask[i].sum())], num_beams=num_beams, max_new_tokens=9)[0]
        row = batched[i, : alone.shape[0]]
        assert torch.equal(row, alone), i
        assert (batched[i, alone.shape[0] :] <= EOS).all()  # only padding (pad or EOS) after


def test_maximum_output_length_is_source_length_plus_50_per_sentence():
    model = tiny_model()
    ids, mask, _ = random_batch(batch=3, source=9)  # source lengths 9, 7, 5
    for num_beams in (1, 4):
        # suppress_tokens keeps the untrained model from ending early, so every sentence runs to its limit.
        out = model.generate(ids, attention_mask=mask, num_beams=num_beams, suppress_tokens=[EOS])
        for i in range(3):
            generated = out[i, 1:].tolist()
            assert EOS in generated
            assert generated.index(EOS) == int(mask[i].sum()) + 50, (num_beams, i)
    short = model.generate(ids, attention_mask=mask, num_beams=1, suppress_tokens=[EOS], max_new_tokens_over_source=3)
    assert short[0, 1:].tolist().index(EOS) == 9 + 3
    unlimited = model.generate(
        ids, attention_mask=mask, num_beams=1, suppress_tokens=[EOS], max_new_tokens_over_source=None, max_new_tokens=70
    )
    assert unlimited.shape[1] == 71 and EOS not in unlimited[0, 1:].tolist()


class ScriptedModel(VanillaTransformerForConditionalGeneration):
    """A model whose next-token log-probabilities are a fixed table over the decoded prefix, so that beam search
    meets hypotheses with chosen scores. Tokens: 1 start, 2 EOS, 4 'a', 5 'b'.

    Hypothesis A = [a, EOS]: L = 2, log p = -0.9 - 0.1 = -1.0
    Hypothesis B = [b, b, b, EOS]: L = 4, log p = -0.7 - 0.2 - 0.2 - 0.2 = -1.3
    GNMT (alpha 0.6): A -1.0 / 1.0969 = -0.912 beats B -1.3 / 1.2754 = -1.019 (the paper keeps the shorter).
    L ** alpha: A -1.0 / 1.5157 = -0.660 loses to B -1.3 / 2.2974 = -0.566 (transformers picks the longer).
    """

    TABLE = {(): {4: -0.9, 5: -0.7}, (4,): {EOS: -0.1}, (5,): {5: -0.2}, (5, 5): {5: -0.2}, (5, 5, 5): {EOS: -0.2}}

    def forward(self, decoder_input_ids=None, **kwargs):
        rows = []
        for prefix in decoder_input_ids[:, 1:].tolist():
            chosen = self.TABLE.get(tuple(prefix), {EOS: -0.01})
            rest = math.log((1 - sum(math.exp(v) for v in chosen.values())) / (self.config.vocab_size - len(chosen)))
            row = torch.full((self.config.vocab_size,), rest)
            for token, logp in chosen.items():
                row[token] = logp
            rows.append(row)
        logits = torch.stack(rows)[:, None, :].expand(-1, decoder_input_ids.shape[1], -1)
        return Seq2SeqLMOutput(logits=logits)


def test_gnmt_length_penalty_picks_the_papers_hypothesis():
    torch.manual_seed(0)
    model = ScriptedModel(tiny_model().config).eval()
    ids = torch.tensor([[7, 8, 9]])
    common = dict(
        num_beams=4,
        length_penalty=0.6,
        early_stopping="never",
        max_new_tokens=6,
        use_cache=False,
        max_new_tokens_over_source=None,
        return_dict_in_generate=True,
        output_scores=True,
    )
    paper = model.generate(ids, length_penalty_type="gnmt", **common)
    library = model.generate(ids, length_penalty_type="transformers", **common)
    assert paper.sequences[0].tolist() == [1, 4, EOS]
    assert library.sequences[0].tolist() == [1, 5, 5, 5, EOS]
    # The returned scores are the two formulas exactly.
    assert paper.sequences_scores.item() == pytest.approx(-1.0 / ((5 + 2) / 6) ** 0.6, abs=1e-5)
    assert library.sequences_scores.item() == pytest.approx(-1.3 / 4**0.6, abs=1e-5)


def test_switching_to_transformers_scoring_through_the_generation_config():
    model = ScriptedModel(tiny_model().config).eval()
    model.generation_config.length_penalty_type = "transformers"
    out = model.generate(torch.tensor([[7, 8, 9]]), max_new_tokens=6, use_cache=False, max_new_tokens_over_source=None)
    assert out[0].tolist() == [1, 5, 5, 5, EOS]
    explicit = GenerationConfig(
        num_beams=4,
        length_penalty=0.6,
        early_stopping="never",
        max_new_tokens=6,
        decoder_start_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        use_cache=False,
    )
    assert model.generate(torch.tensor([[7, 8, 9]]), generation_config=explicit)[0].tolist() == [
        1,
        5,
        5,
        5,
        EOS,
    ]


def test_sampling_is_seeded_and_varies():
    model = tiny_model()
    ids, mask, _ = random_batch(batch=2)
    kwargs = dict(attention_mask=mask, do_sample=True, num_beams=1, top_k=50, max_new_tokens=8, num_return_sequences=3)
    torch.manual_seed(0)
    a = model.generate(ids, **kwargs)
    torch.manual_seed(0)
    b = model.generate(ids, **kwargs)
    torch.manual_seed(1)
    c = model.generate(ids, **kwargs)
    assert a.shape[0] == 6 and torch.equal(a, b) and not torch.equal(a, c)


def test_bad_decoding_options():
    model = tiny_model()
    ids = torch.tensor([[5, 6]])
    with pytest.raises(
        ValueError, match=r"length_penalty_type='wu' is invalid: expected one of \('gnmt', 'transformers'\)"
    ):
        model.generate(ids, length_penalty_type="wu")
    with pytest.raises(ValueError, match=r"max_new_tokens_over_source=-5 is invalid"):
        model.generate(ids, max_new_tokens_over_source=-5)
    with pytest.raises(ValueError, match=r"input_ids contains token id 500"):
        model.generate(torch.tensor([[5, 500]]))


def test_a_default_max_length_in_the_generation_config_does_not_cut_the_paper_limit():
    """Seq2SeqTrainer writes transformers' default max_length=20 into model.generation_config."""
    model = tiny_model()
    model.generation_config.max_length = 20
    ids, mask, _ = random_batch(batch=1, source=9)
    out = model.generate(ids, attention_mask=mask, num_beams=1, suppress_tokens=[EOS])
    assert out[0, 1:].tolist().index(EOS) == 9 + 50


def test_generate_from_two_threads_at_once_equals_one_at_a_time():
    """Calls overlapping in two threads on one model decode exactly what each decodes alone."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_model(seed=7)
    batches = [random_batch(batch=2, seed=seed)[:2] for seed in range(6)]
    alone = [model.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=12) for ids, mask in batches]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(
            pool.map(lambda b: model.generate(b[0], attention_mask=b[1], num_beams=2, max_new_tokens=12), batches)
        )
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b)


def test_two_threads_with_different_length_penalty_types_each_get_their_own():
    """The penalty type travels in each call's own generation config: two calls in lockstep (a barrier at each of
    their first steps) with "gnmt" and "transformers" pick the hypotheses each picks alone."""
    from concurrent.futures import ThreadPoolExecutor

    model = ScriptedModel(tiny_model().config).eval()
    barrier = threading.Barrier(2, timeout=60)
    common = dict(
        num_beams=4, length_penalty=0.6, early_stopping="never", max_new_tokens=6, use_cache=False,
        max_new_tokens_over_source=None,
    )  # fmt: skip

    def run(penalty_type):
        in_step = Probe(lambda step: barrier.wait() if step < 2 else None)  # both calls are inside generate together
        return model.generate(
            torch.tensor([[7, 8, 9]]), length_penalty_type=penalty_type, logits_processor=[in_step], **common
        )[0].tolist()

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=2) as pool:
            gnmt, library = pool.map(run, ["gnmt", "transformers"])
        assert gnmt == [1, 4, EOS] and library == [1, 5, 5, 5, EOS]
    assert model.generation_config.length_penalty_type == "gnmt" and model.generation_config.length_penalty == 0.6
    assert type(model.generation_config.length_penalty) is float


def test_a_non_finite_length_penalty_and_a_bad_eos_id_are_refused():
    model = tiny_model()
    ids, mask, _ = random_batch(batch=2)
    with pytest.raises(ValueError, match=r"length_penalty=nan is invalid: expected a finite number"):
        model.generate(ids, attention_mask=mask, length_penalty=float("nan"))
    with pytest.raises(ValueError, match=r"eos_token_id=500 is invalid: .* \[0, vocab_size=128\)"):
        model.generate(ids, attention_mask=mask, eos_token_id=500)


def test_the_gnmt_stopping_bound_is_taken_at_the_maximum_length():
    """tensor2tensor's rule: a running beam can still win while its log-probability divided by the penalty at the
    *maximum* length beats the worst finished hypothesis (the GNMT penalty grows with L, so that is the best it can
    reach). Here the running beam (log p = -3.0 after 4 tokens, at most 50) can still reach -3.0 / lp(50) = -0.794 >
    -1.5, so the search must go on; the bound at the current length, -3.0 / lp(4) = -2.35, would stop it."""
    from hf_vanilla_transformer.generation_vanilla_transformer import (
        GNMTLengthPenalty,
        VanillaTransformerGenerationMixin,
    )

    def go_on(running: float, finished: float) -> bool:
        return VanillaTransformerGenerationMixin._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=torch.tensor([[True]]),
            running_beam_scores=torch.tensor([[running, running - 1.0]]),
            beam_scores=torch.tensor([[finished + 0.5, finished]]),  # the worst finished one is `finished`
            is_sent_finished=torch.tensor([[True]]),
            cur_len=5,  # the decoder start token and 4 generated tokens
            max_length=51,
            decoder_prompt_len=1,
            early_stopping="never",
            length_penalty=GNMTLengthPenalty(0.6),
        ).item()

    lp = lambda length: ((5 + length) / 6) ** 0.6  # noqa: E731  Wu et al. 2016
    assert -3.0 / lp(50) > -1.5 > -3.0 / lp(4)
    assert go_on(-3.0, finished=-1.5)
    # and it stops once even the maximum-length bound cannot beat the worst finished hypothesis
    assert -3.0 / lp(50) < -0.7 and not go_on(-3.0, finished=-0.7)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_finished_sentences_are_padded_with_pad_in_greedy_and_beam_search(num_beams):
    """The library's beam search fills finished beams with `pad_token_id or eos_token_id`, EOS for this model's pad id
    0: beam outputs must be padded with PAD after the first EOS, as greedy ones are."""
    model = tiny_model()
    input_ids, attention_mask, _ = random_batch()  # sources of 9, 7 and 5 tokens: the limit ends them apart
    for return_dict in (False, True):
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
                                max_new_tokens_over_source=0, return_dict_in_generate=return_dict)  # fmt: skip
        sequences = output.sequences if return_dict else output
        padded = 0
        for row in sequences.tolist():
            end = row.index(model.config.eos_token_id, 1)
            assert row[end + 1 :] == [model.config.pad_token_id] * (len(row) - end - 1), row
            padded += len(row) - end - 1
        assert padded > 0
