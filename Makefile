# adm — Guided Diffusion (ADM) with PyTorch Lightning + Hydra.
# `make help` lists the targets. Every target that runs code installs what is missing first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.adm-installed
# torch / torchvision are pinned to the builds this project is developed and tested with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= --durations=15
# Tests run many tiny tensor ops, which are faster (and far faster on a busy machine) single-threaded;
# tests that need another thread count set it themselves.
TEST_THREADS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install test test-all demo lint format bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=77" wheel
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet $(TORCH_PINS) -e '.[dev,inception,slurm]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install adm with its dev tools (idempotent; fast when done)

test: $(STAMP) ## run the test suite (skips tests marked slow)
	@OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: $(STAMP) ## run every test, slow ones included
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP) ## train a guided ADM + noisy classifier on MNIST-5k, sweep guidance, write outputs/demo/
	$(PY) scripts/demo.py

# `make bench OPENAI=../guided-diffusion` compares with OpenAI's code from a local checkout.
OPENAI ?= $(ADM_OPENAI_REF)
BENCH_ARGS ?=
bench: $(STAMP) ## forward / training step / guided sampling speed, side by side with OpenAI's code
	$(PY) scripts/dev/bench.py $(if $(OPENAI),--openai $(OPENAI)) $(BENCH_ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove run outputs (keeps .venv)
	rm -rf outputs multirun runs lightning_logs wandb .pytest_cache
