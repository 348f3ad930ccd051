# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (cxrlib)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Audit by patient group: sex, age, race, insurance
#
# MIMIC-IV's `patients` and `admissions` (a separate credentialed project: `make fetch-demographics`)
# give every cohort image its patient's sex, age at the study, race and insurance
# (`runs/<name>/demographics.csv`, never a model input). On the test split, for each attribute and for
# race × sex:
#
# - AUROC, AUPRC and ECE per group and finding, and TPR, FPR, FNR at the thresholds chosen on the
#   **validation** split;
# - **underdiagnosis**: the share of patients with at least one finding whom the model calls
#   "No Finding" (Seyyed-Kalantari et al., Nature Medicine 2021);
# - each group's **gap** from the rest of the test set, with a CI from patient resamples, and
#   p-values adjusted across groups × findings (Holm, with Benjamini-Hochberg beside it).
#
# Groups under `min_group_patients` patients are shown as "<N" and never plotted. Only group-level
# figures leave this notebook (`fairness.csv`, `fairness.json`).

# %% tags=["parameters"]
run_dir = "runs/demo"          # the run folder (notebook 03 must have run)
race_policy = "mode"           # one race per patient across admissions: mode | first | unknown
min_group_patients = 30        # smaller groups are shown as "<N" and never plotted
bootstrap = 1000               # patient-level resamples for every CI
ci_level = 0.95

# %%
import pandas as pd
from IPython.display import display

from cxrlib import fairness, runs, viz

p = runs.notebook_setup(run_dir, globals())

# %% [markdown]
# ## Demographics of the cohort, and who is missing from MIMIC-IV

# %%
summary = fairness.audit_run(run_dir, p)
coverage = summary["coverage"]
print(f"{coverage['patients']} cohort patients: {coverage['in_mimic_iv']} in MIMIC-IV, "
      f"{coverage['not_in_mimic_iv']} missing from it, {coverage['without_admission']} without an admission "
      f"(race and insurance Unknown); race policy: {coverage['race_policy']}")
print(f"test units ({summary['level']} level): {summary['test_units']}; thresholds: {summary['threshold_rule']} "
      "chosen on the validation split")
pd.DataFrame(summary["groups"]).pivot_table(index="group", columns="attribute", values="patients",
                                             aggfunc="first").fillna("")

# %% [markdown]
# ## Gaps that survive the Holm adjustment

# %%
rows = pd.DataFrame(summary["rows"])
hits = pd.DataFrame(summary["significant"])
if hits.empty:
    print("no gap survives Holm's adjustment at 0.05")
else:
    display(viz.readable(hits))

# %% [markdown]
# ## On the synthetic stand-in: was the planted disparity found?
#
# The stand-in (`python -m cxrlib demo-data`) draws the findings of one group fainter (`mimic-iv/PLANTED.json`; real data has
# no such file and this section says so). The audit should find that group's gap, in the
# under-detection direction with a CI that excludes 0 and Holm p < 0.05, and no significant gap on
# the attributes where nothing was planted.

# %%
check = summary["planted"]
if check is None:
    print("no PLANTED.json beside the MIMIC-IV tables: real data, nothing was planted")
else:
    planted = check["planted"]
    print(f"planted: {planted['attribute']} = {planted['group']}, findings drawn at {planted['signature_strength']} "
          f"of their strength ({planted['effect']})")
    print(("DETECTED" if check["detected"] else "NOT DETECTED") + f": {len(check['found'])} gap(s) of that group "
          "in the under-detection direction, CI excluding 0, Holm p < 0.05")
    print(f"attributes with nothing planted ({', '.join(planted['unplanted'])}): "
          + ("no significant gap" if check["unplanted_clean"]
             else f"{len(check['unplanted_significant'])} significant gap(s), false positives"))
    display(viz.readable(pd.DataFrame(check["found"] + check["unplanted_significant"])))

# %% [markdown]
# ## Underdiagnosis: a finding present, "No Finding" predicted

# %%
display(viz.readable(rows[rows["metric"] == "underdiagnosis"].drop(columns=["finding", "metric"])))
fairness.plot_underdiagnosis(rows)

# %% [markdown]
# ## AUROC gaps per attribute (red: Holm p < 0.05)

# %%
for attribute in fairness.ATTRIBUTES:
    display(fairness.plot_gaps(rows, attribute, "auroc"))

# %% [markdown]
# ## True-positive-rate gaps at the validation thresholds

# %%
for attribute in ("sex", "race"):
    display(fairness.plot_gaps(rows, attribute, "tpr"))

# %% [markdown]
# ## Every figure (also in `fairness.csv`)

# %%
viz.readable(rows.set_index(["attribute", "group", "finding", "metric"]))
