# Two entry points: `make repro` (set up + dvc repro on the embedded synthetic data)
# and `make test` (set up + test suite). The venv step is shared and skipped when up to date.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline HTML template for `dvc plots show/diff` (vega JS inlined; .dvc/config points
# plots.html_template at it; gitignored, ~0.9 MB).
PLOTS_HTML := .dvc/plots/offline.html
# The environment is locked: requirements/lock.txt pins every package (all transitive
# dependencies of pyproject.toml's, with the test extra) to an exact version and its sha256
# hashes. torch (CPU build) and fastmri (--no-deps: it declares torchvision/pytorch-lightning,
# which we do not use) are pinned here. `make lock` regenerates the lock after a change of
# pyproject.toml's dependencies (existing pins are kept where they still fit; `make lock
# LOCK_FLAGS=--upgrade` moves everything to the newest versions).
LOCK        := requirements/lock.txt
TORCH       := 2.13.0
FASTMRI     := 0.3.0
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
# where pip finds the torch CPU wheel (this project's machines: pip's find-links)
TORCH_WHEELS ?= /opt/wheels
# The torch build is chosen here, not left to PyPI's default (a CUDA build of several GB on a
# normal Linux machine): set TORCH_INDEX to PyTorch's CPU wheel index there, e.g.
# `make setup TORCH_INDEX=<cpu index url>`; empty = pip's configured index (this project's machines
# serve the CPU build from it).
TORCH_INDEX ?=
LOCK_FLAGS  ?=

.PHONY: setup repro test bench docs clean-venv lock

setup: $(STAMP) $(PLOTS_HTML)

$(STAMP): pyproject.toml $(LOCK) Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q torch==$(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --no-deps fastmri==$(FASTMRI)
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Regenerate the lock with uv (installed into the venv) for CPython 3.11 on x86-64 Linux.
lock:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	if [ -f $(LOCK) ]; then cp $(LOCK) $(LOCK).new; fi   # keep existing pins as preferences
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--constraint requirements/torch-cpu.txt --no-emit-package torch \
		--find-links $(TORCH_WHEELS) --index-strategy unsafe-best-match \
		--no-header --quiet $(LOCK_FLAGS) --output-file $(LOCK).new
	{ echo "# Locked environment (make lock): every package but torch and fastmri, which the"; \
	  echo "# Makefile installs first (torch $(TORCH) CPU build, fastmri $(FASTMRI) --no-deps)."; \
	  echo "# CPython 3.11, x86-64 Linux. Install: pip install -r $(LOCK)"; \
	  cat $(LOCK).new; } > $(LOCK)
	rm -f $(LOCK).new

$(PLOTS_HTML): $(STAMP) tools/offline_plots.py
	$(BIN)/python tools/offline_plots.py $@
	touch $@

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@$(BIN)/roirecon summary
	@$(BIN)/python tools/render_docs.py --check || true    # names the README/docs tables these reports change

test: setup
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/undersample_throughput.py

# the generated tables of README.md and docs/ (defaults, results, benchmarks) from params.yaml and the reports, after a dvc repro
# or a params change; commit them with the reports (tests/test_docs.py fails until then)
docs: setup
	$(BIN)/python tools/render_docs.py --write

clean-venv:
	rm -rf $(VENV)
