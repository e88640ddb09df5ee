# The two commands of the README: `make demo` and `make test`. Each sets itself up from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed

.PHONY: demo test fuzz crash faults invariants setup lint typecheck compile gas bench clean

demo: setup
	$(BIN)/tchan demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist worksteal tests

# Hostile-input fuzzing (docs/fuzzing.md): TCHAN_FUZZ_EXAMPLES cases in total over every handler.
fuzz: setup
	TCHAN_FUZZ_EXAMPLES=$${TCHAN_FUZZ_EXAMPLES:-100000} $(BIN)/python -m pytest -n 2 -p no:cacheprovider tests/fuzz

setup: $(STAMP_PY) $(STAMP_NPM)

$(STAMP_PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Kill a broker or trader at every crash point, restart it, check nothing is lost (docs/crash-points.md).
crash: setup
	$(BIN)/python -m tests.crash

faults: setup
	$(BIN)/python -m pytest -n 2 tests/faults

# The contract properties and the adjudicator's invariant at full size (the normal suite runs a sample).
invariants: setup
	TCHAN_INVARIANT_EXAMPLES=$${TCHAN_INVARIANT_EXAMPLES:-100} TCHAN_PROPERTY_EXAMPLES=$${TCHAN_PROPERTY_EXAMPLES:-200} \
		$(BIN)/python -m pytest -n 2 tests/contracts/test_invariants.py tests/contracts/test_payout_property.py \
		tests/contracts/test_evidence_property.py

lint: setup
	$(BIN)/ruff check offchain tests
	$(BIN)/ruff format --check offchain tests

typecheck: setup
	$(BIN)/mypy offchain

compile: setup
	$(BIN)/tchan compile

gas: setup
	$(BIN)/tchan gas

# Every benchmark under bench/ and one table of the MISSION.md bars, met or missed (bench/results/all.json).
bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis
