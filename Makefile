# The README's two commands, with their set-up: `make demo` (the main job) and `make test`.
# Each creates .venv on a fresh machine and installs the project with torch pinned by constraints.txt
# (torch==2.13.0, the CPU build on this machine kind; an unpinned torch pulls several GB of CUDA packages).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint params clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m training.demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --durations=10

params: setup
	$(BIN)/python benchmarks/parameter_counts.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
