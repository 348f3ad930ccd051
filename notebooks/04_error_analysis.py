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
# # 04 · Error analysis: where the model is wrong on the test set
#
# From the run's `predictions.csv` and `metrics.json` (notebook 03):
#
# 1. per finding, the most confident false positives and false negatives, with Grad-CAM on the best
#    checkpoint (where in the image the evidence for the finding lies);
# 2. errors against the **source label's uncertainty** (-1 in NegBio/CheXpert, which the policy mapped);
# 3. errors against **image properties** from the metadata (Rows × Columns, orientation, view);
# 4. errors against **co-occurring findings**.
#
# Errors are counted per image, at each finding's threshold chosen on the **validation** split's images
# (max F1), never on test: at `eval_level: study` these are not the study-level thresholds of notebook 03,
# which were tuned on study means. With `redact_images: true` no image is drawn at all.

# %% tags=["parameters"]
run_dir = "runs/demo"          # the run folder (notebook 03 must have run)
topk = 4                       # false positives and negatives shown per finding
bootstrap = 1000               # patient-level resamples for the breakdown CIs
ci_level = 0.95

# %%
from IPython.display import display

from cxrlib import runfiles
from cxrlib.evaluation import analysis
from cxrlib.experiments import notebook

p = notebook.setup(run_dir, globals())

# %%
predictions = runfiles.read_predictions(run_dir)
report = runfiles.read_metrics(run_dir)
test = analysis.test_rows(predictions)
thresholds, threshold_note = analysis.thresholds_from_report(report, level="image")   # errors of single images
print(f"{len(test):,} test images of {test['subject_id'].nunique():,} patients; {threshold_note}")
if report.get("test_selected"):
    print("WARNING: this run selected its model on the test set; see notebook 03.")

# %% [markdown]
# ## The most confident errors per finding
#
# FP: label 0 with the highest probability; FN: label 1 with the lowest. Grad-CAM shows the regions
# that raise the finding's logit (bright: see the colorbar), on the deepest feature map at least 8 x 8 at
# the run's image size (the line under the galleries names it).
# A blank map means no region raises it, and the radiograph shows unchanged.

# %%
errors = analysis.top_errors(predictions, p.topk)
errors

# %%
if p.redact_images:
    images = cams = None
    print("redact_images is on: no images or Grad-CAM maps are drawn.")
else:
    images, cams, cam_note = analysis.error_images(run_dir, p, errors)
    for finding in errors["finding"].unique():
        display(analysis.error_gallery(errors, images, cams, finding))
    print(cam_note)

# %% [markdown]
# ## Label uncertainty
#
# The source labels mark a finding as uncertain (-1) where the report hedged ("possible
# atelectasis"). The run's `uncertain_policy` turned them into 0, 1 or a masked label. If the model
# scores uncertain images like positives (`auroc_uncertain_vs_negative` close to `auroc_certain`), a
# zeros policy punishes it for seeing the finding; if like negatives (about 0.5), the ones policy would
# teach it noise.

# %%
uncertainty, uncertainty_note = analysis.run_uncertainty(p, test, thresholds)
print(uncertainty_note)
uncertainty.round(3) if uncertainty is not None else None

# %%
analysis.plot_uncertainty(uncertainty) if uncertainty is not None else None

# %% [markdown]
# ## Image properties from the metadata
#
# `Rows` × `Columns` of the original DICOM (a proxy for the scanner and the protocol), the orientation,
# and the view when the cohort has several. Micro AUROC pools every labelled cell of a group; its CI
# comes from patient resamples.

# %%
properties = analysis.with_image_properties(test, analysis.read_metadata_columns(p.data_root))
by_size = analysis.breakdown(properties, "size", thresholds, p.bootstrap, p.seed, p.ci_level)
by_size.round(3)

# %%
analysis.plot_breakdown(by_size, 'Errors by image size (Rows x Columns)')

# %%
by_orientation = analysis.breakdown(properties, "orientation", thresholds, p.bootstrap, p.seed, p.ci_level)
by_orientation.round(3)

# %%
if properties["ViewPosition"].nunique() > 1:
    by_view = analysis.breakdown(properties, "ViewPosition", thresholds, p.bootstrap, p.seed, p.ci_level)
    display(by_view.round(3))
    display(analysis.plot_breakdown(by_view, "Errors by view"))
else:
    print(f"one view in the cohort ({properties['ViewPosition'].iloc[0]}): no breakdown by view")

# %% [markdown]
# ## Co-occurring findings
#
# For each finding (row), the false-negative rate among its positives when another finding (column) is
# present minus when it is absent. Red: missed more often in company. Cells with too few positives on
# either side are blank.

# %%
cooccurrence = analysis.fn_by_cooccurrence(test, thresholds, min_n=5)
cooccurrence.dropna(subset=["difference"]).sort_values("difference", ascending=False).head(15).round(3)

# %%
analysis.plot_cooccurrence(cooccurrence)

# %% [markdown]
# ## Browse the errors (interactive sessions only)

# %%
if p.redact_images:
    print("redact_images is on: no image browser.")
elif notebook.is_interactive():
    display(analysis.error_browser(errors, images, cams))
else:
    print("Open this notebook in JupyterLab (make lab) to browse the errors with their Grad-CAM maps.")
