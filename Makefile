# Thin wrapper: every target calls `python -m cxrlib ...` inside .venv.
# Make variables that name a parameter reach it under the same name:
#   make train DEVICE=gpu GPUS=4 EPOCHS=30 PARAMS=params/seed-pos.yaml  ->  device: gpu, gpus: 4, epochs: 30
# Non-parameter variables: PARAMS (preset file), RUN (run name), A and B (make diff), PYTHON.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cxrlib-stamp
PARAMS ?= params/demo.yaml
RUN    ?=
RUNNER  = $(PY) -m cxrlib run --make-vars "$(MAKEOVERRIDES)" $(if $(RUN),--name $(RUN))

.DEFAULT_GOAL := help
.PHONY: help setup demo test lab data cohort fetch cache train evaluate run report runs diff bench gpu-check clean-venv

help: ## List the targets
	@echo "cxrlib: train and audit multi-label chest X-ray classifiers on MIMIC-CXR-JPG"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: PARAMS=params/NAME.yaml RUN=<run name> DEVICE=cpu|gpu|auto GPUS=N RESUME=1,"
	@echo "and any parameter in upper case (EPOCHS=3, BATCH_SIZE=32, ...): see cxrlib/params.py"

setup: $(STAMP) ## Create .venv (when missing or stale) and install cxrlib with its dependencies
	@git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbdime config-git --enable >/dev/null 2>&1 || true

# The stamp holds a hash of pyproject.toml, so editing the dependencies rebuilds the venv's install.
$(STAMP): FORCE
	@want=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -x $(PY) ] && [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$$want" ]; then exit 0; fi; \
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "cxrlib needs Python 3.10 or newer; set PYTHON=python3.x")' || exit 1; \
	echo "Setting up $(VENV) (first time: a few minutes; torch is large)"; \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || exit 1; \
	$(PY) -m pip install -qq --upgrade pip && \
	$(PY) -m pip install -qq -e '.[dev]' && \
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cxrlib)" >/dev/null && \
	echo "$$want" > $(STAMP)
FORCE:

# 5,000 subjects with at most 3 studies each: about 2,000 in the AP cohort, enough for the demo's
# ResNet101 to learn the synthetic findings on a CPU in minutes (about 12.7k images, 45 s on 2 cores).
DEMO_DATA_ARGS ?= --subjects 5000 --max-studies 3 --seed 0

data/demo/SHA256SUMS.txt: | $(STAMP)
	$(PY) -m cxrlib demo-data --out data/demo $(DEMO_DATA_ARGS)

data: $(STAMP) data/demo/SHA256SUMS.txt ## Generate the synthetic MIMIC-CXR-JPG stand-in into data/demo/

demo: setup data ## The whole pipeline on synthetic data, on CPU (minutes)
	$(PY) -m cxrlib run --make-vars "$(MAKEOVERRIDES)" --params params/demo.yaml $(if $(RUN),--name $(RUN)) --summary

test: setup ## Run the test suite (ruff first: lint and import order)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# jupytext is installed in the venv, so Lab opens notebooks/NN_name.ipynb paired: saving updates the .py too.
lab: setup ## Open JupyterLab with the venv's kernel (notebooks are jupytext pairs)
	$(VENV)/bin/jupyter lab --notebook-dir=.

cohort: setup ## Notebook 01: cohort (and image cache) for PARAMS
	$(RUNNER) --params $(PARAMS) --notebooks 01

fetch: setup ## Download the cohort's images from PhysioNet (credentials: env, ~/.netrc or prompt)
	$(PY) -m cxrlib fetch --params $(PARAMS) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(WORKERS),--workers $(WORKERS))

cache: setup ## Decode the cohort's images once into the resized cache (notebook 01, as make cohort)
	$(RUNNER) --params $(PARAMS) --notebooks 01

train: setup ## Notebooks 01-02: cohort, cache, train (RESUME=1 RUN=<name> continues a run)
	$(RUNNER) $(if $(and $(RUN),$(RESUME)),,--params $(PARAMS)) --notebooks 01,02

evaluate: setup ## Notebooks 03-04 on RUN's best checkpoint (the original's -m test -n name)
	$(RUNNER) --notebooks 03,04

run: setup ## Notebooks 01-04 for PARAMS
	$(RUNNER) --params $(PARAMS) --notebooks 01,02,03,04 --summary

report: setup ## Re-render RUN's executed notebooks to HTML
	@test -n "$(RUN)" || { echo "usage: make report RUN=<run> (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib report --name $(RUN)

runs: setup ## List runs with their key metrics and CIs
	$(PY) -m cxrlib runs

# Sources and outputs only: papermill's timing metadata differs in every cell and hides the rest.
diff: setup ## Diff two runs' evaluation notebooks: make diff A=<run> B=<run>
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make diff A=<run> B=<run> (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(VENV)/bin/nbdiff --sources --outputs runs/$(A)/03_evaluate.ipynb runs/$(B)/03_evaluate.ipynb

bench: setup ## Benchmarks (decode, loader, train); each prints a JSON line last
	$(PY) -m cxrlib bench decode
	$(PY) -m cxrlib bench loader
	$(PY) -m cxrlib bench train

gpu-check: setup ## The GPU check's steps on this CPU at a tiny size (on a GPU machine: tools/gpu-check)
	tools/gpu-check --dry-run $(if $(OUT),--out $(OUT))

clean-venv: ## Remove .venv
	rm -rf $(VENV)
