"""hf_vanilla_transformer: the Transformer of "Attention Is All You Need" as a Hugging Face model.

Importing the package registers the model with `AutoConfig`, `AutoModel` and `AutoModelForSeq2SeqLM`, and marks
the classes for `trust_remote_code` sharing: `save_pretrained` writes the code files (configuration, modeling,
generation and loss) and an `auto_map`, so the saved folder loads where this package is not installed.

Files: `configuration_vanilla_transformer` (the config, Table 3 presets), `modeling_vanilla_transformer` (the paper's
model), `generation_vanilla_transformer` (§6.1 decoding), `loss_vanilla_transformer` (§5.4 loss), `paper` (what the
paper reports, and the small non-paper sizes), `cpu_decoding` (an opt-in weight layout for faster decoding on CPU),
`translation` (the translate command), `convert` (OPUS-MT / fairseq checkpoints in, CTranslate2 out) and
`tokenization_vanilla_transformer` (the tokenizer of converted fairseq models).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .compatibility_vanilla_transformer import PACKAGE_VERSION
from .configuration_vanilla_transformer import PRESETS, VanillaTransformerConfig
from .cpu_decoding import pack_for_cpu_decoding, unpack_cpu_decoding
from .generation_vanilla_transformer import (
    GNMTLengthPenalty,
    SourceLengthLimitLogitsProcessor,
    gnmt_length_penalty,
    paper_generation_config,
)
from .loss_vanilla_transformer import label_smoothed_cross_entropy
from .modeling_vanilla_transformer import (
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
    shift_tokens_right,
    sinusoidal_position_encoding,
)
from .paper import (
    PAPER_VOCAB_SIZE,
    PARAMS_TOLERANCE,
    SMALL_CONFIGS,
    TABLE3_REPORTED,
    any_config,
    deviations_from_paper,
    paper_parameter_count,
    small_config,
    table3_row,
)
from .tokenization_vanilla_transformer import FairseqBPETokenizer
from .translation import translate

__version__ = PACKAGE_VERSION

AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)

VanillaTransformerConfig.register_for_auto_class()
VanillaTransformerModel.register_for_auto_class("AutoModel")
VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
FairseqBPETokenizer.register_for_auto_class("AutoTokenizer")  # converted fairseq folders carry its file

__all__ = [
    "FairseqBPETokenizer",
    "GNMTLengthPenalty",
    "PAPER_VOCAB_SIZE",
    "PARAMS_TOLERANCE",
    "PRESETS",
    "SMALL_CONFIGS",
    "TABLE3_REPORTED",
    "SourceLengthLimitLogitsProcessor",
    "VanillaTransformerConfig",
    "pack_for_cpu_decoding",
    "unpack_cpu_decoding",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "any_config",
    "deviations_from_paper",
    "gnmt_length_penalty",
    "label_smoothed_cross_entropy",
    "paper_generation_config",
    "paper_parameter_count",
    "shift_tokens_right",
    "sinusoidal_position_encoding",
    "small_config",
    "table3_row",
    "translate",
]
