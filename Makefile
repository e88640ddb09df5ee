# The two commands of the README: `make demo` and `make test`. Each sets itself up from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed

.PHONY: demo test setup lint typecheck compile gas clean

demo: setup
	$(BIN)/tchan demo

test: setup
	$(BIN)/python -m pytest -n 2 tests

setup: $(STAMP_PY) $(STAMP_NPM)

$(STAMP_PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

lint: setup
	$(BIN)/ruff check offchain tests
	$(BIN)/ruff format --check offchain tests

typecheck: setup
	$(BIN)/mypy offchain

compile: setup
	$(BIN)/tchan compile

gas: setup
	$(BIN)/tchan gas

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis
