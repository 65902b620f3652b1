"""hf_vanilla_transformer: the Transformer of "Attention Is All You Need" as a Hugging Face model.

Importing the package registers the model with `AutoConfig`, `AutoModel` and `AutoModelForSeq2SeqLM`, and marks
the classes for `trust_remote_code` sharing: `save_pretrained` writes the code files and an `auto_map`, so the
saved folder loads where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_vanilla_transformer import (
    PAPER_VOCAB_SIZE,
    PARAMS_TOLERANCE,
    PRESETS,
    TABLE3_REPORTED,
    VanillaTransformerConfig,
    paper_parameter_count,
)
from .modeling_vanilla_transformer import (
    SourceLengthLimitLogitsProcessor,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
    gnmt_length_penalty,
    paper_generation_config,
    shift_tokens_right,
    sinusoidal_position_encoding,
)
from .translation import translate

__version__ = "0.1.0"

AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)

VanillaTransformerConfig.register_for_auto_class()
VanillaTransformerModel.register_for_auto_class("AutoModel")
VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__all__ = [
    "PAPER_VOCAB_SIZE",
    "PARAMS_TOLERANCE",
    "PRESETS",
    "TABLE3_REPORTED",
    "SourceLengthLimitLogitsProcessor",
    "VanillaTransformerConfig",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "gnmt_length_penalty",
    "paper_generation_config",
    "paper_parameter_count",
    "shift_tokens_right",
    "sinusoidal_position_encoding",
    "translate",
]
