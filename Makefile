# The two commands: `make demo` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist processes: each gets a database and a Redis db of its own (tests/conftest.py). The tests
# mostly wait on real workers, so more processes than cores pays.
TEST_WORKERS ?= 4

.PHONY: demo test lint typecheck check bench services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pyproject.toml declares compatible ranges; constraints.txt is the exact set the suite runs against.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

## Run the onboarding demo on the embedded default (SQLite + a broker that needs no server).
demo: $(VENV)/.installed
	$(BIN)/garrison demo

## Start PostgreSQL and Redis when installed but stopped, and install Chromium for the console's browser
## tests when it is missing (with CI=true a missing one fails the run).
services:
	bash scripts/ensure-services

## Lint, type-check, check the layer contracts, build the docs strictly (a warning fails), then run the
## whole suite (every docs snippet included) against PostgreSQL + Redis and against SQLite, in parallel.
test: $(VENV)/.installed-test services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .site
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

## Throughput and memory figures against raw Celery (needs PostgreSQL + Redis).
bench: $(VENV)/.installed-test services
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .garrison .garrison-demo .pytest_cache .mypy_cache .ruff_cache .site test-artifacts
