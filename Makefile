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
test-tools: ## Debian tools the tests use: prometheus + promtool, prometheus-alertmanager, chromium
	@{ command -v promtool && test -x /usr/bin/prometheus && test -x /usr/bin/prometheus-alertmanager; } \
	  >/dev/null || { echo "installing prometheus and prometheus-alertmanager (Debian)"; \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus \
	  prometheus-alertmanager) >/dev/null 2>&1 \
	  || echo "warning: prometheus/alertmanager could not be installed; their tests are skipped"; }
	@command -v chromium >/dev/null || { echo "installing chromium (Debian, for the browser test)"; \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) \
	  >/dev/null 2>&1 || echo "warning: chromium could not be installed; the browser test is skipped"; }

# Four pytest-xdist workers, each with its own Valkey + Tansu on free ports (tests/conftest.py);
# --dist loadscope keeps a module on one worker, so its module-scoped fixtures (a trained model,
# a crashed-worker run) are built once. The e2e tests mostly wait on the broker: 4 > 2 cores pays.
TEST_WORKERS ?= 4

.PHONY: test
test: setup test-tools ## Unit, integration (real Valkey + Tansu) and end-to-end tests, in parallel
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

.PHONY: test-fast
test-fast: setup ## Unit tests only
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not integration and not e2e"

.PHONY: faults
faults: setup ## Fault suite (worker SIGKILL, Valkey/broker restarts, slow Redis, poison): table
	$(BIN)/riskstream faults --out .riskstream/faults

.PHONY: fuzz
fuzz: setup ## 1,000,000 hostile messages through a real worker (crashes, accounting, PAN scan, RSS)
	$(BIN)/riskstream fuzz --messages 1000000 --out .riskstream/fuzz

.PHONY: bench
bench: setup ## Benchmarks: .bench/results.json (pipeline), .bench/broker-floor.json (the broker alone) and .bench/review-paging.json (review queue pages)
	$(BIN)/riskstream bench
	$(BIN)/riskstream bench-broker
	$(BIN)/riskstream review bench --cases 100000 --out .bench/review-paging.json

.PHONY: review-screenshots
review-screenshots: setup test-tools ## Review pages in chromium: the demo's cases and the browser test's, in .bench/review/
	$(BIN)/riskstream demo --no-serve --screenshots .bench/review/demo
	RISKSTREAM_REVIEW_SCREENSHOTS=.bench/review/test $(BIN)/pytest -q tests/e2e/test_review_browser.py
	@ls -1 .bench/review/*/*.png

.PHONY: review-bench
review-bench: setup ## Review queue paging on 100,000 cases; writes .bench/review-paging.json
	$(BIN)/riskstream review bench --cases 100000 --out .bench/review-paging.json

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

.PHONY: up-monitoring
up-monitoring: ## Prometheus, Alertmanager and Grafana from compose.yaml (needs Docker)
	docker compose up -d prometheus alertmanager grafana
	@echo "Prometheus http://localhost:9090  Alertmanager http://localhost:9093  Grafana http://localhost:3000"

.PHONY: clean
clean: ## Remove run files (.riskstream, .bench), keep .venv
	rm -rf .riskstream .bench .pytest_cache .mypy_cache .ruff_cache

.PHONY: help
help: ## This list
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-18s %s\n", $$1, $$2}'
