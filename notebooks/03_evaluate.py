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
# # 03 · Evaluation: every figure with its uncertainty
#
# The run's best checkpoint (chosen by notebook 02 on the split named by `select_on`) predicts the
# validation and test images once; every figure below comes from those predictions
# (`predictions.csv`) and is saved with its confidence interval in `metrics.json`.
#
# - **Confidence intervals** are percentile intervals over `bootstrap` patient-level resamples: a
#   resample draws patients with replacement and brings all their images.
# - **Estimable findings**: a finding with fewer than `min_positives` positive (or negative) units on a
#   split keeps its estimate but gets no interval and stays out of the macro averages, which say which
#   findings they cover. An interval built from fewer than 99% of the resamples (the others lost every
#   positive of a finding) is marked **conditional**.
# - **Thresholds** (max F1, Youden's J) are chosen on the **validation** split only and then applied to
#   the test split; a fixed 0.5, chosen by no data, is reported beside them.
# - **Model selection on the test set** (the original project's rule, presets `seed-nopos` and
#   `seed-pos`) makes every test figure optimistic; this notebook says so in a red box.
# - **Image or study level** (`eval_level`): labels belong to studies, so at study level a study's
#   images are scored, their probabilities aggregated (`study_aggregate`), and every figure, curve,
#   threshold, temperature and CI counts studies (training chose its epoch on them too). `predict` and
#   the export score single images, so they carry thresholds and temperatures fitted on validation
#   *images* (`metrics.json`'s `image_level`). Where some study has several images, both levels are shown.
# - **Radiologist labels** (MIMIC-CXR-JPG 2.1.0) score the test studies they cover, beside the NLP
#   labels of the same studies; they never choose a model or a threshold.

# %% tags=["parameters"]
run_dir = "runs/demo"          # the run folder (notebooks 01 and 02 must have run)
tta = False                    # average over the image and four small shifts of it
eval_level = "study"           # image | study: the unit every figure counts (labels are per study)
study_aggregate = "mean"       # mean | max of a study's image probabilities
calibration = "temperature"    # none | temperature | isotonic: fitted on validation, applied to test
bootstrap = 1000               # patient-level resamples for every CI
ci_level = 0.95
min_positives = 10             # fewer positive (or negative) units: no CI, not in the macro averages
compare_with = ""              # another run's name: paired differences on the shared test images

# %%
from pathlib import Path

import pandas as pd
from IPython.display import HTML, display

from cxrlib import account
from cxrlib.evaluation import evaluate, paired, readable, tables, viz
from cxrlib.evaluation import gold as goldlib
from cxrlib.experiments import notebook

p = notebook.setup(run_dir, globals())

# %% [markdown]
# ## Predict the validation and test images (best checkpoint)

# %%
predictions = evaluate.predict_run(run_dir, p, tta=p.tta)
predictions.groupby("split").agg(images=("dicom_id", "size"), patients=("subject_id", "nunique"))

# %% [markdown]
# ## Figures with patient-bootstrap confidence intervals → `metrics.json`

# %%
report = evaluate.evaluate_run(run_dir, p, predictions)
starting = report["model"].get("starting_weights")
print(tables.starting_weights_line(starting, p.weights))
for warning in account.warnings(report):   # the words the terminal, the index and the card use
    display(HTML(tables.red_box(warning)))
print("\n".join(account.headline_notes(report)))
tables.headline_table(report)

# %% [markdown]
# ## Image or study level
#
# The headline counts the units of `eval_level`. Labels are per study, so at image level a study
# with several frontal images counts several times; at study level its images' probabilities are
# aggregated into one score. The other level is shown here when some study has several images.

# %%
print(account.level_sentence(report))
tables.level_table(report)

# %% [markdown]
# ## Per finding: AUROC and AUPRC on test
#
# Intervals are wide where a finding has few positives; below `min_positives` a finding has its
# estimate, no interval, and no place in the macro (hollow in the plot); a finding with one class on the
# test split has no AUROC. On AUPRC the tick marks chance (the prevalence). Counts are per
# `eval_level` unit.

# %%
readable.table(tables.per_finding_table(report, "test"))

# %% tags=["key-figure"]
viz.plot_forest(report['splits']['test'])

# %% [markdown]
# ## Head, medium and tail
#
# The findings grouped by how often the training images carry them (the label set's rule: above 10% head,
# below 1% tail), and each group's macro AUROC and mean average precision (mAP, the figure CXR-LT ranks by)
# on the test split, over the group's findings with `min_positives`, with patient-bootstrap CIs.

# %%
print(account.bucket_rule(report))
readable.table(tables.bucket_table(report))

# %% [markdown]
# ## ROC and precision-recall curves (test, in the units of `eval_level`)

# %% tags=["key-figure"]
units = evaluate.scored_units(predictions, p)   # studies at study level: the curves match the figures above
y_test, p_test, _ = evaluate.arrays(units, "test")
viz.plot_curves(y_test, p_test, summary=report["splits"]["test"], kind="roc")

# %%
viz.plot_curves(y_test, p_test, summary=report['splits']['test'], kind='pr')

