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
# # 05 · Audit by patient group: sex, age, race, insurance
#
# MIMIC-IV's `patients` and `admissions` (a separate credentialed project: `make fetch-demographics`)
# give every cohort image its patient's sex, age at the study, race and insurance
# (`runs/<name>/demographics.csv`, never a model input). The audit compares groups on the test split
# at the thresholds chosen on the **validation** split, with one procedure declared in advance
# (`cxrlib/evaluation/fairness.py`):
#
# - **Comparisons**: two groups with a known value give one comparison (F vs M, not also M vs F);
#   more give each group against the rest of them. Unknown values are reported, never compared.
# - **Primary tests, the audit's decisions**: per comparison of sex, age, race and insurance, the
#   **macro AUROC gap** and the **underdiagnosis gap**, where underdiagnosis is the rate at which a
#   patient with a finding (No Finding = 0) is called "No Finding" (the No Finding false-positive rate
#   of Seyyed-Kalantari et al., Nature Medicine 2021). Bonferroni over all primary tests of the audit
#   keeps the chance of any false alarm at 5%; each primary gap's interval is simultaneous, so red
#   (significant) is exactly an interval that excludes 0.
# - **Exploratory**: per-finding AUROC, TPR and FPR gaps, `missed_pathology` (a pathology present,
#   "No Finding" called) and race × sex, with Benjamini-Hochberg q-values and per-comparison 95%
#   intervals. They suggest where to look; they decide nothing. AUPRC and ECE gaps get intervals only:
#   AUPRC moves with a group's prevalence and ECE with its size.
#
# Groups under `min_group_patients` patients are shown as "<N" and never plotted, and a second count is
# hidden where the first could be recovered by subtraction. Only group-level figures leave this
# notebook (`fairness.csv`, `fairness.json`).

# %% tags=["parameters"]
run_dir = "runs/demo"          # the run folder (notebook 03 must have run)
race_policy = "mode"           # one race per patient across admissions: mode | first | unknown
age_bands = "cxrlib"           # cxrlib (<18, 18-39, ...) | seyyed-kalantari (0-20, 20-40, ..., 80+)
min_group_patients = 30        # smaller groups are shown as "<N" and never plotted
bootstrap = 1000               # patient-level resamples for every CI
ci_level = 0.95

# %%
import pandas as pd
from IPython.display import display

from cxrlib import account
from cxrlib.evaluation import audit as report
from cxrlib.evaluation import readable
from cxrlib.experiments import notebook

p = notebook.setup(run_dir, globals())

# %% [markdown]
# ## Demographics of the cohort, and who is missing from MIMIC-IV

# %%
summary = report.audit_run(run_dir, p)
coverage = summary["coverage"]
print(f"{coverage['patients']} cohort patients: {coverage['in_mimic_iv']} in MIMIC-IV, "
      f"{coverage['not_in_mimic_iv']} missing from it, {coverage['without_admission']} without an admission "
      f"(race and insurance Unknown); race policy: {coverage['race_policy']}; age bands: {summary['age_bands']}")
print(f"test units ({summary['level']} level): {summary['test_units']} of {summary['test_coverage']['patients']} "
      f"patients, {summary['test_coverage']['in_mimic_iv']} of them in MIMIC-IV, "
      f"{summary['test_coverage']['with_admission']} with an admission; {summary['threshold_note']}")
for problem in summary["data_problems"]:
    print("data problem:", problem)
for attribute, verdict in summary["verdicts"].items():
    print(f"{attribute}: {verdict['known']}; {verdict['verdict']}")
pd.DataFrame(summary["groups"]).pivot_table(index="group", columns="attribute", values="patients",
                                             aggfunc="first").fillna("")

# %% [markdown]
# ## The audit's decisions: primary gaps (Bonferroni over the whole audit)

# %%
rows = pd.DataFrame(summary["rows"])
procedure = summary["procedure"]
print(account.audit_verdict(summary))   # the words of make audit, the index and the card
print(procedure["decision"])
hits = pd.DataFrame(summary["significant"])
if hits.empty:
    print("no primary gap is significant")
else:
    print(f"{len(hits)} significant primary gap(s):")
    display(readable.table(hits[["attribute", "group", "reference", "metric", "gap", "gap_lo", "gap_hi", "p_adjusted"]]))
print("every primary test (simultaneous intervals):")
primary = rows[rows["tier"] == "primary"][["attribute", "group", "reference", "metric", "gap", "gap_lo", "gap_hi",
                                           "p_value", "p_adjusted", "significant"]]
readable.table(primary)

# %% tags=["key-figure"]
display(report.plot_primary(rows, "auroc_macro"))
display(report.plot_primary(rows, "underdiagnosis"))

# %% [markdown]
# ## On the synthetic stand-in: was the planted disparity found?
#
# The stand-in (`python -m cxrlib demo-data`) draws the findings of one group fainter (`mimic-iv/PLANTED.json`;
# real data has no such file and this section says so). The audit should call that group's primary gaps
# significant in the under-detection direction, and no primary gap on the attributes where nothing was planted.

# %%
check = summary["planted"]
if check is None:
    print("no PLANTED.json beside the MIMIC-IV tables: real data, nothing was planted")
else:
    planted = check["planted"]
    print(f"planted: {planted['attribute']} = {planted['group']}, findings drawn at {planted['signature_strength']} "
          f"of their strength ({planted['effect']})")
    print(account.planted_word(check) + f": {len(check['found'])} significant primary "
          "gap(s) of that group in the under-detection direction")
    print(f"attributes with nothing planted ({', '.join(planted['unplanted'])}): "
          + ("no significant gap" if check["unplanted_clean"]
             else f"{len(check['unplanted_significant'])} significant gap(s), false positives"))
    display(readable.table(pd.DataFrame(check["found"] + check["unplanted_significant"])))

# %% [markdown]
# ## Underdiagnosis per group (the "nothing found" label's false-positive rate, 95% intervals)

# %%
under = rows[(rows["metric"] == "underdiagnosis") & rows["gap"].isna()]
display(readable.table(under[["attribute", "group", "value", "lo", "hi", "n_patients"]]))
report.plot_underdiagnosis(rows, summary["nothing_found"])

# %% [markdown]
# ## Exploratory: per-finding gaps (per-comparison intervals; BH q-values in the table)

# %%
print(f"{summary['exploratory_hits']} of {procedure['exploratory_tests']} exploratory tests with q < 0.05: "
      "hypotheses for the next study, not findings of this one")
for attribute in ("sex", "race"):
    display(report.plot_gaps(rows, attribute, "auroc"))
    display(report.plot_gaps(rows, attribute, "tpr"))

# %% [markdown]
# ## Every figure (also in `fairness.csv`)
#
# `value [lo, hi]` is the group's own figure (95%); `gap [gap_lo, gap_hi]` its difference from the
# reference, with the interval `ci` names; `p_adjusted` is Bonferroni for primary rows and a BH q for
# exploratory ones.

# %%
readable.table(rows.set_index(["attribute", "group", "reference", "finding", "metric"]))
