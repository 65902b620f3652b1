import copy
import json
import logging
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, small_config


class LibraryDeprecationMessage(AssertionError):
    """A deprecation that transformers logged for a call the test made (see `deprecations_logged_are_errors`)."""


class _RaiseOnDeprecation(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and "deprecat" in message.lower():
            raise LibraryDeprecationMessage(f"transformers logged a deprecation: {message}")


@pytest.fixture(autouse=True)
def deprecations_logged_are_errors(request):
    """pyproject's `filterwarnings` turns transformers' FutureWarning / DeprecationWarning into errors; some renames
    are announced through the library's logger instead (transformers 5.24: "`past_key_values`/`cache_params` are
    deprecated. Use `cache` instead."), so a deprecation logged during a test fails it too. The next rename then
    fails a test here, not a user's decoding. A test that runs an old revision of the package on purpose is marked
    `runs_old_code`."""
    if request.node.get_closest_marker("runs_old_code"):
        yield
        return
    handler = _RaiseOnDeprecation()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    try:
        yield
    finally:
        library_logger.removeHandler(handler)


def python_without_this_package(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A new venv whose only packages are this environment's installed wheels (torch, transformers, ...) through a
    .pth file, which does not carry the editable install of this package; returns its python and an offline env."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # every site-packages folder of this interpreter, also those a .pth file of its own added (an environment layered
    # over another); the .pth files inside them (this package's editable install) are not read from there
    folders = dict.fromkeys([*site.getsitepackages(), *(p for p in sys.path if p.endswith("site-packages"))])
    Path(venv_site, "reuse_wheels.pth").write_text("\n".join(folders) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    return python, env


def generate_without_this_package(tmp_path: Path, folder: Path, sources: list[str], **generate_kwargs) -> list:
    """Loads `folder` with AutoTokenizer / AutoModelForSeq2SeqLM (trust_remote_code) in a venv without this package
    and returns the token ids that `generate(**generate_kwargs)` gives for `sources`."""
    python, env = python_without_this_package(tmp_path)
    code = textwrap.dedent(
        f"""
        import json
        try:
            import hf_vanilla_transformer
            raise SystemExit("the package must not be importable here")
        except ImportError:
            pass
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        batch = tokenizer({sources!r}, return_tensors="pt", padding=True)
        print(json.dumps(model.generate(**batch, **{generate_kwargs!r}).tolist()))
        """
    )
    result = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert printed, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(printed[-1])


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
