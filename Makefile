SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo stack deps binaries prometheus unit chaos crds stack-down clean help

help:
	@echo "make test   - set everything up (Python deps, cluster binaries, Prometheus) and run every test"
	@echo "make demo   - two real releases on the local stack: one promoted, one rolled back by the judge; writes a PNG"
	@echo "make stack  - only the local stack (cluster + Prometheus), kept until Ctrl-C"
	@echo "make unit   - only the fast unit tests"
	@echo "make chaos  - only the chaos suite: 32 rollouts with the operator killed at random, components stopped mid-step"

## test: set-up included, then every test, in a network namespace of their own (hack/in-netns.sh:
## simulated pods' processes listen on pod IPs); fails if any process of the stack survives.
test: deps binaries prometheus
	hack/in-netns.sh $(PY) -m pytest $(PYTEST_ARGS) tests
	hack/check-no-leftovers.sh

unit: deps
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

## chaos: only the chaos suite (part of `make test` too); CANARIST_CHAOS_SEED=<seed> replays a run.
chaos: deps binaries prometheus
	hack/in-netns.sh $(PY) -m pytest -s $(PYTEST_ARGS) tests/e2e/test_chaos.py
	hack/check-no-leftovers.sh $${CANARIST_TEST_STACK:-canarist-test}

## demo and stack run in a network namespace of their own too; they print how to enter it (nsenter).
demo: deps binaries prometheus
	hack/in-netns.sh $(PY) -m canarist.devstack.demo

stack: deps binaries prometheus
	hack/in-netns.sh $(PY) -m canarist.devstack up --name canarist-stack

deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "canarist needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## crds: regenerate the CRD from the pydantic models, and its copy in the Helm chart.
crds: deps
	$(PY) -m canarist.api.crd > crds/canarist.dev_canaryreleases.yaml
	cp crds/canarist.dev_canaryreleases.yaml charts/canarist/crds/

binaries:
	hack/build-binaries.sh >/dev/null

prometheus:
	hack/install-prometheus.sh

stack-down: deps
	$(PY) -m canarist.devstack down --name canarist-demo
	$(PY) -m canarist.devstack down --name canarist-stack
	$(PY) -m canarist.devstack down --name canarist-test

clean:
	rm -rf $(VENV) .pytest_cache
