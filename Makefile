# Thin wrapper: every target calls `python -m cxrlib ...` inside .venv.
# Make variables that name a parameter reach it under the same name:
#   make train DEVICE=gpu GPUS=4 EPOCHS=30 PARAMS=params/seed-pos.yaml  ->  device: gpu, gpus: 4, epochs: 30
# Non-parameter variables: PARAMS (preset file; the demo's when not given), RUN (run name), A and B (make diff),
# YES=1 (make clean without asking), LAB_ARGS (extra flags for jupyter lab), PYTHON.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cxrlib-stamp
PARAMS ?=
RUN    ?=
RUNNER  = $(PY) -m cxrlib run --make-vars "$(MAKEOVERRIDES)" $(if $(RUN),--name $(RUN))
# A missing PARAMS means the demo preset, and the runner says so.
PRESET  = $(if $(PARAMS),--params $(PARAMS),--params params/demo.yaml --default-params)

.DEFAULT_GOAL := help
.PHONY: help setup demo test lab data cohort fetch fetch-demographics cache external audit train evaluate run sweep compare tensorboard mlflow-ui report card export submission runs diff clean bench probe efficiency gpu-check clean-venv

help: ## List the targets
	@echo "cxrlib: train and audit multi-label chest X-ray classifiers on MIMIC-CXR-JPG"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: PARAMS=params/NAME.yaml RUN=<run name> DEVICE=cpu|gpu|auto GPUS=N RESUME=1 DATA_ROOT=<dir>,"
	@echo "and any parameter in upper case (EPOCHS=3, BATCH_SIZE=32, ...): see cxrlib/params.py."
	@echo "Also: A=, B= (make diff), YES=1 (make clean), LAB_ARGS= (make lab), WORKERS=, RELEASE=, PRINT_GSUTIL=1 (make fetch), MIMIC_IV_VERSION= (make fetch-demographics),"
	@echo "GRID=, DRY_RUN=1, WAIT=1 (make sweep), RUNS=, BASELINE= (make compare), PORT=, MLRUNS= (make tensorboard, mlflow-ui),"
	@echo "SOURCE=, DATA_ROOT=, SUBSET=, EXTERNAL_VIEWS=all, EQUALIZE=1, ALLOW_MISSING=1 (make external; make fetch SOURCE=vindr)."

# In a git checkout: nbdime's notebook diffs, and nbstripout as a clean filter, so that outputs saved in
# JupyterLab (with real data: patient images) never reach a commit (.gitattributes names the notebooks).
setup: $(STAMP) ## Create .venv (when missing or stale), install cxrlib, and the git filter that strips notebook outputs
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  $(VENV)/bin/nbdime config-git --enable >/dev/null 2>&1 || true; \
	  git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id' && \
	  git config filter.nbstripout.smudge cat && git config filter.nbstripout.required true; \
	fi

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

# The external step: a synthetic NIH ChestX-ray14 in its own files (PNGs, some RGB/RGBA) with a planted site
# shift (data/demo-nih/PLANTED.json), about 40 s more.
data/demo-nih/SYNTHETIC.json: | $(STAMP)
	$(PY) -m cxrlib demo-data --source nih --out data/demo-nih --images 500 --seed 0

demo: setup data data/demo-nih/SYNTHETIC.json ## The whole pipeline on synthetic data, on CPU (minutes): export, external validation, model card
	$(PY) -m cxrlib run --make-vars "$(MAKEOVERRIDES)" --params params/demo.yaml $(if $(RUN),--name $(RUN))
	$(PY) -m cxrlib export --run $(or $(RUN),demo) --format onnx
	$(PY) -m cxrlib external --run $(or $(RUN),demo) --source nih --data-root data/demo-nih
	$(PY) -m cxrlib card --run $(or $(RUN),demo)

# One pytest worker per core, at most 4 (TEST_WORKERS=0: one process); PYTEST_ARGS adds flags, e.g. -k cohort.
# tests/test_sources.py reads the real label tables in torchxrayvision's wheel (29 MB, not installed).
TEST_WORKERS ?= auto
test: setup ## Run the test suite (ruff first: lint and import order)
	$(VENV)/bin/ruff check .
	@ls $(VENV)/wheels/torchxrayvision-*.whl >/dev/null 2>&1 || $(PY) -m pip download -q --no-deps torchxrayvision -d $(VENV)/wheels
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --maxprocesses 4 --dist loadscope) $(PYTEST_ARGS)

