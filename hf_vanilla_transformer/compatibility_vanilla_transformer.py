"""Which transformers this model's code runs with, and a check of it at import.

transformers renames things in minor releases: 5.24 renamed the decoding cache argument from `past_key_values` to
`cache`, and a model that kept the old name silently decoded each token without its history. The package pins the
tested range in `pyproject.toml`, but a saved folder's copy of this code (`trust_remote_code=True`) runs with
whatever transformers its user has. So the modeling file calls `check_transformers_version()` when it is imported:

- a transformers older than `OLDEST_TRANSFORMERS` is refused (it passes the cache under the old name);
- a transformers newer than the newest tested minor is checked for the library behaviour this code relies on (the
  argument names and the private hooks listed in `library_contract_problems`); a change is refused by name, and
  otherwise a warning says that this version is untested.

This module does not import torch (the configuration imports `PACKAGE_VERSION` from it).
"""

import importlib.metadata
import inspect

from packaging.version import Version
from transformers.utils import logging

logger = logging.get_logger(__name__)

PACKAGE_VERSION = "0.3.0"  # written into every saved config.json as `vanilla_transformer_version`
OLDEST_TRANSFORMERS = "5.24.0"  # the first release that passes the cache as `cache`
NEWEST_TESTED_TRANSFORMERS = "5.25"  # the newest minor release CI tests (pyproject: transformers<5.26)
TRANSFORMERS_REQUIREMENT = f"transformers>={OLDEST_TRANSFORMERS},<5.26"  # as pyproject.toml states it

# Folders saved by the package before this version carry code that decodes wrongly with transformers >= 5.24.
FIRST_VERSION_WITH_CACHE_FIX = "0.3.0"


def _tested_range() -> str:
    return f"{OLDEST_TRANSFORMERS} to {NEWEST_TESTED_TRANSFORMERS}.x"


def _parameters(function: object) -> set[str]:
    return set(inspect.signature(function).parameters)


def library_contract_problems() -> list[str]:
    """What this code needs of transformers beyond its public API, as far as it can be seen without running a model:
    one line per thing that changed, [] when all hold. `tests/test_private_apis.py` pins the same places exactly."""
    from transformers import GenerationMixin, PreTrainedModel
    from transformers.masking_utils import create_causal_mask

    problems = []
    if "cache" not in _parameters(GenerationMixin.prepare_inputs_for_generation):
        problems.append("GenerationMixin.prepare_inputs_for_generation no longer takes `cache`")
    if "cache" not in _parameters(create_causal_mask):
        problems.append("transformers.masking_utils.create_causal_mask no longer takes `cache`")
    # The GNMT length penalty (generation_vanilla_transformer.py) overrides two private beam-search hooks and reads
    # the call's generation config through a third.
    hooks = {
        "_update_finished_beams": {"topk_log_probs", "cur_len", "decoder_prompt_len", "length_penalty"},
        "_check_early_stop_heuristic": {
            "running_beam_scores", "cur_len", "max_length", "decoder_prompt_len", "early_stopping", "length_penalty",
        },
        "_prepare_generation_config": {"generation_config"},
    }  # fmt: skip
    beam_search = inspect.getsource(GenerationMixin._beam_search) if hasattr(GenerationMixin, "_beam_search") else ""
    for name, needed in hooks.items():
        method = getattr(GenerationMixin, name, None)
        if method is None:
            problems.append(f"GenerationMixin.{name} no longer exists")
        elif missing := needed - _parameters(method):
            problems.append(f"GenerationMixin.{name} no longer takes {', '.join(sorted(missing))}")
        elif name != "_prepare_generation_config" and f"self.{name}(" not in beam_search:
            problems.append(f"GenerationMixin._beam_search no longer calls {name}")
    loader = getattr(PreTrainedModel, "_load_pretrained_model", None)
    expected = ["model", "state_dict", "checkpoint_files", "load_config", "expected_keys"]
    if loader is None or list(inspect.signature(loader).parameters) != expected:
        problems.append(f"PreTrainedModel._load_pretrained_model no longer has the parameters ({', '.join(expected)})")
    return problems


def check_transformers_version(version: str | None = None) -> None:
    """Refuses a transformers this code would decode wrongly with (see the module docstring)."""
    version = importlib.metadata.version("transformers") if version is None else version
    if Version(version) < Version(OLDEST_TRANSFORMERS):
        raise ImportError(
            f"This Transformer model's code needs transformers >= {OLDEST_TRANSFORMERS} (tested: {_tested_range()}); "
            f"transformers {version} is installed. Older releases pass the decoding cache as `past_key_values`, "
            f"which this code no longer reads. Install a tested release: pip install '{TRANSFORMERS_REQUIREMENT}'."
        )
    if Version(version).release[:2] > Version(NEWEST_TESTED_TRANSFORMERS).release[:2]:
        if problems := library_contract_problems():
            raise ImportError(
                f"transformers {version} is newer than the releases this Transformer model's code was tested with "
                f"({_tested_range()}), and it changed what the code relies on: {'; '.join(problems)}. Decoding would "
                f"be wrong. Install a tested release (pip install '{TRANSFORMERS_REQUIREMENT}') or a newer "
                "hf-vanilla-transformer, and re-save the model folder with it."
            )
        logger.warning_once(
            f"transformers {version} is newer than the releases this Transformer model's code was tested with "
            f"({_tested_range()}); the library hooks it relies on are unchanged, but nothing else was checked."
        )


def saved_with_stale_code(saved_version: str | None) -> bool:
    """Whether a folder's config.json says its code files predate the cache fix (no version recorded: before 0.3.0)."""
    return saved_version is None or Version(saved_version) < Version(FIRST_VERSION_WITH_CACHE_FIX)


__all__ = [
    "NEWEST_TESTED_TRANSFORMERS",
    "OLDEST_TRANSFORMERS",
    "PACKAGE_VERSION",
    "TRANSFORMERS_REQUIREMENT",
    "check_transformers_version",
    "library_contract_problems",
    "saved_with_stale_code",
]
