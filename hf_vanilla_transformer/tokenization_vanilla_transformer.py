"""The tokenizer of converted fairseq models (see `convert.py`): transformers' `FSMTTokenizer` (Moses + BPE, its port
of fairseq's WMT pipeline) with a target mode.

FSMTTokenizer maps every text through the source dictionary and Moses-tokenizes it in the source language, so
`tokenizer(text_target=...)` gives wrong labels for a model with two dictionaries (and applies the source language's
Moses rules to the target, e.g. English rules to French apostrophes). `FairseqBPETokenizer` switches both for
`text_target`, as fine-tuning with `Seq2SeqTrainer` needs. The file imports only transformers: converted folders carry
it and load it with `trust_remote_code=True` where this package is not installed.
"""

from transformers import FSMTTokenizer


class FairseqBPETokenizer(FSMTTokenizer):
    """`FSMTTokenizer` whose `text_target` uses the target dictionary and the target language's Moses rules."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._languages = (self.src_lang, self.tgt_lang)
        self._source_vocabulary = self.encoder
        self._target_vocabulary = {token: index for index, token in self.decoder.items()}

    def _switch_to_target_mode(self) -> None:
        self.encoder, self.src_lang = self._target_vocabulary, self._languages[1]

    def _switch_to_input_mode(self) -> None:
        self.encoder, self.src_lang = self._source_vocabulary, self._languages[0]


__all__ = ["FairseqBPETokenizer"]
