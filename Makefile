# The single entry point: the README's commands and CI all come through here.
# Every target sets up what it needs itself, so each works on a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test test-unit proto lint bench clean

$(STAMP): pyproject.toml bridges/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e bridges/python -e '.[test,flower,embedded,metrics]'
	touch $(STAMP)

venv: $(STAMP)

## make demo: start an embedded Redis and a worker, run the showcase, stop it all.
demo: venv
	$(VENV)/bin/snakepit-celery demo

## make test: everything the tests need, then the whole suite.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## make proto: regenerate the gRPC code (and its type stubs) from protos/.
proto: venv
	$(PY) scripts/gen_proto.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy snakepit_celery

## make bench: every benchmark table, plain Celery measured beside it.
bench: venv
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info bridges/python/*.egg-info
