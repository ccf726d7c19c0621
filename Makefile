# catdog: `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTED := $(VENV)/.installed-batch
HOST   ?= 0.0.0.0
PORT   ?= 8000
MODEL_DIR ?= models/catdog

.PHONY: help install test lint serve clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with pinned dependencies

# The tests also need the batch job's extra (Ray); serving never installs it.
$(TESTED): $(STAMP)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,batch]'
	touch $(TESTED)

test: $(TESTED)  ## lint, then run every test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: install  ## ruff check and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

serve: install  ## serve the bundled model on :8000 (python -m app: the hardened launcher)
	CATDOG_MODEL_DIR=$(MODEL_DIR) $(BIN)/python -m app --host $(HOST) --port $(PORT)

clean:  ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
