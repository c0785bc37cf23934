# Set-up is part of every target: the first `make demo` or `make test` creates .venv and installs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU build (2.13.0); installing it first keeps pip from choosing a CUDA wheel.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/weightdb demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Every suite by default; `make bench SUITES="scale budgets"` for some. Quick results go to
# benchmarks/results/quick, beside the full ones.
SUITES ?=

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(SUITES)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick $(SUITES)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
