# riskstream — `make help` lists the targets. Every target installs what it needs first.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "python3 (>= 3.11) is required"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "installing python3-venv (Debian)"; \
	  (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e '.[test]'
	touch $(STAMP)

.PHONY: lock
lock: setup ## Re-pin every dependency (requirements.lock) from pyproject.toml, with uv
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra test --extra embedded -o requirements.lock \
	  --python-version 3.11 -q

.PHONY: setup
setup: $(STAMP) ## Create .venv and install riskstream with the embedded stack and test tools

.PHONY: demo
demo: setup ## Embedded stack, a simulated month, train, worker, stream the last days, summary
	$(BIN)/riskstream demo

.PHONY: test-tools
test-tools: ## Debian tools the tests use: promtool (checks deploy/ alert rules)
	@command -v promtool >/dev/null || { echo "installing prometheus (for promtool, Debian)"; \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) \
	  >/dev/null 2>&1 || echo "warning: promtool could not be installed; its test is skipped"; }

.PHONY: test
test: setup test-tools ## Unit, integration (real Valkey + Tansu) and end-to-end tests
	$(BIN)/pytest -q

.PHONY: test-fast
test-fast: setup ## Unit tests only
	$(BIN)/pytest -q -m "not integration and not e2e"

.PHONY: faults
faults: setup ## Fault suite (worker SIGKILL, Valkey/broker restarts, slow Redis, poison): table
	$(BIN)/riskstream faults --out .riskstream/faults

.PHONY: fuzz
fuzz: setup ## 1,000,000 hostile messages through a real worker (crashes, accounting, PAN scan, RSS)
	$(BIN)/riskstream fuzz --messages 1000000 --out .riskstream/fuzz

.PHONY: bench
bench: setup ## Benchmarks: writes .bench/results.json and prints it as a table
	$(BIN)/riskstream bench

.PHONY: benchmark-handbook
benchmark-handbook: setup ## The handbook benchmark: 3 seeds, its protocol, beside its published figures
	$(BIN)/riskstream benchmark-handbook --seeds 0,1,2

.PHONY: lint
lint: setup ## ruff, mypy and pip-audit (known vulnerabilities of the pinned dependencies)
	$(BIN)/ruff check .
	$(BIN)/mypy engine agents features models rules replay
	$(BIN)/pip-audit -r requirements.lock --no-deps --disable-pip --progress-spinner off

.PHONY: up
up: setup ## Start the embedded stack in the foreground (Ctrl-C stops it)
	$(BIN)/riskstream up

.PHONY: clean
clean: ## Remove run files (.riskstream, .bench), keep .venv
	rm -rf .riskstream .bench .pytest_cache .mypy_cache .ruff_cache

.PHONY: help
help: ## This list
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-18s %s\n", $$1, $$2}'
