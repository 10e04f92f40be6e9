# Two entry points: `make demo` (the embedded default, end to end) and `make test`.
# Both create .venv and install what they need; torch==2.13.0 (CPU build) is installed
# explicitly first when torch is missing, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test-libs
# models the Harmonizer is tested on; --no-deps: they would pull a CUDA torch/torchvision
TEST_LIBS := open_clip_torch==3.3.0 timm==1.0.31 transformers==5.24.0 safetensors regex \
	ftfy wcwidth
export PYTHONHASHSEED := 0

.PHONY: venv demo test test-all lint bench table1 table2 table3 clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) Makefile
	$(PY) -m pip install -q --no-deps $(TEST_LIBS)
	touch $(TEST_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: $(TEST_STAMP) lint
	GRADHARMONY_REQUIRE_LIBS=1 $(VENV)/bin/pytest -q -m "not slow" src tests

test-all: $(TEST_STAMP) lint
	GRADHARMONY_REQUIRE_LIBS=1 $(VENV)/bin/pytest -q src tests

demo: $(STAMP)
	$(VENV)/bin/gradharmony demo

bench: $(TEST_STAMP)
	$(PY) benchmarks/harmonizer_overhead.py
	$(PY) benchmarks/harmonizer_models.py

table1: $(STAMP)
	$(VENV)/bin/gradharmony experiment table1 --out runs/table1 --data data/study --make-data --finetune baseline,both

table2: $(STAMP)
	$(VENV)/bin/gradharmony experiment table2 --out runs/table2 --data data/study --make-data && $(VENV)/bin/gradharmony experiment gamma --out runs/gamma --data data/study

table3: $(STAMP)
	$(VENV)/bin/gradharmony experiment table3 --out runs/table3 --data data/study --make-data

clean:
	rm -rf $(VENV) runs data build *.egg-info src/*.egg-info
