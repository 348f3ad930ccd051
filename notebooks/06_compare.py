# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (cxrlib)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Comparing runs: a sweep's members, seeds pooled, each against a baseline
#
# `make compare RUNS=<sweep>` (or `RUNS=a,b,c`) renders this notebook into the sweep's folder (or
# `runs/compare-a+b+c/`). Every figure is a test-split figure; how each run chose its model is read from
# its own `metrics.json` below (`selected_on`), and the comparison itself selects nothing.
#
# - **Members**: each run's headline figures with patient-bootstrap CIs, and what it changed.
# - **Across seeds**: runs that differ only by seed, pooled: mean and SD (n − 1) of each figure.
# - **Against the baseline**: each run minus the baseline on the same test units, paired on patients
#   (the same resamples for both), with Holm's adjustment across the runs compared.
# - An `ensemble` member (the mean of the members' probabilities) is a run like the others.

# %% tags=["parameters"]
run_dir = "runs/demo-grid"     # where this report goes: the sweep's folder
runs = "demo-grid"             # a sweep's name, or run names separated by commas
runs_root = "runs"             # where those names are folders
baseline = ""                  # empty: the grid's baseline, else the first run
bootstrap = 1000               # patient-level resamples for the paired differences
ci_level = 0.95
seed = 0
compare_on = "identical"       # identical: refuse runs with other test sets | shared: their shared units only

# %%
from pathlib import Path

from IPython.display import display

from cxrlib.evaluation import readable
from cxrlib.experiments import compare, notebook

notebook.report_setup()   # no run of its own: figures drawn, errors as one line
Path(run_dir).mkdir(parents=True, exist_ok=True)
result = compare.compare_group(runs, runs_root, baseline, out_dir=run_dir,
                             overrides={"bootstrap": bootstrap, "ci_level": ci_level, "seed": seed,
                                        "compare_on": compare_on})
print(f"{len(result['folders'])} runs; baseline {result['baseline']}")
if result["not_evaluated"]:
    print(f"left out, not evaluated yet (no metrics.json): {', '.join(result['not_evaluated'])}")
print(compare.selection_statement(result["headline"]))
print(compare.VALIDATION_NOTE)

# %% [markdown]
# ## Members

# %%
readable.table(result["headline"])

# %%
compare.plot_members(result["headline"], "auroc_macro")

# %% [markdown]
# ## Across seeds (mean ± SD)

# %%
display(readable.table(result["pooled"]))

# %% [markdown]
# ## Against the baseline (paired on patients, Holm across runs)
#
# Bootstrap p-values count the data as one resample: they are never below 2 / (B + 1), and Holm's
# adjusted values never below the number of runs compared times that. `units` says how many test units
# each comparison pairs: runs with different test sets are refused unless `compare_on: shared`, and then
# every line gives the shared count and each run's own.

# %%
readable.table(result["against_baseline"])

# %% [markdown]
# ## Training curves, overlaid

# %%
compare.plot_curves(result["folders"])
