# catdog: `make serve`, `make train` and `make test` set up .venv on a fresh machine, each
# with the extras of pyproject.toml its use needs (versions from requirements.lock).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 0.0.0.0
PORT   ?= 8000
MODEL_DIR ?= models/catdog

SERVE_EXTRAS := serve
TRAIN_EXTRAS := train
# every extra but gpu (CUDA wheels): the tests drive both runtimes, training and batch jobs
TEST_EXTRAS  := serve,tensorflow,train,teacher,batch,dev

.PHONY: help install install-train install-test test lint serve train clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# One stamp per set of extras, so a .venv made by `make serve` still gets the test set
# from `make test` (and is brought up to date when pyproject.toml or the lock change).
$(VENV)/.installed-%: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet -c requirements.lock -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed-serve  ## .venv for serving on LiteRT (the serve extra)
$(VENV)/.installed-serve: EXTRAS = $(SERVE_EXTRAS)

install-train: $(VENV)/.installed-train  ## .venv for training and export (the train extra)
$(VENV)/.installed-train: EXTRAS = $(TRAIN_EXTRAS)

install-test: $(VENV)/.installed-test  ## .venv with every extra the tests and tools need
$(VENV)/.installed-test: EXTRAS = $(TEST_EXTRAS)

serve: install  ## serve the bundled model on :8000 (python -m app: the hardened launcher)
	CATDOG_MODEL_DIR=$(MODEL_DIR) $(BIN)/python -m app --host $(HOST) --port $(PORT)

train: install-train  ## set up training: then .venv/bin/python -m training --help
	$(BIN)/python -m training --help

# Two workers, each module on one (pyproject's addopts), the slowest first (tests/conftest.py).
test: install-test  ## lint, then run every test (two workers)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2

lint: install-test  ## ruff check and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:  ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
