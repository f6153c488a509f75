# dsrlb: the two commands a user runs are `make demo` and `make test` (as root, from a fresh clone).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
# `upgrade` and `rollout` run inside `failover` (its verify imports theirs, on the same converged pair).
SCENARIOS := default target balancer failover ecmp

.PHONY: check test demo deps venv lint test-contract test-collection-unit lint-ansible test-unit test-integration test-lab test-collection test-fleet \
	test-ha test-deploy test-molecule bench lab-up lab-down clean collection

deps:
	@bash scripts/install-deps

# dsrlb (src/, what runs on a balancer) and dsrlb-tools (tools/: lab, bench, deploy), both editable.
$(STAMP): pyproject.toml tools/pyproject.toml scripts/awx-collection
	@bash scripts/install-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q -e './tools[dev]'
	$(BIN)/python scripts/awx-collection
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-unit: $(STAMP)
	$(PYTEST) tests/daemon/unit

# The collection's unit tests as plain pytest (ansible-test units runs them again in test-collection).
test-collection-unit: $(STAMP)
	PYTHONPATH=collections $(PYTEST) tests/unit

# What the daemon and the collection must agree on: config writers, vocabulary.
test-contract: $(STAMP)
	PYTHONPATH=collections $(PYTEST) tests/contract

# The fast lane: no root, no namespaces, under 2 minutes; `make test` runs it first.
check: lint test-unit test-collection-unit test-contract

test-integration: $(STAMP)
	$(PYTEST) tests/daemon/integration
	DSRLB_FUZZ_FRAMES=1000000 $(PYTEST) tests/daemon/unit/test_forwarder.py -k fuzzed

test-lab: $(STAMP)
	$(PYTEST) tests/lab

# The Galaxy artifact, self-sufficient: the daemon's wheel inside (prints dist/dsrlb-fleet-VERSION.tar.gz).
collection: $(STAMP)
	bash scripts/collection-build dist

# ansible-test, ansible-doc, and the artifact installed from an empty collections path (test_artifact.py).
test-collection: $(STAMP)
	bash scripts/collection-test
	$(PYTEST) tests/collection

lint-ansible: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint roles/ playbooks/ site.yml molecule/

test-fleet: $(STAMP)
	$(PYTEST) tests/fleet
	$(MAKE) --no-print-directory test-molecule

# Every scenario from a clean lab (each one destroys it first and after, also on failure), timed.
test-molecule: $(STAMP)
	@for s in $(SCENARIOS); do start=$$(date +%s); \
	  PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/molecule test -s $$s || exit 1; \
	  echo "molecule scenario $$s: passed in $$(( $$(date +%s) - start )) s"; \
	done

test-ha: $(STAMP)
	$(PYTEST) -s tests/ha

test-deploy: $(STAMP)
	$(PYTEST) tests/deploy

test: check lint-ansible test-integration test-lab test-collection test-fleet test-ha test-deploy

demo: $(STAMP)
	$(BIN)/python scripts/demo

lab-up: $(STAMP)
	$(BIN)/dsrlb lab up

lab-down: $(STAMP)
	$(BIN)/dsrlb lab down

bench: $(STAMP)
	$(BIN)/dsrlb bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info tools/build tools/src/*.egg-info roles/balancer/files/dsrlb-*.whl
