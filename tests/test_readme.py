"""The README's usage examples (```python blocks) run, in order, as one program (each block builds on the ones
before). A ```py block names files the reader has (a trained model folder) and is shown, not run."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXPERIMENTS_DOC = README.parent / "docs" / "experiments.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples():
    assert len(python_blocks()) >= 4


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    # The examples' results are what they say they are.
    assert namespace["translation"].shape[0] == 2 and namespace["loss"].ndim == 0
    assert namespace["cross_attention"].shape[:2] == (2, 4)
    # With the package imported, transformers prefers the registered local class; the load without the package
    # is tested in test_save_load.py.
    assert type(namespace["remote"]).__name__ == "VanillaTransformerForConditionalGeneration"
    assert namespace["greedy"].shape[1] <= 21


@pytest.mark.parametrize(
    "result, script",
    [
        ("speed.md", "speed.py"),
        ("before_after/speed.md", "speed.py"),
        ("opus_mt.md", "opus_mt.py"),
        ("quantized.md", "quantized.py"),
        ("avx2-decode/speed.md", "speed.py"),
    ],
)
def test_the_speed_tables_are_what_the_benchmark_wrote(result, script):
    """The README's speed figures are files under benchmarks/results/ that the benchmark scripts wrote."""
    start, end = f"<!-- benchmarks/results/{result} -->\n", f"<!-- /benchmarks/results/{result} -->"
    embedded = README.read_text().split(start, 1)[1].split(end, 1)[0]
    assert embedded == (README.parent / "benchmarks" / "results" / result).read_text()
    assert f"python benchmarks/{script}" in embedded.split("\n", 2)[0] + embedded.split("\n", 2)[1]
    assert "![speed](benchmarks/results/speed.png)" in README.read_text()


@pytest.mark.parametrize("name", ["scaling", "positions", "layer_norm", "residuals", "sequential", "table3",
                                  "vocabulary", "averaging", "smoothing", "decoding", "heads"])  # fmt: skip
def test_the_experiment_tables_are_what_the_experiments_wrote(name):
    """docs/experiments.md: each table is experiments/results/NAME.md as `python -m experiments` wrote it, beside its
    figure; the README's section links there."""
    start, end = f"<!-- experiments/results/{name}.md -->\n", f"<!-- /experiments/results/{name}.md -->"
    text = EXPERIMENTS_DOC.read_text()
    embedded = text.split(start, 1)[1].split(end, 1)[0]
    assert embedded == (README.parent / "experiments" / "results" / f"{name}.md").read_text()
    assert f"![{name}](../experiments/results/{name}.png)" in text
    assert (README.parent / "experiments" / "results" / f"{name}.png").is_file()
    assert "(docs/experiments.md)" in README.read_text()


def test_the_demo_distribution_is_what_demo_seeds_wrote():
    """README "The two commands": the 6-run table is experiments/results/demo_seeds.md as `make demo-seeds` wrote it,
    and the Makefile's demo recipe is the one it measured."""
    start, end = "<!-- experiments/results/demo_seeds.md -->\n", "<!-- /experiments/results/demo_seeds.md -->"
    embedded = README.read_text().split(start, 1)[1].split(end, 1)[0]
    written = (README.parent / "experiments" / "results" / "demo_seeds.md").read_text()
    assert embedded == written
    makefile = (README.parent / "Makefile").read_text()
    recipe = makefile.split("DEMO_ARGS := ", 1)[1].split("\n\n", 1)[0].replace("\\\n\t", "").split()
    recipe = [word for word in recipe if word not in ("--output_dir", "outputs/demo")]
    assert " ".join(recipe) in written.replace("\n", " ")
