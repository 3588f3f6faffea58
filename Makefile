# wsmon: `make run` starts the demo, `make test` runs lint, type check and the whole suite.
# Both work on a fresh machine: they create .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint typecheck pytest clean

run: $(STAMP)
	$(BIN)/wsmon demo $(ARGS)

test: lint typecheck pytest

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check monitor tests $(wildcard bench)
	$(BIN)/ruff format --check monitor tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy monitor

pytest: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
