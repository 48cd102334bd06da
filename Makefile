# How a person drives the project. `make run` and `make test` install what they need into .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

FORCE:
.PHONY: FORCE help setup run test test-fast round rounds report compare defaults bench gpu-smoke clean-cache

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# llama.cpp is compiled for an instruction set named here, not for "whatever CPU built it" (-march=native): a
# native wheel reused on an older CPU dies with SIGILL, and a native build on a 4th-gen Xeon compiles llama.cpp's
# AMX kernels, which segfault on Q4_K weights (docs/cpu.md). The default is x86-64-v3 (AVX2, FMA, F16C, BMI2:
# every x86-64 CPU since ~2015), which keeps llama.cpp's AVX2 weight repacking. Override, e.g.:
#   make setup LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON"    this CPU only (fastest here; AMX is then switched off at load)
#   make setup LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"      NVIDIA GPU offload (n_gpu_layers)
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
# The built wheel is kept per (version, flags) outside the clone, so fresh clones reuse it and a flag change rebuilds;
# pip's own wheel cache is bypassed because it keys on the sdist alone, not on the flags it was built with.
LLAMA_WHEELS := $(HOME)/.cache/teachloop/llama-cpp-wheels/$(shell printf '%s %s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)

# The flags a .venv was built with; a change rewrites this file, which re-runs set-up (pass or export the same
# LLAMA_CMAKE_ARGS on later make calls to keep a non-default build).
LLAMA_FLAGS := $(VENV)/.llama-cmake-args
$(LLAMA_FLAGS): FORCE
	@mkdir -p $(VENV); printf '%s %s\n' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' | cmp -s - $@ || \
	  printf '%s %s\n' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' > $@

$(STAMP): requirements.txt requirements.lock pyproject.toml $(LLAMA_FLAGS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0  # the local CPU wheel first: an unpinned torch pulls CUDA packages
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) with $(LLAMA_CMAKE_ARGS) (~8 min, once per flag set)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
	    -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION); }
	$(BIN)/pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install -q -r requirements.txt -c requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m teachloop.student.llamacpp_src  # llama.cpp's converters from the pinned sdist, into .cache/
	touch $(STAMP)

setup: $(STAMP)  ## create/update .venv (a no-op when up to date)

run: $(STAMP)  ## run the whole pipeline on the embedded default (dvc repro), then where the time went
	@start=$$(date +%Y-%m-%dT%H:%M:%S); dvc repro && { teachloop times --since $$start || true; }
	@echo "report: reports/report.md   metrics: dvc metrics show   plots: dvc plots show   times: teachloop times"

test: $(STAMP)  ## the full test suite (unit + real-model + end-to-end smoke run)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## unit tests only (no real model)
	$(BIN)/python -m pytest -q -m "not slow"

round: $(STAMP)  ## bring CITING rounds 1..N up to date: make round N=3
	@test -n "$(N)" || { echo "usage: make round N=3"; exit 2; }
	teachloop round $(N)

rounds: $(STAMP)  ## declare CITING rounds 1..R in params.yaml: make rounds R=5
	@test -n "$(R)" || { echo "usage: make rounds R=5"; exit 2; }
	teachloop set-rounds $(R)

report: $(STAMP)  ## re-run judging/report stages that are out of date
	dvc repro report

compare: $(STAMP)  ## leaderboard of the workspace and every `dvc exp` experiment, with the params that differ
	teachloop compare

defaults:  ## make the current params.yaml the committed defaults the report's settings page compares with
	{ echo "# The committed defaults: reports/details/settings.md lists the params of a run that differ from these."; \
	  echo "# A copy of params.yaml as committed (make defaults); an experiment changes params.yaml, never this."; \
	  grep -v '^# ' params.yaml; } > params.defaults.yaml

bench: $(STAMP)  ## throughput benchmarks: each ratio against its baseline in the same session, to metrics/bench/
	$(BIN)/dvc repro base  # every bench runs the packaged model or its HF twin
	$(BIN)/pip install -q --no-deps -r requirements-bench.txt  # TRL, the training anchor: a bench extra only
	$(BIN)/python benchmarks/bench_training.py --out metrics/bench/training.json
	$(BIN)/python benchmarks/bench_candidates.py --gguf models/base/model.gguf --out metrics/bench/candidates.json
	$(BIN)/python benchmarks/bench_logprobs.py --out metrics/bench/logprobs.json
	$(BIN)/python benchmarks/bench_concurrency.py --out metrics/bench/concurrency.json
	$(BIN)/python benchmarks/bench_judge_server.py --gguf models/base/model.gguf --out metrics/bench/judge_server.json

gpu-smoke: $(STAMP)  ## every method, a reference score and a served answer on CUDA with a tiny model (docs/paper-scale.md)
	$(BIN)/python benchmarks/gpu_smoke.py --device cuda

clean-cache:  ## drop the LLM call cache (.cache/llm); the next run repeats every call
	rm -rf .cache/llm
