# Two entry points: `make repro` (set up + dvc repro on the embedded synthetic data)
# and `make test` (set up + test suite). The venv step is shared and skipped when up to date.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline HTML template for `dvc plots show/diff` (vega JS inlined; .dvc/config points
# plots.html_template at it; gitignored, ~0.9 MB).
PLOTS_HTML := .dvc/plots/offline.html

.PHONY: setup repro test bench clean-venv

setup: $(STAMP) $(PLOTS_HTML)

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps fastmri==0.3.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

$(PLOTS_HTML): $(STAMP) tools/offline_plots.py
	$(BIN)/python tools/offline_plots.py $@
	touch $@

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@$(BIN)/roirecon summary

test: setup
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/undersample_throughput.py

clean-venv:
	rm -rf $(VENV)
