# The two commands of the quick start: `make demo` and `make test`.
# Each creates .venv and installs the project into it on first use.
# `make demo LISTEN=127.0.0.1:0` serves the demo's web console on a free port (8787 is taken).
# `make bench BENCHMARKS="pending_scale peers"` runs only the benchmarks named.
PYTHON ?= python3
LISTEN ?= 127.0.0.1:8787
BENCHMARKS ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The agent-framework integrations the examples use (type-checked by lint, run by the tests).
$(BIN)/.integrations: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,integrations]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/humanlayer-async demo --listen $(LISTEN)

test: $(BIN)/.installed
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered

lint: $(BIN)/.integrations
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks $(BENCHMARKS)

docs: $(BIN)/.installed
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
