"""Notebook 05's audit of a run (fairness.csv, fairness.json), its summary lines and its plots.

    summary = audit_run(run_dir, p)     # demographics.csv, fairness.csv, fairness.json

The statistics and the decision rule are fairness.py's. Only group-level figures leave the run's
demographics.csv: counts of small cells are hidden (fairness.group_sizes), and no row names a patient.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import account, labelset
from ..data import demographics
from ..data.cohort import read_cohort
from ..fsutil import atomic_write_csv, atomic_write_json, jsonable
from ..runfiles import COHORT, DEMOGRAPHICS, FAIRNESS_CSV, FAIRNESS_JSON, read_metrics, read_predictions
from ..stats import levels
from ..synthetic.mimic_iv import PLANTED_FILE
from . import fairness
from .analysis import thresholds_from_report

SHOWN = ["attribute", "group", "reference", "finding", "metric", "value", "gap", "gap_lo", "gap_hi", "p_value",
         "p_adjusted", "n_patients"]


def with_intersection(table: pd.DataFrame) -> pd.DataFrame:
    """The demographics table with race_sex (e.g. 'Black / F') for the intersectional audit."""
    return table.assign(race_sex=table["race"].astype(str) + " / " + table["sex"].astype(str))


def audit_run(run_dir, p, progress: bool = False) -> dict:
    """Demographics for the run's cohort, the audit of its test units, and the summary (fairness.json).

    Thresholds are metrics.json's validation-chosen max-F1 ones at the run's eval_level (fixed 0.5 where
    none), the same the audit's units are scored at."""
    run_dir = Path(run_dir)
    report = read_metrics(run_dir)
    thresholds, threshold_note = thresholds_from_report(report, "f1")
    cohort = read_cohort(run_dir / COHORT)
    table, coverage = demographics.demographics_for_cohort(cohort, p.data_root, p.resolved_mimic_iv_root(),
                                                           p.race_policy, p.age_bands)
    atomic_write_csv(run_dir / DEMOGRAPHICS, table)   # per image: stays in the run folder
    test = read_predictions(run_dir)
    test = test[test["split"] == "test"]
    units = levels.rows_at(test, p.eval_level, p.study_aggregate).reset_index(drop=True)
    key = "study_id" if p.eval_level == "study" else "dicom_id"
    attributes = with_intersection(table.drop_duplicates(key).set_index(key)).loc[units[key].to_numpy()]
    attributes = attributes.reset_index(drop=True)
    nothing_found = labelset.load(p.label_set).nothing_found   # the underdiagnosis audit's "healthy" call
    rows = fairness.audit(units, attributes, thresholds, n_boot=p.bootstrap, seed=p.seed, ci_level=p.ci_level,
                          min_group_patients=p.min_group_patients, nothing_found=nothing_found)
    atomic_write_csv(run_dir / FAIRNESS_CSV, rows)
    plan = fairness.plan_groups(attributes, units["subject_id"].to_numpy(str), fairness.ATTRIBUTES,
                                p.min_group_patients)
    planted_file = p.resolved_mimic_iv_root() / PLANTED_FILE   # only the synthetic stand-in has one
    planted = json.loads(planted_file.read_text()) if planted_file.is_file() else None
    tested = table[table["subject_id"].isin(set(units["subject_id"]))].drop_duplicates("subject_id")
    summary = {"run": run_dir.name, "level": p.eval_level, "nothing_found": nothing_found, "threshold_rule": "f1",
               "threshold_note": threshold_note,
               "thresholds": thresholds, "coverage": coverage, "min_group_patients": p.min_group_patients,
               "test_coverage": test_coverage(tested, p.min_group_patients, plan),
               "data_problems": demographics.data_problems(coverage),
               "n_boot": p.bootstrap, "ci_level": p.ci_level, "test_units": int(len(units)),
               "age_bands": p.age_bands, "procedure": procedure(rows),
               "groups": fairness.group_sizes(plan, p.min_group_patients),
               "verdicts": verdicts(plan, units["subject_id"].to_numpy(str), attributes, p.min_group_patients),
               "significant": significant(rows).to_dict("records"),
               "exploratory_hits": int((rows["tier"].eq("exploratory") & (rows["p_adjusted"] < 0.05)).sum()),
               "planted": planted_check(rows, planted) if planted else None, "rows": rows.to_dict("records")}
    atomic_write_json(run_dir / FAIRNESS_JSON, jsonable(summary))
    return summary


