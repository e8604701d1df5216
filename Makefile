# The README's two commands: `make serve` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= artifacts/default

.PHONY: serve test lint typecheck unit default-model pilot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled whenever a lock file or pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python requirements/dev.lock requirements/runtime.lock pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -r requirements/dev.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

# Until the HTTP service lands, `serve` checks the committed model end to end:
# it translates the first test2016 sentences with the PyTorch reference decoder.
serve: $(VENV)/.installed
	$(BIN)/mtserve eval --model $(MODEL) --split test2016 --direction en-fr --limit 20 --no-mlm --no-write

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest -q

test: lint typecheck unit

pilot: $(VENV)/.installed
	$(BIN)/mtserve train --config configs/pilot.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
