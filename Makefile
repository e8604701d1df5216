# The README's two commands: `make serve` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= artifacts/default

.PHONY: serve test busy-test lint typecheck unit browser office default-model pilot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled whenever a lock file, pyproject.toml or a C source of the runtime changes (it builds them).
$(VENV)/.installed: $(BIN)/python requirements/dev.lock requirements/runtime.lock pyproject.toml $(wildcard service/runtime/*.c service/runtime/*.h)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements/dev.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

# The HTTP service on the committed model; settings are MTSERVE_* environment variables (README).
serve: $(VENV)/.installed
	MTSERVE_MODEL_DIR=$${MTSERVE_MODEL_DIR:-$(MODEL)} $(BIN)/mtserve serve

# The page test drives a headless Chromium: Debian's chromium and chromium-driver packages.
browser:
	@command -v chromedriver >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# The document tests render translated .docx, .odt and .pptx files with headless LibreOffice, then
# page 1 of the PDF to PNG with poppler: Debian's libreoffice-*-nogui and poppler-utils packages.
office:
	@command -v soffice >/dev/null && command -v pdftoppm >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			libreoffice-core libreoffice-writer-nogui libreoffice-impress-nogui poppler-utils >/dev/null; }

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed browser office
	$(BIN)/pytest -q

test: lint typecheck unit

# The tests that start a server or measure time, with two CPU-bound processes beside them, as on a
# shared machine or a busy CI runner. Each run must pass.
BUSY_TESTS := tests/test_live.py tests/test_reliability.py tests/test_hostile.py tests/test_connections.py \
	tests/test_processes.py
busy-test: $(VENV)/.installed browser
	@$(BIN)/python -c 'while True: pass' & one=$$!; $(BIN)/python -c 'while True: pass' & two=$$!; \
	trap 'kill $$one $$two 2>/dev/null' EXIT INT TERM; \
	$(BIN)/pytest -q $(BUSY_TESTS)

# The default model's recipe (configs/default.toml), then its graphs and scores, all in runs/default/model.
# Publishing it is copying that directory over artifacts/default (docs/TRAINING.md).
DEFAULT_RUN := runs/default/model
default-model: $(VENV)/.installed
	$(BIN)/mtserve train --config configs/default.toml
	$(BIN)/mtserve export --checkpoint $(DEFAULT_RUN) --out $(DEFAULT_RUN) --quantize int8
	$(BIN)/mtserve shortlist $(DEFAULT_RUN) --size 1024
	for d in en-fr fr-en; do \
		$(BIN)/mtserve eval --model $(DEFAULT_RUN) --split test2016 --direction $$d --beam-size 5 && \
		$(BIN)/mtserve eval --model $(DEFAULT_RUN) --split test2016 --limit 200 --direction $$d --beam-size 5 --no-mlm && \
		$(BIN)/mtserve eval --model $(DEFAULT_RUN) --split tatoeba-test --direction $$d --beam-size 5 --no-mlm || exit 1; \
	done

pilot: $(VENV)/.installed
	$(BIN)/mtserve train --config configs/pilot.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
