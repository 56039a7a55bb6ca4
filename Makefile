# iri-alignment: every entry point a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
UV_VERSION := 0.13.9

.PHONY: help setup test demo bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv from the pinned lock (about 1-3 minutes, 6 GB)
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

test: setup  ## run the test suite (installs first)
	$(BIN)/pytest

demo: setup  ## run the embedded study on this CPU, no network
	@echo "The study DAG is not wired yet: this demo checks params, generates the embedded dataset and lists the models."
	$(BIN)/iri params check params.yaml
	$(BIN)/iri data prepare --dataset shapes --profile embedded
	$(BIN)/iri models describe --dataset shapes --arch resnet18 --width 0.25

bench: setup  ## throughput benchmarks on this machine
	$(BIN)/python -m iri_alignment.bench

lock:  ## re-resolve requirements.in into requirements.lock (then update environment.yml pins)
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.lock

clean:  ## remove caches (keeps .venv, data and results)
	rm -rf .pytest_cache .snakemake build src/*.egg-info