# %% [markdown]
# ## Calibration (test)
#
# Reliability diagram: observed positive rate against mean predicted probability in ten equal-width
# bins (grey bars: share of cells per bin), per `eval_level` unit. ECE weighs each bin's gap by its share; Brier is the mean
# squared error of the probabilities. Both come with patient-bootstrap CIs.

# %% tags=["key-figure"]
viz.plot_reliability(y_test, p_test)

# %%
viz.plot_reliability(y_test, p_test, per_finding=True)

# %%
tables.calibration_table(report).round(4)

# %% [markdown]
# ## Recalibration (`calibration`)
#
# `temperature` divides each finding's logit by one number T fitted on the validation split (the log
# loss is least there); `isotonic` fits a non-decreasing map per finding on it. Either is applied to
# the test split unchanged. Temperature keeps every ranking, so AUROC, AUPRC and the calls at the
# thresholds stay as above; isotonic may tie scores. ECE and Brier before and after are on the same
# patient resamples, so the change has its own CI. `predict` and the export's metadata carry the map.

# %%
recal = report["recalibration"]
if recal is None:
    print("calibration: none (or no validation split): the probabilities are the model's own")
else:
    from cxrlib.evaluation import recalibration

    print(f"{recal['method']}, fitted on {recal['fitted_on']}" + "".join(f"; {note}" for note in recal["notes"]))
    display(recalibration.before_after(report).round(4))
    viz.plot_reliability(y_test, recalibration.apply(recal, p_test))

# %% [markdown]
# ## Thresholds from validation, applied to test
#
# `f1` (max F1) and `youden` (max sensitivity + specificity - 1) are chosen on the validation split;
# `fixed_0.5` is chosen by no data. Counts and rates are on the test split, per `eval_level` unit; a rate
# from a handful of cases (see `tp + fn` and `tn + fp`) is not an estimate to quote.

# %%
print("\n".join(account.threshold_notes(report)))
thresholds = tables.threshold_table(report)
thresholds.round(3)

# %%
rule = "f1" if report["thresholds"]["chosen_on"] else "fixed_0.5"
thresholds[thresholds["rule"] == rule].set_index("finding")[
    ["threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv", "f1"]].round(3)

# %% [markdown]
# ## Beside the original project's published figures
#
# The original published test figures for two models, pos_weight off and on. Both were selected on
# the test set by accuracy at 0.5 and have no intervals; on the synthetic stand-in nothing here is
# expected to match them. Compare runs on the real data with the same preset (`seed-nopos`,
# `seed-pos`) or with `improved`.

# %%
comparison = tables.original_comparison(report)
print(comparison.attrs["note"])
comparison.round(4)

# %% [markdown]
# ## Radiologist labels (MIMIC-CXR-JPG 2.1.0)
#
# `mimic-cxr-2.1.0-test-set-labeled.csv` holds radiologists' labels for studies of the official
# test split. The model's scores on the test studies they cover (study level, patient-bootstrap CIs)
# are shown against those labels and against the NLP labels of the same studies; both go through
# the run's uncertain and blank policies. The agreement table asks how noisy the NLP labels are:
# NegBio and CheXpert against the radiologists on every labelled study of the release.
# The radiologist labels are never used for training, selection or thresholds.

# %%
gold = report["gold"]
print("\n".join(account.gold_lines(gold)))
if gold["available"] and not gold.get("reason"):
    display(readable.table(goldlib.comparison_table(gold)))

# %%
if gold["available"] and gold.get("agreement_missing"):
    print(gold["agreement_missing"])
if gold["available"] and gold["agreement"]:
    display(readable.table(goldlib.agreement_frame(gold)[
        ["n", "gold_pos", "nlp_pos", "sensitivity", "specificity", "kappa", "kappa_lo", "kappa_hi"]]))
    display(goldlib.plot_agreement(gold))

# %% [markdown]
# ## Paired comparison with another run (`compare_with`)
#
# Bootstrap p-values count the observed data as one resample, so B resamples cannot give less than
# 2 / (B + 1) (0.002 at 1000), and Holm across 14 findings no less than 14 times that. The macro rows
# (bootstrap and DeLong) cover the same estimable findings.

# %%
if p.compare_with:
    differences = paired.compare_runs(run_dir, Path(p.runs_dir) / p.compare_with, p)
    print(account.paired_sentence(differences.attrs))
    display(paired.readable(differences))
    display(paired.plot_differences(differences))
else:
    print("compare_with is empty: no paired comparison. Set compare_with: <run name> (make evaluate RUN=... "
          "COMPARE_WITH=<other run>) to compare two runs on the same test images.")

# %% [markdown]
# ## Validation split (for reference: the split thresholds and model selection used)

# %%
if "validate" in report["splits"]:
    display(readable.table(tables.per_finding_table(report, "validate")))
else:
    print("no validation split in this run")

# %% [markdown]
# ## Where these figures come from

# %%
pd.DataFrame({"value": {**{k: v for k, v in report["data"].items() if not isinstance(v, dict)},
                        **{f"cache {k}": v for k, v in report["data"]["cache"].items()},
                        **{f"images {k}": v for k, v in report["data"]["images_per_split"].items()},
                        **{f"version {k}": v for k, v in report["versions"].items()}}}).astype(str)
