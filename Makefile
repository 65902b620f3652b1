# The README's two commands, with their set-up: `make demo` (the main job) and `make test`.
# Each creates .venv on a fresh machine and installs the project with torch pinned by constraints.txt
# (torch==2.13.0, the CPU build on this machine kind; an unpinned torch pulls several GB of CUDA packages).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo smoke test test-newest params bench experiments clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The main job: build the bundled corpus and the tokenizer, train the demo model on CPU with the paper's
# recipe (shorter warm-up and a halved peak learning rate for a 9-minute run), evaluate with the paper's beam
# search, average the last 5 checkpoints, score the test split, write outputs/demo/{model,results.json,*.png}.
# Rerun, it continues from the newest complete checkpoint (or only repeats the averaging and the test).
DEMO_ARGS := --output_dir outputs/demo --preset demo --vocab_size 1000 --max_tokens 4000 --max_steps 2800 \
	--warmup_steps 300 --lr_scale 0.5 --save_steps 200 --average_last 5 --eval_steps 700 --max_eval_samples 300 \
	--logging_steps 100 --resume_from_checkpoint last

demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory setup && $(BIN)/python -m hf_vanilla_transformer_training.train $(DEMO_ARGS) && \
	echo "[demo] wall time $$(( $$(date +%s) - start )) s, set-up included"

# Build, save, reload and decode the full-size base model and a tiny one (no training).
smoke: setup
	$(BIN)/python -m hf_vanilla_transformer_training.demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tests/transformers_common/fetch.py
	$(BIN)/python -m pytest -n 2 --durations=10

# The contract tests with the newest releases pyproject.toml admits (CI's second environment; about 3 minutes).
test-newest: setup
	bash .ci/test-newest

params: setup
	$(BIN)/python benchmarks/parameter_counts.py

# Speed and memory of the base model against MarianMTModel, torch.nn.Transformer and CTranslate2 (fp32, bf16, int8;
# about 20 minutes on 2 cores), then the demo model's BLEU / chrF in fp32, bf16 and int8 (after `make demo`);
# writes benchmarks/results/speed.{md,png,json} and quantized.{md,json}.
bench: setup
	$(BIN)/python benchmarks/speed.py --sizes base
	@if [ -f outputs/demo/model/config.json ]; then $(BIN)/python benchmarks/quantized.py; \
	else echo "[bench] quantized.py skipped: no outputs/demo/model (make demo trains it)"; fi

# The design experiments of README "Why it is built this way" (about 35 minutes on 2 cores); each also runs alone,
# `python -m experiments.NAME`; writes experiments/results/NAME.{md,json,png}.
experiments: setup
	$(BIN)/python -m experiments

clean:
	rm -rf $(VENV) .venv-newest outputs .pytest_cache .ruff_cache
