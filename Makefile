# iceOS developer commands. `make run` brings the platform up; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup proto proto-check proto-breaking run test migrate-sql bench bench-registry bench-sandbox bench-runs clean

help:
	@echo "make setup        create .venv and install iceos, iceos-proto and iceos-client (editable)"
	@echo "make run          start the whole platform (Postgres, Redis, services, Envoy on :8080)"
	@echo "make test         run the test suite against real Postgres, Redis, services and Envoy"
	@echo "make proto        regenerate gen/ from proto/ (offline)"
	@echo "make proto-check  buf lint + format check + fail if regeneration changes gen/"
	@echo "make proto-breaking  buf breaking against main (BASE=<ref> to choose)"
	@echo "make migrate-sql  print the migrations as SQL for a DBA (Alembic offline mode)"
	@echo "make bench-edge   edge overhead: latency and throughput, direct vs through Envoy"
	@echo "make bench        run the benchmarks in bench/ (tables + JSON in bench/results/)"
	@echo "make bench-registry  blueprint validation time by size; Get/List latency and throughput"
	@echo "make bench-sandbox  sandbox latency and throughput (bench/results/sandbox.json)"
	@echo "make bench-runs   the run engine against asyncio, DBOS and LangGraph (bench/runs)"

$(STAMP): pyproject.toml gen/python/pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e gen/python -e clients/python -e '.[local,dev]'
	touch $(STAMP)

setup: $(STAMP)

proto: $(STAMP)
	$(BIN)/python tools/third_party_protos.py
	rm -rf gen/python/iceos
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/buf generate 2> >(grep -v "^Writing mypy" >&2)
	$(BIN)/python tools/finish_gen.py
	$(BIN)/buf build --as-file-descriptor-set -o gen/descriptor.binpb

proto-check: $(STAMP)
	$(BIN)/python tools/third_party_protos.py
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code proto
	$(MAKE) --no-print-directory proto
	@git diff --exit-code --stat -- gen/ && test -z "$$(git status --porcelain -- gen/)" \
	  || (echo "gen/ is stale: run 'make proto' and commit the result" >&2; exit 1)

# buf breaking against BASE (default main). The Google protos are not in git, so the baseline
# is built from `git archive` plus the same third-party copy.
BASE ?= main
proto-breaking: $(STAMP)
	$(BIN)/python tools/third_party_protos.py
	@base=$$(mktemp -d) && trap 'rm -rf "$$base"' EXIT && \
	  git archive $(BASE) proto buf.yaml | tar -x -C "$$base" && \
	  mkdir -p "$$base/.build" && cp -r .build/third_party "$$base/.build/" && \
	  $(BIN)/buf breaking --against "$$base" && echo "no breaking changes against $(BASE)"

run: $(STAMP)
	$(BIN)/python -m services.stack

test: $(STAMP)
	$(BIN)/python -m pytest

migrate-sql: $(STAMP)
	@$(BIN)/python -m services.common.migrate --sql

.PHONY: bench-edge
bench-edge: $(STAMP)
	$(BIN)/python -m bench edge

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

bench-registry: $(STAMP)
	$(BIN)/python -m bench registry

bench-sandbox: $(STAMP)
	$(BIN)/python -m bench sandbox

bench-runs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench runs

clean:
	rm -rf .build .pytest_cache
