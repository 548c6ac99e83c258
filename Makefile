# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# The CPU build; installed before anything that depends on torch so pip never pulls a CUDA one.
TORCH  ?= torch==2.13.0

.PHONY: install lint typecheck pytest docs test bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[dev,peft]'
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check tenantlora tests benchmarks examples
	$(BIN)/ruff format --check tenantlora tests benchmarks examples

typecheck: install
	$(BIN)/mypy --strict tenantlora

pytest: install
	$(BIN)/pytest -q

docs: install
	$(BIN)/mkdocs build --strict --quiet

test: lint typecheck pytest docs

# The main job: the whole per-tenant loop on the embedded default (local PEFT backend, SQLite
# registry, a toy base model built offline). Built artifacts are reused on the next run.
demo: install
	$(BIN)/python -m tenantlora.demo

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
