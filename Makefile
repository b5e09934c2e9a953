# One entry point for every task. `make setup` is implied by the others: it (re)creates .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK_NAME ?= avatar-pipeline

.PHONY: help demo up chaos bench setup test lint format typecheck cfn-lint build deploy clean
CHAOS_PAIRS ?= 200
CHAOS_SEED ?= 1

help:
	@echo "make demo       run one sample job through the whole pipeline on this machine; prints the MP4's path"
	@echo "make up         run the local stack in the foreground (writes .local/stack.json); Ctrl-C stops it"
	@echo "make chaos      $(CHAOS_PAIRS) pairs through the local stack under injected faults; prints the harm done (all 0)"
	@echo "make bench      performance against baselines (cold start, copy, poller, burst, CPU, cost); writes docs/performance.md"
	@echo "make setup      create .venv with everything needed to develop and test"
	@echo "make test       run the whole test suite (unit, handler, template checks)"
	@echo "make lint       ruff lint + format check, cfn-lint on template.yaml"
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

bench: setup
	$(BIN)/python -m avatar_local.bench

test: setup
	$(BIN)/pytest

lint: setup cfn-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

cfn-lint: setup
	$(BIN)/cfn-lint template.yaml

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
