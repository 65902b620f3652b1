"""The paper's decoding policy (§6.1) on top of transformers' `generate()`.

- beam size 4 and the GNMT length penalty with alpha = 0.6 (`length_penalty_type="gnmt"`): a finished hypothesis of
  length L scores sum(log p) / ((5 + L) / 6) ** alpha. transformers divides by L ** alpha instead
  (`length_penalty_type="transformers"`);
- a maximum output length of the sentence's own input length + 50 (`max_new_tokens_over_source=50`);
- early termination once no running beam can still beat the finished ones (tensor2tensor's rule:
  `early_stopping="never"` with the bound computed at the maximum length).

Both options live in the generation config (`generation_config.json`) or are given to `generate()`. Nothing is
stored on the model for the length of a call: each call's settings travel in its own copy of the generation config,
so concurrent calls with different settings decode what each would decode alone.

The library's beam search divides by L ** length_penalty in two private methods; the GNMT form needs its own
division there, so three private methods are overridden below, all for that one reason, and
`tests/test_generation.py` pins their signatures to the installed transformers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.generation import LogitsProcessor, LogitsProcessorList

LENGTH_PENALTY_TYPES = ("gnmt", "transformers")


def gnmt_length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """Wu et al. 2016, the paper's length penalty: lp(L) = ((5 + L) / 6) ** alpha; a hypothesis scores log p / lp(L).

    transformers' own `length_penalty` divides by L ** alpha instead.
    """
    return ((5 + length) / 6) ** alpha


class GNMTLengthPenalty(float):
    """The alpha of the GNMT length penalty, standing in the call's generation config for the plain float
    `length_penalty`. The library's beam search hands `length_penalty` to its scoring hooks, so the hooks below learn
    the formula from their own argument; the library's checks and arithmetic see an ordinary float."""

    def __repr__(self) -> str:
        return f"GNMTLengthPenalty({float(self)!r})"


class SourceLengthLimitLogitsProcessor(LogitsProcessor):
    """Ends each sentence after at most `max_new_tokens[i]` tokens by forcing end-of-sentence there (§6.1: the
    maximum output length is the input length + 50, per sentence). `generate` has only a batch-wide limit, so
    this is written here. Rows of `input_ids` are the batch's sentences, each repeated for its beams / samples.
    Runs without a host synchronisation: the same tensor operations at every step."""

    def __init__(self, max_new_tokens: torch.LongTensor, eos_token_id: int, prompt_length: int = 1):
        self.max_new_tokens = max_new_tokens  # (B,)
        self.eos_token_id = eos_token_id
        self.prompt_length = prompt_length
        self._limits: torch.LongTensor | None = None  # (rows,), made at the first step
        self._eos_only: torch.Tensor | None = None  # (V,): 0 at EOS, -inf elsewhere

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._limits is None or self._limits.shape[0] != input_ids.shape[0]:
            rows_per_sentence = input_ids.shape[0] // self.max_new_tokens.shape[0]
            self._limits = self.max_new_tokens.to(input_ids.device).repeat_interleave(rows_per_sentence)
            self._eos_only = torch.full(scores.shape[-1:], -math.inf, dtype=scores.dtype, device=scores.device)
            self._eos_only[self.eos_token_id] = 0.0
        at_limit = (input_ids.shape[1] - self.prompt_length) >= self._limits  # (rows,)
        return torch.where(at_limit[:, None], self._eos_only.to(scores.dtype), scores)


def paper_generation_config(config: Any) -> GenerationConfig:
    """§6.1: beam size 4, GNMT length penalty alpha = 0.6, maximum output length = input length + 50, and early
    termination once no running beam can beat the finished ones (tensor2tensor's rule: `early_stopping="never"`
    with the bound computed at the maximum length)."""
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


# Our two entries of the generation config (the library keeps unknown entries as attributes).
CUSTOM_OPTIONS = ("length_penalty_type", "max_new_tokens_over_source")