def test_coverage(tested: pd.DataFrame, min_group_patients: int, plan: dict | None = None) -> dict:
    """How many audited test patients MIMIC-IV covers. The patients it misses are reported, whatever their
    number (fairness.is_coverage: they are the linkage's coverage, not a patient group). Those with an admission
    are the insurance groups' patients (Unknown insurance is also the ED-only), so their count is published
    only where it reveals no hidden insurance group: a shortfall under min_group_patients is shown as such, and
    the count is withheld while the insurance groups hide a cell."""
    total = int(len(tested))
    admitted = int(tested["has_admission"].sum())
    insurance = (plan or {}).get("insurance", {})
    if admitted != total and total - admitted < min_group_patients:
        admitted = f"all but <{min_group_patients}"
    elif admitted != total and (insurance.get("small") or insurance.get("complementary")):
        admitted = "withheld (with the insurance groups it would reveal a hidden group's count)"
    return {"patients": total, "in_mimic_iv": int(tested["in_mimic_iv"].sum()), "with_admission": admitted}


def procedure(rows: pd.DataFrame) -> dict:
    """The decision rule in words and numbers, as fairness.json and the card state it."""
    primary = rows[(rows["tier"] == "primary") & rows["p_value"].notna()]
    exploratory = rows[(rows["tier"] == "exploratory") & rows["p_value"].notna()]
    return {"primary_tests": int(len(primary)), "exploratory_tests": int(len(exploratory)),
            "primary": "macro AUROC gap and underdiagnosis (No Finding false-positive rate) gap per comparison of "
                       "sex, age_band, race, insurance",
            "decision": "Bonferroni over all primary tests of the audit at 0.05 (family-wise); each primary gap's "
                        "interval is simultaneous, so it excludes 0 exactly when the gap is significant",
            "exploratory": "per-finding AUROC, TPR, FPR gaps, missed_pathology, race_sex: Benjamini-Hochberg q, "
                           "per-comparison intervals, no decision; AUPRC and ECE gaps: intervals only"}


def verdicts(plan: dict, subjects: np.ndarray, attributes: pd.DataFrame, min_group_patients: int) -> dict:
    """Per attribute: how many test patients have a known value, and whether any comparison could be made.

    The count is published only where it reveals no hidden cell: with it, the hidden known cells sum to known
    minus the visible ones, and the hidden unknown cells to total minus known minus theirs; a sum over exactly
    one hidden cell is that cell's count, so the number is withheld then."""
    out = {}
    for attribute, part in plan.items():
        known = ~np.array([fairness.is_unknown(v) for v in attributes[attribute].astype(str)], dtype=bool)
        patients = int(len(np.unique(subjects[known])))
        total = int(len(np.unique(subjects)))
        hidden = [v for v in part["patients"] if v in part["small"] | part["complementary"] and part["patients"][v]]
        one_alone = 1 in (sum(not fairness.is_unknown(v) for v in hidden), sum(fairness.is_unknown(v) for v in hidden))
        text_known = (f"{total} test patients; the number with a known value is withheld (it would reveal a "
                      "small group's count)" if one_alone else f"{patients} of {total} test patients with a known value")
        if part["comparisons"]:
            text = f"{len(part['comparisons'])} comparison(s) among {len(part['known'])} groups"
        elif part["complementary"] - {v for v in part["complementary"] if fairness.is_unknown(v)}:
            text = (f"no verdict: a group of fewer than {min_group_patients} patients would be revealed by "
                    "subtraction from the others, so a second group is withheld with it and too few remain to compare")
        else:
            text = (f"no verdict: fewer than two groups with a known value and at least {min_group_patients} "
                    "patients")
        out[attribute] = {"known": text_known, "verdict": text,
                          "enough_known": patients >= 2 * min_group_patients}
    return out


def significant(rows: pd.DataFrame) -> pd.DataFrame:
    """The primary gaps the audit calls significant (Bonferroni), largest first."""
    hits = rows[rows["significant"].fillna(False).astype(bool)].copy()
    return hits.reindex(hits["gap"].abs().sort_values(ascending=False).index)[SHOWN]


def planted_check(rows: pd.DataFrame, planted: dict) -> dict:
    """Did the audit find the disparity the synthetic data planted (PLANTED.json), and nothing elsewhere?

    found: significant primary gaps of the planted group in the under-detection direction (its gap, or the
    opposite of its reference's gap when the comparison is written the other way round); elsewhere:
    significant primary gaps on the attributes where nothing was planted.
    """
    hits = rows[rows["significant"].fillna(False).astype(bool)]
    where = hits[hits["attribute"] == planted["attribute"]]
    sign = where["metric"].map(fairness.UNDER_DETECTION).fillna(0)
    as_group = (where["group"] == planted["group"]) & (sign * where["gap"] > 0)
    as_reference = (where["reference"] == planted["group"]) & (sign * where["gap"] < 0)
    found = where[as_group | as_reference]
    elsewhere = hits[hits["attribute"].isin(planted["unplanted"])]
    compared = bool(((rows["attribute"] == planted["attribute"]) & rows["tier"].eq("primary")
                     & rows["gap"].notna()).any())   # its groups may be withheld, or too small to compare
    return {"planted": planted, "detected": bool(len(found)), "compared": compared,
            "found": found[SHOWN].to_dict("records"),
            "unplanted_clean": elsewhere.empty, "unplanted_significant": elsewhere[SHOWN].to_dict("records")}


