# wsmon: `make run` starts the demo, `make test` runs lint, type check and the whole suite.
# Both work on a fresh machine: they create .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

# System tools the tests drive for real; installed from Debian when missing and root.
TOOLS    := promtool prometheus amtool systemd-analyze unshare nsenter ip
PACKAGES := prometheus prometheus-alertmanager systemd util-linux iproute2

.PHONY: run test lint typecheck pytest tools bench clean

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

tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (Debian: $(PACKAGES))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing; install the Debian packages $(PACKAGES)" >&2; exit 1; \
	  fi; \
	fi

pytest: $(STAMP) tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

# Benchmarks: figures go to bench/RESULTS.md (see the commands recorded there).
bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.soak --cycles 10000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
