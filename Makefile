# The two commands the README opens with. Each one sets everything up first (scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED ?= 0

.PHONY: setup demo lint test test-slow bench

setup:
	bash scripts/install.sh

## The main job: tiny VLM on easy-VQA, cold start then GRPO, held-out accuracy before/after.
demo: setup
	$(PY) examples/easy_vqa/run_demo.py $(ARGS)

## Lint (ruff, configured in pyproject.toml). Seconds.
lint: setup
	$(PY) -m ruff check .

## The default test run (CI): the lint, then every test not marked slow.
test: setup lint
	$(PY) -m pytest -q --durations=15 $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

bench: setup
	$(PY) benchmarks/grpo_phases.py $(ARGS)