def summary_lines(audit: dict) -> list[str]:
    """fairness.json in a few lines (the terminal summary after make audit)."""
    hits = audit["significant"]
    lines = [f"Audit by patient group: {account.audit_verdict(audit)}"]
    lines += [f"  {account.gap_line(h)}, adjusted p {h['p_adjusted']:.2g}" for h in hits[:6]]
    lines += [f"  {a}: {v['verdict']}" for a, v in audit["verdicts"].items() if v["verdict"].startswith("no verdict")]
    if check := audit.get("planted"):
        planted = check["planted"]
        lines.append(f"  synthetic data, planted: {planted['attribute']}={planted['group']} drawn at "
                     f"{planted['signature_strength']} strength -> " + account.planted_word(check)
                     + f" ({len(check['found'])} primary gap(s)); on {', '.join(planted['unplanted'])}: "
                     + ("none significant" if check["unplanted_clean"]
                        else f"{len(check['unplanted_significant'])} significant (false positives)"))
    return lines


# --------------------------------------------------------------------------- plots
def _forest(part: pd.DataFrame, title: str, xlabel: str, colour_by_decision: bool):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.24 * max(len(part), 4) + 1.2), layout="constrained")
    ax = fig.subplots()
    if part.empty:
        ax.text(0.5, 0.5, "no comparison has enough patients", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(len(part))
    hit = part["significant"].fillna(False).astype(bool).to_numpy() if colour_by_decision else np.zeros(len(part), bool)
    colors = np.where(hit, "#c00000", "#4c72b0").tolist()   # errorbar takes one colour only
    ax.hlines(y, part["gap_lo"], part["gap_hi"], colors=colors, lw=1.2)
    ax.scatter(part["gap"], y, c=colors, s=14, zorder=3)
    ax.set_yticks(y, [f"{g} vs {r} · {f}" for g, r, f in zip(part["group"], part["reference"], part["finding"])],
                  fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def plot_primary(rows: pd.DataFrame, metric: str = "auroc_macro"):
    """The audit's decisions: each primary gap with its simultaneous interval; red where significant."""
    part = rows[(rows["tier"] == "primary") & (rows["metric"] == metric)].dropna(subset=["gap"])
    label = ("group minus reference; simultaneous (Bonferroni) intervals; red: significant, which is exactly an "
             "interval excluding 0")
    return _forest(part, f"{metric}: primary comparisons", label, colour_by_decision=True)


def plot_gaps(rows: pd.DataFrame, attribute: str, metric: str = "auroc"):
    """Exploratory: one attribute's per-finding gaps with per-comparison 95% intervals, no decision drawn."""
    part = rows[(rows["attribute"] == attribute) & (rows["metric"] == metric) & ~rows["finding"].isin(["any", "macro"])]
    part = part.dropna(subset=["gap"])
    return _forest(part, f"{attribute}, {metric} per finding (exploratory)",
                   "group minus reference; per-comparison 95% intervals (not adjusted: no decision here)",
                   colour_by_decision=False)


def plot_underdiagnosis(rows: pd.DataFrame, nothing_found: str = fairness.NOTHING_FOUND):
    """Per attribute and group: the "nothing found" label's false-positive rate with its 95% interval."""
    from matplotlib.figure import Figure

    part = rows[(rows["metric"] == "underdiagnosis") & rows["gap"].isna() & rows["value"].notna()]
    attributes = [a for a in fairness.ATTRIBUTES if a in set(part["attribute"])]
    fig = Figure(figsize=(3.2 * max(len(attributes), 1), 3.6), layout="constrained")
    axes = fig.subplots(1, max(len(attributes), 1), sharey=True, squeeze=False)[0]
    for ax, attribute in zip(axes, attributes):
        bars = part[part["attribute"] == attribute]
        err = np.vstack([bars["value"] - bars["lo"], bars["hi"] - bars["value"]]).clip(min=0)
        ax.bar(np.arange(len(bars)), bars["value"], yerr=np.nan_to_num(err), color="#4c72b0", capsize=3)
        ax.set_xticks(np.arange(len(bars)), bars["group"], rotation=60, ha="right", fontsize=7)
        ax.set_title(attribute, fontsize=9)
    axes[0].set_ylabel(f"underdiagnosis: '{nothing_found}' called\nwhen {nothing_found} is 0 (95% CI)", fontsize=8)
    return fig