# Every case of the careless-user probes (issues 15, 22, 32), wherever its test lives; the last line counts,
# per kind (silent wrong, traceback, data lost, two writers, refused only after work), the cases still failing.
probe: setup ## Rerun the careless-user probes and count what still goes wrong
	$(PY) -m pytest -m probe $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --maxprocesses 4 --dist loadscope) $(PYTEST_ARGS)

# jupytext is installed in the venv, so Lab opens notebooks/NN_name.ipynb paired: saving updates the .py too.
# Root (in a container) needs --allow-root; LAB_ARGS adds any other flag: LAB_ARGS="--no-browser --port 8899".
# tools/jupyter_lab_config.py: one file-browser entry per notebook, notebooks/ saved without outputs. The
# settings override (in the venv, not ~/.jupyter) turns off Lab's news and update pop-ups.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
lab: setup ## Open JupyterLab with the venv's kernel (notebooks are jupytext pairs); LAB_ARGS= adds flags
	@mkdir -p $(dir $(LAB_OVERRIDES)) && printf '%s\n' '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' > $(LAB_OVERRIDES)
	$(VENV)/bin/jupyter lab --notebook-dir=. --config=tools/jupyter_lab_config.py $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

cohort: setup ## Notebook 01: cohort (and image cache) for PARAMS
	$(RUNNER) $(PRESET) --notebooks 01

# SOURCE=vindr DATA_ROOT=<dir>: VinDr-CXR's test set instead (PhysioNet, its own agreement), for make external.
fetch: setup ## Download the cohort's images from PhysioNet (credentials: env, ~/.netrc or prompt); SOURCE=vindr: VinDr-CXR's test set
	$(if $(SOURCE),$(PY) -m cxrlib fetch-external --source $(SOURCE) --data-root $(or $(DATA_ROOT),data/vindr-cxr) $(if $(WORKERS),--workers $(WORKERS)); exit $$?;) $(PY) -m cxrlib fetch --params $(or $(PARAMS),params/demo.yaml) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(RELEASE),--version $(RELEASE)) $(if $(PRINT_GSUTIL),--print-gsutil)

fetch-demographics: setup ## Download MIMIC-IV's patients and admissions (a separate agreement) for the audit
	$(PY) -m cxrlib fetch-demographics --params $(or $(PARAMS),params/demo.yaml) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(MIMIC_IV_VERSION),--version $(MIMIC_IV_VERSION))

cache: setup ## Decode the cohort's images once into the resized cache (notebook 01, as make cohort)
	$(RUNNER) $(PRESET) --notebooks 01

train: setup ## Notebooks 01-02: cohort, cache, train (RESUME=1 RUN=<name> continues a run)
	$(RUNNER) $(if $(and $(RUN),$(RESUME)),,$(PRESET)) --notebooks 01,02

evaluate: setup ## Notebooks 03-05 on RUN's best checkpoint (the original's -m test -n name)
	$(RUNNER) $(if $(PARAMS),--params $(PARAMS)) --notebooks 03,04,05

# SOURCE: chexpert | nih | padchest | vindr; DATA_ROOT: that dataset's folder. SUBSET, EXTERNAL_VIEWS=all, EQUALIZE=1,
# ALLOW_MISSING=1 (score a partial download; otherwise fewer than 99% of the selected images present is refused).
external: setup ## Notebook 07 on RUN: validate on another dataset (SOURCE=nih DATA_ROOT=<its folder>)
	@test -n "$(SOURCE)" -a -n "$(DATA_ROOT)" || { echo "usage: make external RUN=<run> SOURCE=chexpert|nih|padchest|vindr DATA_ROOT=<the dataset's folder> [SUBSET=...] [EXTERNAL_VIEWS=all] [EQUALIZE=1] [ALLOW_MISSING=1]"; exit 2; }
	$(PY) -m cxrlib external --run $(or $(RUN),demo) --source $(SOURCE) --data-root $(DATA_ROOT) $(if $(SUBSET),--subset $(SUBSET)) $(if $(EXTERNAL_VIEWS),--external-views $(EXTERNAL_VIEWS)) $(if $(EQUALIZE),--equalize) $(if $(ALLOW_MISSING),--allow-missing)

audit: setup ## Notebook 05 on RUN: the audit by patient group (MIMIC-IV demographics)
	$(RUNNER) $(if $(PARAMS),--params $(PARAMS)) --notebooks 05

run: setup ## Notebooks 01-05 for PARAMS
	$(RUNNER) $(PRESET) --notebooks 01,02,03,04,05

