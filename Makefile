# `make run` and `make test` work on a fresh machine: they create .venv and install what is
# missing; a second run only re-installs when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint fmt bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# A router on http://127.0.0.1:32768 with one local node serving the small bundled model.
run: setup
	exec $(BIN)/llmlb up

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: setup
	$(BIN)/python bench/node_throughput.py
	$(BIN)/python bench/router_overhead.py
	$(BIN)/python bench/distribution.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
