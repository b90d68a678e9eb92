# The study's two commands: `make study` (run every chapter with the default params and build the book) and
# `make test` (the test suite). Both create the environment in .venv/ first if it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/default.yaml
PYTEST_ARGS ?=

.PHONY: study test test-quick venv lint bench lab clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/python -c "from taskstudy.book.pipeline import ensure_kernel; ensure_kernel()"
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	$(BIN)/taskstudy run --params $(PARAMS)
	$(BIN)/taskstudy book

test: $(STAMP)   # on one worker per core (pytest-xdist); `pytest -n 0` runs it in one process
	$(BIN)/python -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

test-quick: $(STAMP)   # unit tests only: no end-to-end pipeline, browser, reliability or benchmark runs
	$(BIN)/python -m pytest -n auto --dist loadgroup -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --params $(PARAMS)

lint: $(STAMP)
	$(BIN)/ruff check .

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	$(BIN)/taskstudy clean
