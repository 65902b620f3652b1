"""Fetch transformers' own common model tests for tests/test_transformers_common.py.

    python tests/transformers_common/fetch.py [DEST]

transformers does not ship its test suite in its wheel. This script downloads the source distribution of the
*installed* transformers version from PyPI with pip, and extracts the two files the project runs against its model:

- tests/test_modeling_common.py      (`ModelTesterMixin`, `ids_tensor`, ...)
- tests/test_configuration_common.py (`ConfigTester`)

Those two import three modules that are not in the sdist; small stand-ins written by this script take their place
(see STAND_INS below). The result is a package `transformers_tests` under DEST; DEST goes on `sys.path`.

DEST defaults to `default_dest()`: $TRANSFORMERS_COMMON_TESTS_DIR if set, else `transformers-tests-<version>` inside
the running virtual environment (so the cache goes away with the venv that holds that transformers version).

Idempotent: nothing is done when DEST already holds the files. Atomic: everything is written to a temporary folder
beside DEST, which is renamed to DEST at the end, so an interrupted fetch leaves no half-written DEST.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "transformers_tests"  # the package name the fetched files live in (they use relative imports)
FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
ENV_VAR = "TRANSFORMERS_COMMON_TESTS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]

# The modules that test_modeling_common.py and test_configuration_common.py import but that the sdist lacks.
STAND_INS: dict[str, str] = {
    "generation/test_utils.py": '''\
"""Stand-in for transformers' tests/generation/test_utils.py, which is not in the sdist (written by
hf_vanilla_transformer's tests/transformers_common/fetch.py).

A bare marker: `ModelTesterMixin.test_generation_tester_mixin_inheritance` only checks whether a test class inherits
from it. No generate() tests come with it; the project's own tests/test_generation.py covers generate().
"""


class GenerationTesterMixin:
    pass
''',
    "exporters/test_export.py": '''\
"""Stand-in for transformers' tests/exporters/test_export.py, which is not in the sdist (written by
hf_vanilla_transformer's tests/transformers_common/fetch.py).

`ModelTesterMixin` derives from `ExportTesterMixin`, whose tests export models with torch.export, ONNX, ExecuTorch,
OpenVINO and TensorRT. This stand-in has none of those tests: the export tests are not run.
"""


class ExportTesterMixin:
    pass
''',
    "utils/test_configuration_utils.py": '''\
"""Stand-in for transformers' tests/utils/test_configuration_utils.py, which is not in the sdist (written by
hf_vanilla_transformer's tests/transformers_common/fetch.py).

`ConfigTester.check_config_arguments_init` builds a config from `config_common_kwargs` and checks that every value
is set. The dict holds the attributes every `PreTrainedConfig` has (those of `PreTrainedConfig().__dict__` other than
`is_encoder_decoder`, the name/version bookkeeping and the private ones), each with a value that is not its default,
so that a config class that drops or overrides one of them is caught.
"""

config_common_kwargs = {
    "architectures": ["AnyModelClass"],
    "output_hidden_states": True,
    "output_attentions": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 3,
    "id2label": {0: "negative", 1: "neutral", 2: "positive"},
    "label2id": {"negative": 0, "neutral": 1, "positive": 2},
    "problem_type": "single_label_classification",
}
''',
}


def transformers_version() -> str:
    return importlib.metadata.version("transformers")


def default_dest(version: str | None = None) -> Path:
    """Where the fetched tests of `version` (the installed one by default) are kept."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    name = f"transformers-tests-{version or transformers_version()}"
    if sys.prefix != sys.base_prefix:  # a virtual environment
        return Path(sys.prefix) / name
    return REPO_ROOT / ".venv" / name


def is_fetched(dest: Path) -> bool:
    package = dest / PACKAGE
    return all((package / Path(f).relative_to("tests")).is_file() for f in FILES) and all(
        (package / f).is_file() for f in STAND_INS
    )


def _download_sdist(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        f"transformers=={version}",
        "-d",
        str(into),
    ]
    print(f"fetch: {' '.join(command)}", file=sys.stderr)
    subprocess.run(command, check=True)
    found = sorted(into.glob("transformers-*.tar.gz"))
    if len(found) != 1:
        raise RuntimeError(f"pip download left {[p.name for p in into.iterdir()]} in {into}; expected one sdist.")
    return found[0]


def _extract(sdist: Path, version: str, package: Path) -> None:
    with tarfile.open(sdist) as archive:
        for wanted in FILES:
            member_name = f"transformers-{version}/{wanted}"
            try:
                member = archive.getmember(member_name)
            except KeyError:
                raise RuntimeError(f"{sdist.name} has no {member_name}") from None
            source = archive.extractfile(member)
            if source is None:
                raise RuntimeError(f"{member_name} in {sdist.name} is not a regular file")
            target = package / Path(wanted).relative_to("tests")
            target.write_bytes(source.read())


def fetch(dest: Path, version: str | None = None) -> Path:
    """Fill `dest` with the common tests of transformers `version` (default: the installed one); returns `dest`."""
    version = version or transformers_version()
    dest = Path(dest).resolve()
    if is_fetched(dest):
        print(f"fetch: {dest} already holds the transformers {version} common tests", file=sys.stderr)
        return dest
    if dest.exists():
        raise RuntimeError(f"{dest} exists but does not hold the fetched tests; remove it and run again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        download = work / "download"
        download.mkdir()
        sdist = _download_sdist(version, download)

        staged = work / "staged"
        package = staged / PACKAGE
        for folder in ("", "generation", "exporters", "utils"):
            (package / folder).mkdir(parents=True, exist_ok=True)
            # Empty: test_configuration_common.py runs this __init__ through `direct_transformers_import`.
            (package / folder / "__init__.py").write_text("")
        _extract(sdist, version, package)
        for relative, text in STAND_INS.items():
            (package / relative).write_text(text)
        (staged / "VERSION").write_text(f"{version}\n")
        (staged / "SOURCE").write_text(
            f"{', '.join(FILES)} from {sdist.name} (PyPI, Apache-2.0); "
            f"{', '.join(STAND_INS)} are stand-ins written by tests/transformers_common/fetch.py.\n"
        )
        try:
            staged.rename(dest)
        except OSError:
            if not is_fetched(dest):  # not just another fetch that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"fetch: wrote the transformers {version} common tests to {dest}", file=sys.stderr)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, help=f"target folder (default: {default_dest()})")
    args = parser.parse_args(argv)
    fetch(args.dest if args.dest is not None else default_dest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