class VanillaTransformerGenerationMixin(GenerationMixin):
    """`GenerationMixin` with the paper's decoding options (see the module docstring)."""

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
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

        An option missing from a `generation_config` passed to the call comes from the model's generation config,
        as every other option does.
        """
        over_source = self._generation_option("max_new_tokens_over_source", generation_config, kwargs)
        if over_source is not None and (
            not isinstance(over_source, int) or isinstance(over_source, bool) or over_source < 0
        ):
            raise ValueError(
                f"max_new_tokens_over_source={over_source!r} is invalid: expected None or an integer >= 0."
            )
        if over_source is not None:
            source_lengths = self._source_lengths(inputs, kwargs)
            eos_token_id = self._generation_option("eos_token_id", generation_config, kwargs, pop=False)
            if isinstance(eos_token_id, torch.Tensor):
                eos_token_id = eos_token_id.tolist()  # a 0-d tensor becomes an int, others a list
            if isinstance(eos_token_id, (list, tuple)):
                if len(eos_token_id) == 0:
                    raise ValueError(
                        f"eos_token_id={eos_token_id!r} is invalid: expected a token id or a non-empty list."
                    )
                eos_token_id = eos_token_id[0]
            eos_token_id = self.config.eos_token_id if eos_token_id is None else eos_token_id
            if not isinstance(eos_token_id, int) or not 0 <= eos_token_id < self.config.target_vocab_size:
                raise ValueError(
                    f"eos_token_id={eos_token_id!r} is invalid: the source-length limit ends sentences with it, so it "
                    f"must be a token id of the target vocabulary [0, vocab_size={self.config.target_vocab_size})."
                )
            # A limit given to this call, or a max_new_tokens in a generation config, also caps the batch. A config's
            # max_length does not: transformers fills it with its default of 20 (Seq2SeqTrainer writes that into
            # model.generation_config), which would cut the paper's limit short.
            cap = kwargs.get("max_new_tokens")
            for source in (generation_config, self.generation_config):
                if cap is None and source is not None:
                    cap = getattr(source, "max_new_tokens", None)
            limits = source_lengths + over_source
            if cap is None and kwargs.get("max_length") is None:
                kwargs["max_new_tokens"] = cap = int(limits.max()) + 1  # + 1 for the forced EOS (once per call)
            if cap is None or cap > int(limits.min()):  # the limit can bind within this call
                prompt = kwargs.get("decoder_input_ids")
                limit = SourceLengthLimitLogitsProcessor(
                    limits, eos_token_id, prompt.shape[1] if prompt is not None else 1
                )
                logits_processor = LogitsProcessorList([*(logits_processor or []), limit])
        pad_token_id = self._generation_option("pad_token_id", generation_config, kwargs, pop=False)
        eos_token_id = self._generation_option("eos_token_id", generation_config, kwargs, pop=False)
        prompt = kwargs.get("decoder_input_ids")
        output = super().generate(inputs, generation_config, logits_processor, **kwargs)
        return self._pad_after_eos(output, pad_token_id, eos_token_id, prompt.shape[1] if prompt is not None else 1)

    def _pad_after_eos(self, output: Any, pad_token_id: Any, eos_token_id: Any, start: int) -> Any:
        """Every position after a sentence's first EOS holds the pad id. Needed because the library's beam search fills
        finished beams with `pad_token_id or eos_token_id`, which takes EOS when the pad id is 0 (this model's
        default), so beam outputs came back padded with EOS where greedy ones are padded with PAD."""
        pad_token_id = self.config.pad_token_id if pad_token_id is None else pad_token_id
        eos_token_id = self.config.eos_token_id if eos_token_id is None else eos_token_id
        sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
        if pad_token_id is None or eos_token_id is None or sequences is None or sequences.dim() != 2:
            return output
        eos = torch.as_tensor(eos_token_id, device=sequences.device).flatten()
        generated = sequences[:, start:]
        is_eos = torch.isin(generated, eos)
        after_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        generated.masked_fill_(after_first_eos, int(torch.as_tensor(pad_token_id)))
        return output

    def _generation_option(
        self, name: str, generation_config: GenerationConfig | None, kwargs: dict[str, Any], pop: bool = True
    ) -> Any:
        """An option by the library's priority: the call's keyword, the call's generation config, the model's."""
        if name in kwargs:
            return kwargs.pop(name) if pop else kwargs[name]
        for source in (generation_config, self.generation_config):
            if source is not None and hasattr(source, name):
                return getattr(source, name)
        return None

    def _source_lengths(self, inputs: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.LongTensor:
        attention_mask = kwargs.get("attention_mask")
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if attention_mask is not None:
            return (attention_mask != 0).long().sum(-1)  # a mask of other values is refused by the encoder
        if input_ids is not None and input_ids.dim() == 2:
            return (input_ids != self.config.pad_token_id).long().sum(-1)
        encoder_outputs = kwargs.get("encoder_outputs")
        if encoder_outputs is not None:
            hidden = encoder_outputs[0]
            return torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long, device=hidden.device)
        raise ValueError("max_new_tokens_over_source needs the source: give input_ids or an attention_mask.")

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """After each beam-search step the library moves every beam's cache to the beam's new place, through this
        optional hook where a model has one (as RAG does; GenerationMixin does not define it). Only the
        self-attention half needs moving: the cross-attention keys and values are those of the sentence's encoder
        output, the same for all its beams, and beams never move between sentences. Skipping that half is exact
        and saves a copy of it at every step (benchmarks/speed.py, beam 4)."""
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    # ---- the GNMT length penalty: the library's private beam-search hooks --------------------------------------
    def _prepare_generation_config(
        self, generation_config: GenerationConfig | None, **kwargs: Any
    ) -> tuple[GenerationConfig, dict[str, Any]]:
        """The call's own generation config (the library's copy), with the length penalty marked as GNMT where the
        call asks for it."""
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        for name in CUSTOM_OPTIONS:  # given to the call while no generation config had them: not model inputs
            if name in model_kwargs:
                setattr(generation_config, name, model_kwargs.pop(name))
        for name in ("num_beams", "num_return_sequences"):  # the library divides by them or builds tensors of them
            value = getattr(generation_config, name)
            if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}={value!r} is invalid: expected an integer >= 1.")
        eos = generation_config.eos_token_id
        if isinstance(eos, list) and not eos:
            raise ValueError("eos_token_id=[] is invalid: expected a token id or a non-empty list of them.")
        penalty_type = getattr(generation_config, "length_penalty_type", "transformers")
        if penalty_type not in LENGTH_PENALTY_TYPES:
            raise ValueError(
                f"length_penalty_type={penalty_type!r} is invalid: expected one of {LENGTH_PENALTY_TYPES}."
            )
        alpha = generation_config.length_penalty
        if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
            raise ValueError(f"length_penalty={alpha!r} is invalid: expected a finite number (the paper: 0.6).")
        if penalty_type == "gnmt" and generation_config.length_penalty is not None:
            generation_config.length_penalty = GNMTLengthPenalty(generation_config.length_penalty)
        elif isinstance(generation_config.length_penalty, GNMTLengthPenalty):  # from an earlier gnmt preparation
            generation_config.length_penalty = float(generation_config.length_penalty)
        return generation_config, model_kwargs

    def _update_finished_beams(self, *, topk_log_probs, cur_len, decoder_prompt_len, length_penalty, **kwargs):
        # The library divides a finished hypothesis' score by L ** length_penalty here. For the GNMT form we divide
        # by ((5 + L) / 6) ** alpha ourselves and hand it a penalty of 0 (L ** 0 == 1), so its bookkeeping
        # (finished beams, early stopping) is reused unchanged.
        if isinstance(length_penalty, GNMTLengthPenalty):
            topk_log_probs = topk_log_probs / gnmt_length_penalty(cur_len + 1 - decoder_prompt_len, length_penalty)
            length_penalty = 0.0
        return super()._update_finished_beams(
            topk_log_probs=topk_log_probs,
            cur_len=cur_len,
            decoder_prompt_len=decoder_prompt_len,
            length_penalty=length_penalty,
            **kwargs,
        )

    @staticmethod
    def _check_early_stop_heuristic(
        *, running_beam_scores, cur_len, max_length, decoder_prompt_len, early_stopping, length_penalty, **kwargs
    ):
        if isinstance(length_penalty, GNMTLengthPenalty):
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


__all__ = [
    "GNMTLengthPenalty",
    "LENGTH_PENALTY_TYPES",
    "SourceLengthLimitLogitsProcessor",
    "VanillaTransformerGenerationMixin",
    "gnmt_length_penalty",
    "paper_generation_config",
]
