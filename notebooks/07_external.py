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
# # 07 · External validation: does the model hold at another hospital?
#
# The run's best checkpoint scores another dataset (CheXpert, NIH ChestX-ray14, PadChest or VinDr-CXR)
# through the same preprocessing it was trained with, and every figure is set beside the run's own
# MIMIC test split (`cxrlib/evaluation/external_validation.py` declares the procedure):
#
# - **Label maps** (`cxrlib/data/label_maps/<source>.yaml`) say which of the source's labels make each
#   finding positive, matched exactly. A finding the source cannot express is **missing, never
#   negative**, and leaves every average; one mapped by a nearby concept is **approximate**.
# - **The decision**: the drop of the macro AUROC from the internal test split to the external set over the
#   findings mapped **exactly** (approximate ones mix site and definition), with the interval of
#   independent patient bootstraps. One test per source, declared in advance.
# - **Exploratory**: per-finding drops (Holm-adjusted), the run's validation thresholds carried over,
#   calibration with and without the run's recalibration, the audit by sex and age band.
# - **Preprocessing shift**: MIMIC-CXR-JPG was histogram-equalised when it was made from DICOM; other
#   sources were not. The intensity histograms show what the model meets; `equalize: true` equalises the
#   external images too, so the two can be told apart.
#
# Results: `runs/<name>/external/<source>/` (`predictions.csv`, `metrics.json`, this notebook and its HTML).

# %% tags=["parameters"]
run_dir = "runs/demo"           # the run (notebook 03 must have run: thresholds, predictions)
source = "nih"                  # chexpert | nih | padchest | vindr
data_root = "data/demo-nih"     # the dataset's folder (its tables; images below it): --data-root
subset = ""                     # the source's subset ("": its default: see python -m cxrlib external-table --help)
external_views = "frontal"      # frontal (AP and PA) | all
equalize = False                # histogram-equalise the external images, as MIMIC-CXR-JPG's conversion did
allow_missing = False           # score a partial download (fewer than 99% of the selected images on disk)
out_dir = ""                    # where the results go ("": external/<source>/; make external stages them)

# %%
from IPython.display import HTML, display

from cxrlib import account, runfiles
from cxrlib.evaluation import external_tables as tables
from cxrlib.evaluation import external_validation
from cxrlib.experiments import notebook

# knobs=(): this notebook sets none of the run's parameters (data_root here is the source's folder, not the run's)
p = notebook.setup(run_dir, globals(), show=["eval_level", "bootstrap", "ci_level", "min_positives", "calibration"], knobs=())

# %% [markdown]
# ## The source, its table and its label map

# %%
frame, info = external_validation.score_source(run_dir, p, source, data_root, subset or None, external_views, equalize,
                                    allow_missing=allow_missing)
report = external_validation.external_report(run_dir, p, frame, info)
folder = external_validation.write_results(run_dir, source, frame, report, out_dir or None)
print("\n".join(account.external_source_lines(report, data_root, external_views)))
print(f"written: {runfiles.external_dir(run_dir, source)}" + (" (once this notebook has finished)" if out_dir else ""))
tables.map_table(report)

# %% [markdown]
# ## The decision: internal versus external AUROC on the exactly mapped findings

# %% tags=["key-figure"]
if tables.warnings_html(report):   # the starting weights saw this source: not an independent validation
    display(HTML(tables.warnings_html(report)))
print(tables.verdict(report))
display(tables.headline(report))
tables.plot_drop(report)

# %% [markdown]
# ## Every finding: external AUROC and AUPRC with CIs, and the drop where the map is exact

# %%
tables.per_finding(report)

# %% [markdown]
# ## The run's thresholds on the external set (max F1, chosen on the run's validation split)
#
# What a deployed model would do: the thresholds are not refitted. They are the ones fitted for the unit
# this source scores: a source whose studies are single images (NIH, VinDr-CXR) gets the thresholds and
# recalibration fitted on validation images, not on study-level maxima. The internal columns are the run's
# own test split, at the same unit and thresholds.

# %%
print(f"thresholds and recalibration fitted on the validation split's {report['thresholds'].get('unit', 'study')}s")
tables.thresholds(report)

# %% [markdown]
# ## Calibration on the external set, with and without the run's recalibration
#
# `citl` (calibration-in-the-large) is the mean predicted probability minus the observed prevalence:
# a new site's prevalence moves it even when the ranking holds.

# %%
tables.calibration(report)

# %% [markdown]
# ## The audit by sex and age band (where the source gives them)

# %%
tables.audit(report)

# %% [markdown]
# ## Preprocessing shift: what the model sees

# %%
tables.plot_intensity(report)

# %% [markdown]
# ## On a synthetic stand-in: was the planted shift found?

# %%
print("\n".join(tables.planted_lines(report, data_root)))
