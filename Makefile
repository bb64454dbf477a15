# segkit: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23" "setuptools>=64" wheel
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install segkit editable with the dev extra (no-op when done)

train: install  ## train on the bundled synthetic default (override with ARGS="model=fcn8_vgg ...")
	$(PY) src/train.py $(ARGS)

test: install  ## run the test suite (the command CI runs)
	$(PY) -m pytest -q $(ARGS)

lint: install  ## ruff check + format check
	$(PY) -m ruff check src scripts tests
	$(PY) -m ruff format --check src scripts tests

format: install  ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix src scripts tests
	$(PY) -m ruff format src scripts tests

clean:  ## remove logs and caches (keeps .venv)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
