# One-command setup for a fresh Debian 12 machine (run as root).
#   make demo  - the main job end to end
#   make test  - set up everything, then lint, type-check and run the full suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMPS := .cache/stamps
APT_PACKAGES := $(shell grep -v '^[[:space:]]*\#' deps/apt-packages.txt | grep -v '^[[:space:]]*$$')

# Go builds the Kubernetes payload; Debian's machines here keep it in /usr/local/go.
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all setup deps venv proto test test-cluster quick lint typecheck pytest demo bench clean

all: setup

setup: deps venv

# System packages, from the host's own apt configuration. Idempotent: apt runs only when something is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing host packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "==> host packages present"; fi

venv: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml | deps
	@echo "==> python environment in $(VENV)"
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed: install it, or run make PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	@$(BIN)/python -m pip install -q -e '.[host,dev]'
	@mkdir -p $(STAMPS) && touch $@

# The node API's Python stubs (talos_os/api/gen, git-ignored), from talos_os/api/node.proto; only when it changed.
proto: venv
	@$(BIN)/python -m talos_os.api.build

lint: proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: proto
	$(BIN)/mypy

pytest: proto
	$(BIN)/pytest

test: setup lint typecheck pytest

# The local-cluster e2e (1 control plane + 2 workers under QEMU, 45-60 min under TCG on 2 cores).
test-cluster: setup proto
	TALOS_E2E_CLUSTER=1 $(BIN)/pytest tests/cluster/test_cluster_e2e.py -v

# For iterations: lint, types and every test that neither bakes nor boots (a few minutes).
quick: setup lint typecheck
	$(BIN)/pytest -m "not e2e" -q

demo: setup proto
	@$(BIN)/python -m tools.demo

bench: setup proto
	@$(BIN)/python -m tools.bench

clean:
	rm -rf _out _build $(STAMPS) talos_os/api/gen
