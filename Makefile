# dsrlb: the two commands a user runs are `make demo` and `make test` (as root, from a fresh clone).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -q -p no:cacheprovider

.PHONY: test demo deps venv lint test-unit test-integration test-lab test-collection bench lab-up lab-down clean

deps:
	@bash scripts/install-deps

$(STAMP): pyproject.toml
	@bash scripts/install-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-unit: $(STAMP)
	$(PYTEST) tests/daemon/unit

test-integration: $(STAMP)
	$(PYTEST) tests/daemon/integration

test-lab: $(STAMP)
	$(PYTEST) tests/lab

test-collection: $(STAMP)
	bash scripts/collection-test
	$(PYTEST) tests/collection

test: lint test-unit test-integration test-lab test-collection

lab-up: $(STAMP)
	$(BIN)/dsrlb lab up

lab-down: $(STAMP)
	$(BIN)/dsrlb lab down

bench: $(STAMP)
	$(BIN)/dsrlb bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info
