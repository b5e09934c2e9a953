# One entry point for every task. `make setup` is implied by the others: it (re)creates .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# checkov pins dependencies of its own that must not constrain the project's: it gets a virtualenv of its own.
CHECKOV_VENV := .venv-checkov
STACK_NAME ?= avatar-pipeline

.PHONY: help demo up chaos setup test lint format typecheck cfn-lint checkov iac-check build deploy clean
CHAOS_PAIRS ?= 200
CHAOS_SEED ?= 1

help:
	@echo "make demo       run one sample job through the whole pipeline on this machine; prints the MP4's path"
	@echo "make up         run the local stack in the foreground (writes .local/stack.json); Ctrl-C stops it"
	@echo "make chaos      $(CHAOS_PAIRS) pairs through the local stack under injected faults; prints the harm done (all 0)"
	@echo "make setup      create .venv with everything needed to develop and test"
	@echo "make test       run the whole test suite (unit, handler, template checks)"
	@echo "make lint       ruff lint + format check, and iac-check"
	@echo "make iac-check  template.yaml through cfn-lint (with the serverless rules) and checkov"
	@echo "make format     apply ruff formatting and safe fixes"
	@echo "make typecheck  mypy over the layer and the handlers"
	@echo "make build      sam build (no Docker: the layer is built for arm64 by its Makefile)"
	@echo "make deploy     sam deploy --guided (STACK_NAME=$(STACK_NAME))"

$(BIN)/activate: requirements-dev.txt layers/shared/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/activate

setup: $(BIN)/activate

demo: setup
	$(BIN)/python -m avatar_local demo

up: setup
	$(BIN)/python -m avatar_local up

chaos: setup
	$(BIN)/python -m avatar_local chaos --pairs $(CHAOS_PAIRS) --seed $(CHAOS_SEED)

test: setup
	$(BIN)/pytest

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

$(BIN)/sam: setup
	$(BIN)/pip install --quiet aws-sam-cli

build: $(BIN)/sam
	$(BIN)/sam build --template-file template.yaml

deploy: build
	$(BIN)/sam deploy --guided --stack-name $(STACK_NAME) --capabilities CAPABILITY_IAM

clean:
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache
