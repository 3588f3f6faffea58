# wsmon: `make run` starts the demo, `make test` runs lint, type check and the whole suite.
# Both work on a fresh machine: they create .venv and install what they need. The daemon's
# dependencies come from deploy/requirements.lock (hashed), exactly as a deploy installs them.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := deploy/requirements.lock
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
ARGS   ?=

# The oldest aiohttp of the range pyproject.toml states, tested in a second venv.
COMPAT_VENV    := .venv-compat
COMPAT_AIOHTTP := 3.12.0
COMPAT_STAMP   := $(COMPAT_VENV)/.installed-$(COMPAT_AIOHTTP)
# The tests that touch the wire (connections, probes, close codes, faults, the hooks).
WIRE_TESTS := tests/test_connection.py tests/test_faults.py tests/test_hooks.py \
              tests/test_reconnect.py tests/test_streams.py tests/test_anatomy.py \
              tests/test_proxy.py

# System tools the tests drive for real; installed from Debian when missing and root.
TOOLS    := promtool prometheus amtool systemd-analyze unshare nsenter ip
PACKAGES := prometheus prometheus-alertmanager systemd util-linux iproute2

# For tests/test_kubernetes.py: kubectl renders deploy/kubernetes (where there is none,
# Debian's kubernetes-client, kubectl 1.20 with kustomize v2: only then, as its
# /usr/bin/kubectl clashes with other packages'), and npm brings the prometheus-operator CRD
# schema the PodMonitor is validated against (locked in the folder's package-lock.json).
SCHEMA_CHECK := deploy/kubernetes/schema-check
SCHEMA_STAMP := $(SCHEMA_CHECK)/node_modules/.installed

# For tests/test_page.py: Debian's Chromium, driven headless by Playwright for Python (from
# the dev extra; never `playwright install`, which downloads browsers of its own), and
# axe-core from npm for the accessibility pass (locked in the folder's package-lock.json).
A11Y       := tests/a11y
A11Y_STAMP := $(A11Y)/node_modules/.installed

.PHONY: run test lint typecheck pytest test-compat tools kubectl-tool chromium-tool bench lock \
        proto clean

run: $(RUN_STAMP)
	$(BIN)/wsmon demo $(ARGS)

test: lint typecheck pytest test-compat

# What the daemon needs, and nothing else: the locked dependencies, then wsmon itself.
$(RUN_STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The dev tools on top (tests/test_deploy.py checks the locked versions stayed in place).
$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

lint: $(DEV_STAMP)
	$(BIN)/ruff check monitor tests proto $(wildcard bench)
	$(BIN)/ruff format --check monitor tests proto $(wildcard bench)

typecheck: $(DEV_STAMP)
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

kubectl-tool:
	@command -v kubectl >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing kubectl (Debian: kubernetes-client)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends kubernetes-client >/dev/null; \
	else \
	  echo "missing: kubectl; install the Debian package kubernetes-client" >&2; exit 1; \
	fi

chromium-tool:
	@command -v chromium >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (Debian: chromium)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null; \
	else \
	  echo "missing: chromium; install the Debian package chromium" >&2; exit 1; \
	fi

pytest: $(DEV_STAMP) tools kubectl-tool chromium-tool $(SCHEMA_STAMP) $(A11Y_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

$(SCHEMA_STAMP): $(SCHEMA_CHECK)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(SCHEMA_CHECK) --no-audit --no-fund --loglevel=error && touch $@; \
	else \
	  echo "npm is missing: tests/test_kubernetes.py cannot check the PodMonitor's schema" >&2; \
	fi

$(A11Y_STAMP): $(A11Y)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(A11Y) --no-audit --no-fund --loglevel=error && touch $@; \
	else \
	  echo "npm is missing: tests/test_page.py cannot run its accessibility pass" >&2; \
	fi

# The wire tests once more, against the oldest aiohttp the range admits.
$(COMPAT_STAMP): pyproject.toml
	rm -rf $(COMPAT_VENV)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/pip install --quiet 'aiohttp==$(COMPAT_AIOHTTP)' -e '.[dev]'
	touch $@

test-compat: $(COMPAT_STAMP) tools
	PATH="$(CURDIR)/$(COMPAT_VENV)/bin:$$PATH" $(COMPAT_VENV)/bin/pytest -q \
	  -p no:cacheprovider $(WIRE_TESTS)

# Benchmarks: figures go to bench/RESULTS.md (see the commands recorded there).
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.run --only 6
	$(BIN)/python -m bench.run --only 8
	$(BIN)/python -m bench.soak --cycles 10000

# Re-resolve the locked dependencies (after a change to pyproject.toml's dependencies).
lock: $(DEV_STAMP)
	$(BIN)/pip install --quiet 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml --extra speedups --generate-hashes --universal \
	  --python-version 3.11 --quiet -o $(LOCK)

# The Prometheus protobuf data model (io.prometheus.client.MetricFamily) as Python: protoc from
# grpcio-tools turns proto/io/prometheus/client/metrics.proto into monitor/metrics_pb2.py and
# .pyi, then one post-step moves them into the package as monitor.metrics_pb2 with a "generated"
# header (proto/generate.py; proto/README.md says where the .proto comes from). Never edit the
# output: tests/test_proto.py regenerates it and fails on any difference.
proto: $(DEV_STAMP)
	$(BIN)/python proto/generate.py monitor

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
