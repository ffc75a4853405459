# tokenwise: two commands for a newcomer.
#   make demo   installs into .venv and runs `tokenwise demo` on the built-in models
#   make test   installs into .venv (with the dev extras) and runs the test suite
# Torch: reused from the system Python when it has one; otherwise torch==2.13.0 is installed
# into .venv (the CPU wheel on our machines).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install dev lint bench models clean

demo: install
	$(BIN)/tokenwise demo

test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

$(BIN)/python:
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "torch found in $(PYTHON): reusing it (venv with system site-packages)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

$(VENV)/.torch: | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e ".[dev]"
	@touch $(VENV)/.installed $@

lint: dev
	$(BIN)/ruff check src tests benchmarks

bench: dev
	$(BIN)/pip install -e ".[dev,bench]"
	$(BIN)/python benchmarks/score_throughput.py
	$(BIN)/python benchmarks/builtin_models.py
	$(BIN)/python benchmarks/sampler_cost.py
	$(BIN)/python benchmarks/generate_throughput.py
	$(BIN)/python benchmarks/ead_sweep.py --png docs/ead_sweep.png

# Retrain the shipped built-in models (deterministic from the seed; ~20 min on 2 cores).
models: install
	$(BIN)/tokenwise testbed train --out src/tokenwise/models/builtin

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache tokenwise-demo