sweep: setup ## Run a grid of members: make sweep GRID=params/grids/NAME.yaml (a rerun skips finished ones)
	@test -n "$(GRID)" || { echo "usage: make sweep GRID=params/grids/NAME.yaml (grids: $$(ls params/grids | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib sweep --grid $(GRID) $(if $(DRY_RUN),--dry-run) $(if $(WAIT),--wait)

# Linear probes at 1%, 10% and 100% of the training patients (two seeds) and the CLIP models' zero-shot baselines,
# from random-weight encoders in each layout (python -m cxrlib demo-encoders); each encoder embeds the images once.
# GRID= another grid of probes (real encoders: copy params/grids/data-efficiency.yaml, point weights: at them).
EFFICIENCY_GRID ?= $(or $(GRID),params/grids/data-efficiency.yaml)
efficiency: setup data ## Data-efficiency curves: probes on the embedding cache at 1/10/100% of patients, zero-shot (GRID=)
	@test -n "$(GRID)" -o -d data/demo-encoders || $(PY) -m cxrlib demo-encoders --out data/demo-encoders --image-size 64
	$(PY) -m cxrlib sweep --grid $(EFFICIENCY_GRID)
	$(PY) -m cxrlib efficiency --runs $$($(PY) -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" $(EFFICIENCY_GRID))

compare: setup ## Compare runs: make compare RUNS=<sweep> or RUNS=a,b,c [BASELINE=a] (notebook 06)
	@test -n "$(RUNS)" || { echo "usage: make compare RUNS=<sweep name> or RUNS=a,b,c [BASELINE=a]"; exit 2; }
	$(PY) -m cxrlib compare --runs $(RUNS) $(if $(BASELINE),--baseline $(BASELINE)) $(if $(COMPARE_ON),--compare-on $(COMPARE_ON))

tensorboard: setup ## Every run's training curves (the presets log them: tracker: tensorboard) on 127.0.0.1; PORT=6006
	@find runs -maxdepth 3 -type d -name tb 2>/dev/null | grep -q . || echo "no TensorBoard logs under runs/ yet: train a run whose parameters say tracker: tensorboard (the presets do)"
	@echo "curves of every run under runs/ (tracker: none in a run's parameters turns its logging off); open http://127.0.0.1:$(or $(PORT),6006)"
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1 --port $(or $(PORT),6006)

mlflow-ui: setup ## The MLflow UI on 127.0.0.1 over runs/mlruns (tracker: mlflow); PORT=5000, MLRUNS=<store>
	MLFLOW_ALLOW_FILE_STORE=true $(VENV)/bin/mlflow ui --backend-store-uri "file:$(abspath $(or $(MLRUNS),runs/mlruns))" --host 127.0.0.1 --port $(or $(PORT),5000)

report: setup ## Re-render RUN's executed notebooks to HTML
	@test -n "$(RUN)" || { echo "usage: make report RUN=<run> (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib report --name $(RUN)

card: setup ## RUN's model card: runs/<run>/MODEL_CARD.md and .html (from metrics.json and the run folder)
	@test -n "$(RUN)" || { echo "usage: make card RUN=<run> (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib card --run $(RUN)

export: setup ## RUN's best model as FORMAT=onnx (default) or torchscript, checked against PyTorch
	@test -n "$(RUN)" || { echo "usage: make export RUN=<run> [FORMAT=onnx|torchscript] (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib export --run $(RUN) --format $(or $(FORMAT),onnx)

submission: setup ## RUN's test probabilities in the CXR-LT challenge's format: runs/<run>/submission.csv
	@test -n "$(RUN)" || { echo "usage: make submission RUN=<run> (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib submission --run $(RUN)

runs: setup ## List runs: status (stale when trained after evaluation), date, duration, best epoch, figures with CIs
	$(PY) -m cxrlib runs

# Parameters first, then the headline figures, then notebook sources and text outputs (no images or HTML).
diff: setup ## Compare two runs: make diff A=<run> B=<run>
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make diff A=<run> B=<run> (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib diff $(A) $(B)

clean: setup ## Remove RUN's checkpoints after asking (YES=1: without); its reports and metrics stay
	@test -n "$(RUN)" || { echo "usage: make clean RUN=<run> [YES=1] (runs: $$(ls runs | grep -v README | tr '\n' ' '))"; exit 2; }
	$(PY) -m cxrlib clean --name $(RUN) $(if $(YES),--yes)

bench: setup ## Benchmarks (decode, loader, train); each prints a JSON line last
	$(PY) -m cxrlib bench decode
	$(PY) -m cxrlib bench loader
	$(PY) -m cxrlib bench train

gpu-check: setup ## The GPU check's steps on this CPU at a tiny size (on a GPU machine: tools/gpu-check)
	tools/gpu-check --dry-run $(if $(OUT),--out $(OUT))

clean-venv: ## Remove .venv
	rm -rf $(VENV)
