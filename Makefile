# iri-alignment: every entry point a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-bytecode-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
UV_VERSION := 0.13.9

.PHONY: help setup test demo calibrate readme bench lock vendor clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv from the pinned lock (about 1-3 minutes, 6 GB)
# --compile-bytecode: uv skips .pyc files by default, and where PYTHONDONTWRITEBYTECODE
# is set (as on this project's CI and dev machines) every process then recompiles
# torch and mlflow: measured ~15 s per `iri` call, i.e. minutes per DAG run.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

TEST_WORKERS ?= 2
test: setup  ## run the test suite (installs first); two pytest-xdist workers, one per test file at a time
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

demo: setup  ## run the embedded study on this CPU, no network (see README "Speed" for the time on 2 cores)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/iri workers run -- $(BIN)/snakemake --cores all --config profile=embedded
	$(BIN)/iri timings --results results --forked
	@echo "Tables:  $(CURDIR)/results/tables/  (summary.md, validity.md, timings.md, alignment_by_regularizer.md, significance.md, ...)"
	@echo "Figures: $(CURDIR)/results/figures/ (IRI grids in grids/, alignment plots)"
	@echo "Runs:    .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (URL of the score runs: README, Experiment tracking)"
	@echo "Survey:  .venv/bin/iri survey serve --study results/survey   (the human study of the demo's reg-free IRIs)"

readme: setup  ## copy the demo's summary and the calibration table into README.md (after make demo / make calibrate)
	$(BIN)/iri readme --readme README.md

CALIBRATE_PROFILE ?= embedded
calibrate: setup  ## train every model of a profile per seed and thread count, check its targets (embedded: about 70 minutes)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/iri calibrate --profile $(CALIBRATE_PROFILE) $(CALIBRATE_ARGS)

bench: setup  ## throughput benchmarks on this machine
	$(BIN)/python -m iri_alignment.bench $(BENCH_ARGS)

lock:  ## re-resolve requirements.in into requirements.lock (then update environment.yml pins)
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.lock

vendor:  ## re-copy jsPsych from the npm packages pinned in survey/frontend/package-lock.json (needs npm)
	cd src/iri_alignment/survey/frontend && npm ci --ignore-scripts --no-audit --no-fund
	$(BIN)/python -m iri_alignment.survey.vendor

clean:  ## remove caches (keeps .venv, data and results)
	rm -rf .pytest_cache .snakemake build src/*.egg-info
