# The two commands: `make demo` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck check bench services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## Run the onboarding demo on the embedded default (SQLite + a broker that needs no server).
demo: $(VENV)/.installed
	$(BIN)/garrison demo

## Start PostgreSQL and Redis when installed but stopped (with CI=true a missing one fails the run).
services:
	bash scripts/ensure-services

## Lint, type-check, then run the whole suite against PostgreSQL + Redis and against SQLite.
test: $(VENV)/.installed-test services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

## Throughput and memory figures against raw Celery (needs PostgreSQL + Redis).
bench: $(VENV)/.installed-test services
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .garrison .garrison-demo .pytest_cache .mypy_cache .ruff_cache
