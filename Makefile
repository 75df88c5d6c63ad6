# make demo: set up and run extraction end to end on sample videos.
# make test: set up and run lint, type checks and the test suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $@

demo: $(STAMP)
	$(PY) -m scripts.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP) lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench.extract
