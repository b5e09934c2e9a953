# One entry point for every task. `make setup` is implied by the others: it (re)creates .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# checkov pins dependencies of its own that must not constrain the project's: it gets a virtualenv of its own.
CHECKOV_VENV := .venv-checkov
STACK_NAME ?= avatar-pipeline
# SAM CLI lives in its own virtualenv: it pins boto3, pydantic and click to versions other than the project's.
SAM_CLI_VERSION ?= 1.170.0
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.aws-sam-cli-$(SAM_CLI_VERSION)
BUILD_DIR := .aws-sam/build
export SAM_CLI_TELEMETRY := 0

.PHONY: help demo up chaos batch bench schemas setup test test-unit test-template test-handlers test-e2e test-chaos test-tooling lint format typecheck hooks cfn-lint checkov iac-check build check-build validate rehearse deploy clean
CHAOS_PAIRS ?= 200
CHAOS_SEED ?= 1
BATCH_PAIRS ?= 120
BATCH_TIME_FACTOR ?= 20

help:
	@echo "make demo       run one sample job through the whole pipeline on this machine; prints the MP4's path"
	@echo "make up         run the local stack in the foreground (writes .local/stack.json); Ctrl-C stops it"
	@echo "make chaos      $(CHAOS_PAIRS) pairs through the local stack under injected faults; prints the harm done (all 0)"
	@echo "make batch      $(BATCH_PAIRS) pairs at once, more than WaveSpeed's quota, at its limits with time $(BATCH_TIME_FACTOR)x; prints the figures"
	@echo "make bench      performance against baselines (cold start, copy, poller, batch, CPU, cost); writes docs/performance.md"
	@echo "make schemas    write the JSON Schema of the task state change events to schemas/ (a test checks it is current)"
	@echo "make setup      create .venv with everything needed to develop and test"
	@echo "make test       run the whole test suite: every tier below"
	@echo "make test-unit      the domain and its adapters, on in-memory fakes and moto (tests/unit)"
	@echo "make test-template  template.yaml as SAM and CloudFormation read it (tests/template)"
	@echo "make test-handlers  each Lambda handler with real-shaped events against moto (tests/handlers)"
	@echo "make test-e2e       jobs through the local stack (tests/e2e)"
	@echo "make test-chaos     pairs through the local stack under injected faults, CI-sized (tests/chaos)"
	@echo "make test-tooling   the local twin, the simulators, the benchmark, the deploy checks, the dev gates (tests/tooling)"
	@echo "make lint       ruff lint + format check, and iac-check"
	@echo "make iac-check  template.yaml through cfn-lint (with the serverless rules) and checkov"
	@echo "make format     apply ruff formatting and safe fixes"
	@echo "make typecheck  mypy (strict) over the layer and the handlers"
	@echo "make hooks      install the pre-commit hooks: the code checks CI runs, before each commit"
	@echo "make build      sam build into $(BUILD_DIR) (no Docker: the layer's wheels are fetched for arm64 / CPython 3.13, and compiled to 3.13 bytecode with node)"
	@echo "make check-build  import every handler from $(BUILD_DIR) only; check its compiled code is for the target"
	@echo "make validate   sam validate --lint on template.yaml"
	@echo "make rehearse   create the SAM-transformed template as a stack in moto's CloudFormation; check IAM grants on \"*\""
	@echo "make deploy     build, check-build, then sam deploy --guided (STACK_NAME=$(STACK_NAME))"

$(BIN)/activate: requirements-dev.txt requirements-sam-translator.txt layers/shared/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-sam-translator.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/activate

setup: $(BIN)/activate

demo: setup
	$(BIN)/python -m avatar_local demo

up: setup
	$(BIN)/python -m avatar_local up

chaos: setup
	$(BIN)/python -m avatar_local chaos --pairs $(CHAOS_PAIRS) --seed $(CHAOS_SEED)

batch: setup
	$(BIN)/python -m avatar_local batch --pairs $(BATCH_PAIRS) --time-factor $(BATCH_TIME_FACTOR)

schemas: setup
	$(BIN)/python -c 'import json; from avatar_pipeline.domain.events import event_schema; print(json.dumps(event_schema(), indent=2))' > schemas/avatar-task-state-change.schema.json

bench: setup
	$(BIN)/python -m avatar_local.bench

# One pytest over tests/ (pyproject's testpaths): every tier, each of which has its own target.
test: setup
	$(BIN)/pytest

test-unit: setup
	$(BIN)/pytest tests/unit

test-template: setup
	$(BIN)/pytest tests/template

test-handlers: setup
	$(BIN)/pytest tests/handlers

test-e2e: setup
	$(BIN)/pytest tests/e2e

test-chaos: setup
	$(BIN)/pytest tests/chaos

test-tooling: setup
	$(BIN)/pytest tests/tooling

lint: setup iac-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

iac-check: cfn-lint checkov

# The serverless rules (cfn-lint-serverless) run with cfn-lint's own; -a takes several values, so the template first.
cfn-lint: setup
	$(BIN)/cfn-lint template.yaml -a cfn_lint_serverless.rules

$(CHECKOV_VENV)/bin/checkov: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

# --skip-download: nothing is fetched from the vendor's platform (CI reaches package registries only).
checkov: $(CHECKOV_VENV)/bin/checkov
	$(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation --quiet --compact --skip-download

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup
	$(BIN)/mypy layers/shared/avatar_pipeline functions

hooks: setup
	$(BIN)/pre-commit install

$(SAM_STAMP):
	rm -rf $(SAM_VENV)
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==$(SAM_CLI_VERSION)
	touch $@

build: $(SAM_STAMP)
	$(SAM) build --template-file template.yaml --build-dir $(BUILD_DIR)

check-build: setup
	$(BIN)/python -m avatar_local.deploy_checks.build_check $(BUILD_DIR)

validate: $(SAM_STAMP)
	$(SAM) validate --lint --template-file template.yaml

rehearse: setup
	$(BIN)/python -m avatar_local.deploy_checks.rehearsal

deploy: build
	$(BIN)/python -m avatar_local.deploy_checks.build_check $(BUILD_DIR)
	$(SAM) deploy --template-file $(BUILD_DIR)/template.yaml --guided --stack-name $(STACK_NAME) --capabilities CAPABILITY_IAM

clean:
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache layers/shared/bytecode-compiler/node_modules
