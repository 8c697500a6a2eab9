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

RS := $(VENV)/bin/radiospine
RUN_ARGS = --config $(CONFIG)
SUBMISSION ?= $(WORK)/submission.csv
REPORT ?= reports/demo
# The model bundle (export-model) and a PACS/CD export to grade with it (grade).
MODEL ?= $(WORK)/model
EXPORT ?= $(DATA)/test_images
GRADED ?= reports/graded

.PHONY: install test lint demo synth train-localizer features train-gbm predict score report report-check chromium \
	export-model grade bench bench-real clean help

help:
	@echo "make demo | test | install | synth | train-localizer | features | train-gbm | predict | score | report | export-model | grade | bench | bench-real | clean"
	@echo "DATA=$(DATA) WORK=$(WORK) CONFIG=$(CONFIG) JOBS=$(JOBS)"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build (docs/design.md section 12); an unpinned torch pulls CUDA.
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Lint first (configured in pyproject.toml), then the suite.
test: $(STAMP) chromium lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Headless Chromium for the report's browser check (tests/browser_check.py drives it with Playwright): Debian's
# package, installed when missing (as root, or with sudo); Playwright's own browser download is not used.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium)

# Render a small synthetic report and open it in headless Chromium: sections shown, no console errors, no network.
report-check: $(STAMP) chromium
	$(PY) -m pytest tests/test_report.py -m browser $(PYTEST_ARGS)

# --- the pipeline's stages (DATA, WORK, CONFIG and JOBS can be set on the command line) ---------------------
synth: $(STAMP)
	$(RS) synth --out $(DATA) --jobs $(JOBS) $(RUN_ARGS)

train-localizer: $(STAMP)
	$(RS) train-localizer --data $(DATA) --work $(WORK) --jobs $(JOBS) $(RUN_ARGS)

features: $(STAMP)
	$(RS) features --data $(DATA) --split train --work $(WORK) --jobs $(JOBS) $(RUN_ARGS)

train-gbm: $(STAMP)
	$(RS) train-gbm --data $(DATA) --work $(WORK) --jobs $(JOBS) $(RUN_ARGS)

predict: $(STAMP)
	$(RS) predict --data $(DATA) --split test --work $(WORK) --out $(SUBMISSION) --jobs $(JOBS) $(RUN_ARGS)

score: $(STAMP)
	$(RS) score --labels $(DATA)/truth/test_labels.csv --pred $(SUBMISSION)

report: $(STAMP)
	$(RS) report --data $(DATA) --work $(WORK) --out $(REPORT) $(RUN_ARGS)

# The trained work folder as one checksummed bundle, and an export (any folder of DICOM files) graded with it.
export-model: $(STAMP)
	$(RS) export-model --work $(WORK) --out $(MODEL) --overwrite $(RUN_ARGS)

grade: $(STAMP)
	$(RS) grade $(EXPORT) --model $(MODEL) --out $(GRADED) --overwrite --jobs $(JOBS)

# The whole pipeline on a small synthetic set: synth -> localiser -> features -> GBMs -> submission -> score -> report.
demo: CONFIG = configs/demo.yaml
demo: $(STAMP)
	@test -f $(DATA)/truth/manifest.json || $(MAKE) --no-print-directory synth CONFIG=$(CONFIG)
	@test -f $(WORK)/localizer/localizer.json || $(MAKE) --no-print-directory train-localizer CONFIG=$(CONFIG)
	$(MAKE) --no-print-directory train-gbm predict report CONFIG=$(CONFIG)
	@$(RS) demo-summary --data $(DATA) --submission $(SUBMISSION) --report $(REPORT)

# The whole pipeline on 200 + 100 synthetic studies at real image sizes (generated into BENCH_DATA the first time,
# about 10 GB), timed and scored, and the feature stage against a naive loop -> reports/bench.json, reports/bench.md.
# A stopped run continues where it stopped; BENCH_ARGS=--fresh starts over.
BENCH_DATA ?= bench/data
BENCH_WORK ?= bench/work
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m benchmarks.bench --data $(BENCH_DATA) --work $(BENCH_WORK) --jobs $(JOBS) --config $(CONFIG) $(BENCH_ARGS)

# The localiser on real MRI: SPIDER's 31 patients imported, patient-grouped 5-fold cross-validation, and a localiser
# trained on synthetic studies only applied to them -> reports/bench_real.json, .md and bench_real_points.png.
# REAL_DATA (required) is a SPIDER folder: volumes/ and radiological_gradings.csv (SPIDER, Zenodo record 10159290,
# CC BY 4.0; README section "Real MRI"); nothing else in the project needs it.
REAL_DATA ?=
BENCH_REAL_WORK ?= bench_real
BENCH_REAL_CONFIG ?= configs/bench_real.yaml
BENCH_REAL_ARGS ?=
bench-real: $(STAMP)
	@test -n "$(REAL_DATA)" || { echo "make bench-real needs REAL_DATA=SPIDER_DIR (a folder with volumes/ and radiological_gradings.csv)"; exit 2; }
	$(PY) -m benchmarks.bench_real --real $(REAL_DATA) --work $(BENCH_REAL_WORK) --config $(BENCH_REAL_CONFIG) \
		$(BENCH_REAL_ARGS)
	$(PY) -m benchmarks.real_grading --volumes $(REAL_DATA)/volumes --gradings $(REAL_DATA)/radiological_gradings.csv \
		--data $(BENCH_REAL_WORK)/spider_data --work $(BENCH_REAL_WORK)/spider_work --jobs $(JOBS) --out reports/real_grading

clean:
	rm -rf demo build dist *.egg-info .pytest_cache
