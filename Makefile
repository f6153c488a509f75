# dsrlb: the two commands a user runs are `make demo` and `make test` (as root, from a fresh clone).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
SCENARIOS := default target balancer failover rollout

.PHONY: test demo deps venv lint lint-ansible test-unit test-integration test-lab test-collection test-fleet \
	test-ha test-deploy test-molecule bench lab-up lab-down clean

deps:
	@bash scripts/install-deps

$(STAMP): pyproject.toml scripts/awx-collection
	@bash scripts/install-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python scripts/awx-collection
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

test: lint lint-ansible test-unit test-integration test-lab test-collection test-fleet test-ha test-deploy

demo: $(STAMP)
	$(BIN)/python scripts/demo

lab-up: $(STAMP)
	$(BIN)/dsrlb lab up

lab-down: $(STAMP)
	$(BIN)/dsrlb lab down

bench: $(STAMP)
	$(BIN)/dsrlb bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info
