import copy
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, small_config


def python_without_this_package(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A new venv whose only packages are this environment's installed wheels (torch, transformers, ...) through a
    .pth file, which does not carry the editable install of this package; returns its python and an offline env."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(venv_site, "reuse_wheels.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    return python, env


def tiny_config(**overrides) -> VanillaTransformerConfig:
    return small_config("tiny", **overrides)


def tiny_model(seed: int = 0, **overrides) -> VanillaTransformerForConditionalGeneration:
    torch.manual_seed(seed)
    return VanillaTransformerForConditionalGeneration(tiny_config(**overrides)).eval()


def random_batch(vocab_size: int = 128, batch: int = 3, source: int = 9, target: int = 7, seed: int = 0):
    """Ids avoid the special tokens 0-3; row i of the source is padded after `source - 2 * i` tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab_size, (batch, source), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for i in range(batch):
        attention_mask[i, max(1, source - 2 * i) :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = torch.randint(4, vocab_size, (batch, target), generator=generator)
    return input_ids, attention_mask, labels


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def fresh_config():
    """A fresh config per use: from_config(attn_implementation=...) writes onto the config it is given."""
    return lambda **kw: copy.deepcopy(tiny_config(**kw))
