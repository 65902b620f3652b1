# The README's two commands, with their set-up: `make demo` (the main job) and `make test`.
# Each creates .venv on a fresh machine and installs the project with torch pinned by constraints.txt
# (torch==2.13.0, the CPU build on this machine kind; an unpinned torch pulls several GB of CUDA packages).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-seeds smoke test test-newest params bench experiments clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The main job: build the bundled corpus and the tokenizer, train the demo model on CPU with the paper's recipe,
# evaluate, average the last 2 checkpoints, score the test split with the paper's beam search, print the exact match
# per category, write outputs/demo/{model,results.json,*.png}. Rerun, it continues from the newest complete
# checkpoint (or only repeats the averaging and the test). Where it departs from the paper's section 5 (each a
# budget choice for ~7.5 minutes on 2 CPU cores; the table in README "The two commands", measured by `make demo-seeds`):
#   --preset demo               a small model: d_model 128, d_ff 512, h 4, N 3
#   --vocab_size 320            not 37000: ~320 pieces keep German number words compositional (issue 25, H2)
#   --max_tokens 4000           not 50000 tokens per step
#   --max_steps 1500            not 100000
#   --warmup_steps 300          not 4000 (20% of the run)
#   --lr_scale 0.5              half the formula's peak: 0.5 x 128^-0.5 x 300^-0.5 = 2.55e-3
#   --cooldown_steps 300        the rate falls linearly to 0 over the last 20% (the paper: inverse sqrt to the end)
#   --max_grad_norm 1.0         gradient clipping (the paper: none)
#   --save_steps 60 --average_last 2
#                               the averaged checkpoints span the last 4% of the run (the paper's: ~5%), the end of
#                               the cool-down; 5 checkpoints 60 steps apart (16%) lost a skill learned in the last
#                               120 steps in 1 of 6 runs (experiments/results/demo_seeds_average_last_5.md, and
#                               that run's checkpoints in demo_diagnosis_checkpoints_cooldown.md)
#   --eval_steps 300 --max_eval_samples 500 --generation_num_beams 1
#                               greedy validation on 500 stratified pairs; the test split keeps beam 4
DEMO_ARGS := --output_dir outputs/demo --preset demo --vocab_size 320 --max_tokens 4000 --max_steps 1500 \
	--warmup_steps 300 --lr_scale 0.5 --cooldown_steps 300 --max_grad_norm 1.0 --save_steps 60 --average_last 2 \
	--eval_steps 300 --max_eval_samples 500 --generation_num_beams 1 --logging_steps 50 --resume_from_checkpoint last

demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory setup && $(BIN)/python -m hf_vanilla_transformer_training.train $(DEMO_ARGS) && \
	echo "[demo] wall time $$(( $$(date +%s) - start )) s, set-up included"

# The demo recipe over 3 weight seeds x 2 corpus seeds, two runs at a time (about 45 minutes on 2 cores); writes
# experiments/results/demo_seeds.{md,json}, the distribution the README reports.
demo-seeds: setup
	$(BIN)/python -m experiments.demo_seeds --parallel 2 -- $(filter-out --output_dir outputs/demo,$(DEMO_ARGS))

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

# The design experiments of docs/experiments.md (about 48 minutes on 2 cores; it prints its wall time); each also
# runs alone, `python -m experiments.NAME`; writes experiments/results/NAME.{md,json,png}.
experiments: setup
	$(BIN)/python -m experiments

clean:
	rm -rf $(VENV) .venv-newest outputs .pytest_cache .ruff_cache
