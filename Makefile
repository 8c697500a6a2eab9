# radiospine: the user's verbs. `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DATA and WORK default to the demo's synthetic set; point them at the real Kaggle folder to run on it.
DATA ?= demo/data
WORK ?= demo/work
CONFIG ?= configs/default.yaml
JOBS ?= 2
PYTEST_ARGS ?=

.PHONY: install test demo synth features train-gbm predict report report-check chromium bench clean help

help:
	@echo "make demo | test | install | synth | features | train-gbm | predict | report | bench | clean"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build (see DESIGN.md section 5); an unpinned torch pulls CUDA.
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Headless Chromium for the report's browser check: Debian's package, installed when missing (as root, or with sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium)

# Render a small synthetic report and open it in headless Chromium: sections shown, no console errors, no network.
report-check: $(STAMP) chromium
	$(PY) -m pytest tests/test_report.py -m browser $(PYTEST_ARGS)

clean:
	rm -rf demo build dist *.egg-info .pytest_cache
