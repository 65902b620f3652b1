"""One BPE vocabulary shared by source and target (§5.1), trained with `tokenizers` and saved as a
`PreTrainedTokenizerFast` that `AutoTokenizer` loads from the model folder.

Special tokens and their ids agree with `VanillaTransformerConfig`'s defaults: <pad> 0, <s> 1, </s> 2, <unk> 3.
The encoder input is the sentence followed by </s>; labels are the target followed by </s>.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
SPECIAL_IDS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 37000, min_frequency: int = 2, split_digits: bool = True
) -> PreTrainedTokenizerFast:
    """Trains one BPE vocabulary on source and target text together (the paper's shared vocabulary).

    `split_digits` makes every digit its own token, so numbers are copied digit by digit rather than learned as
    whole pieces; the Metaspace pre-tokenizer keeps the text exactly recoverable by `decode`.
    """
    if vocab_size < len(SPECIAL_IDS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: expected at least {len(SPECIAL_IDS) + 1}.")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.NFC()
    steps = [pre_tokenizers.Metaspace()]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_IDS),  # in id order: <pad> 0, <s> 1, </s> 2, <unk> 3
        show_progress=False,
    )
    tokenizer.train_from_iterator(_batched(texts), trainer=trainer)
    eos = SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, SPECIAL_IDS[eos])]
    )
    for token, expected in SPECIAL_IDS.items():
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"Special token {token} got id {tokenizer.token_to_id(token)}, expected {expected}.")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=1_000_000, **SPECIAL_TOKENS)


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(source: str, trust_remote_code: bool = False, **hub_kwargs):
    """A model's or tokenizer's folder / Hub id through AutoTokenizer; this project's FairseqBPETokenizer folders
    (written by `vanilla-transformer-convert fairseq`) load by class, from the installed package, so no code from
    the folder runs."""
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    from hf_vanilla_transformer import FairseqBPETokenizer

    if get_tokenizer_config(source, **hub_kwargs).get("tokenizer_class") == FairseqBPETokenizer.__name__:
        return FairseqBPETokenizer.from_pretrained(source, **hub_kwargs)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub_kwargs)


def check_tokenizer_matches_config(tokenizer, config) -> None:
    """The tokenizer's special ids and vocabulary must be the model's, or training silently learns garbage. A
    special token the tokenizer does not define (MarianTokenizer has no <s>) is not compared."""
    pairs = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "unk_token_id": tokenizer.unk_token_id,
    }
    for name, value in pairs.items():
        if value is not None and getattr(config, name) != value:
            raise ValueError(f"The tokenizer's {name} is {value} but the model config's is {getattr(config, name)}.")
    largest = max(config.vocab_size, config.target_vocab_size)
    if len(tokenizer) > largest:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {largest}.")
