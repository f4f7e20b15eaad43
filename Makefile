# poselab: `make book` renders the book, `make test` runs every test (both set up .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.poselab-installed
# The CI machine has 2 cores; pinning the thread count keeps CPU results bitwise reproducible
# (nbval references were generated with it).
THREADS ?= 2
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)
# plotly.js inline in executed notebooks: figures render in the HTML with no network.
export PLOTLY_RENDERER := plotly_mimetype+notebook
PYTEST_ARGS ?=

.PHONY: book test test-kernels setup clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch (asked for by any package) pulls the multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install -e . --no-deps
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The kernel-independent nbval cells and the trained-number regression tests under every
# ATEN_CPU_CAPABILITY x thread count this CPU has, each with its own render cache.
test-kernels: $(STAMP)
	set -e; for setting in $$($(BIN)/python -m poselab regression --list-settings); do \
	  cap=$${setting%:*}; threads=$${setting#*:}; echo "== ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads"; \
	  ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads MKL_NUM_THREADS=$$threads \
	  POSELAB_CACHE_DIR=$(CURDIR)/_build/cache-$$cap-$$threads \
	  $(BIN)/python -m pytest tests/nbval tests/test_regression.py $(PYTEST_ARGS); \
	done

book: $(STAMP)
	$(BIN)/python -m poselab book --profile book
	@echo "Book: $(CURDIR)/_build/html/index.html"

clean:
	rm -rf _build .pytest_cache
