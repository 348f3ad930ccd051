"""The audit by patient group: per-group figures, each group's gap from the rest, underdiagnosis.

    rows = audit(units, groups, thresholds, n_boot=1000, seed=0, min_group_patients=30)

`units` are the scored test rows (images or studies, as the run's eval_level says) with p_<finding>
and <finding> columns and subject_id; `groups` holds one column per attribute (sex, age_band,
race, insurance, race_sex) aligned with them; `thresholds` are the validation-chosen ones
({finding: value}), applied unchanged. For each attribute, group and finding:
- AUROC, AUPRC and ECE within the group; TPR, FPR and FNR at the threshold;
- underdiagnosis (finding "any"): among units with at least one pathology positive, the share
  predicted "No Finding" at its threshold (Seyyed-Kalantari et al., Nature Medicine 2021);
- gap = the group's value minus the rest of the test set's, with a percentile CI and a two-sided
  p-value (the gap over its bootstrap standard error; rates resampled with Agresti-Caffo's one
  added hit and miss, so that 10 of 10 does not look certain) from the same patient resamples (one draw of
  patients serves every group, so a patient's images move together), and p-values adjusted across groups x findings of each
  (attribute, metric): Holm (family-wise) and Benjamini-Hochberg (false discovery rate). ECE gaps
  get a CI but no p-value: ECE grows as a sample shrinks, so a small group's gap is partly its size.
Groups with fewer than min_group_patients patients are reported as "<N" with no figures
(small cells identify people and give no stable estimate) and are never plotted; a figure with
fewer than min_cases positives or negatives in the group or the rest is left empty.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import metrics
from .labels import FINDINGS

ATTRIBUTES = ("sex", "age_band", "race", "insurance", "race_sex")
RANKING = ("auroc", "auprc", "ece")
AT_THRESHOLD = ("tpr", "fpr", "fnr")
AGRESTI_CAFFO = 1.0   # pseudo-counts per rate in the resamples (point estimates use none)
PATHOLOGIES = [f for f in FINDINGS if f not in ("No Finding", "Support Devices")]
PLANTED_FILE = "PLANTED.json"   # synth_mimic_iv.PLANTED_FILE: what the stand-in planted
UNDER_DETECTION = {"auroc": -1, "auprc": -1, "tpr": -1, "fnr": 1, "underdiagnosis": 1}   # sign of the gap
COLUMNS = ["attribute", "group", "finding", "metric", "value", "lo", "hi", "n_patients", "gap", "gap_lo",
           "gap_hi", "p_value", "p_holm", "p_bh"]


def _adjusted(p, step) -> np.ndarray:
    """Adjusted p-values: `step` maps the m known p-values, sorted ascending, to their adjusted values;
    NaN stays NaN and nothing exceeds 1."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    if len(order):
        out[order] = np.minimum(step(p[order], len(order)), 1.0)
    return out


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values."""
    return _adjusted(p, lambda ps, m: np.maximum.accumulate((m - np.arange(m)) * ps))


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values."""
    return _adjusted(p, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


def _rates(y, called, w, prior: float = 0.0):
    """TPR, FPR, FNR per finding for the (N, b) weights w; y (N, F) with NaN masked, called (N, F) bools.

    prior adds that many hits and misses to every count (Agresti-Caffo: 1), which the resamples use so
    that a rate of 10 of 10 does not get a zero-width interval.
    """
    known = ~np.isnan(y)
    pos, neg = np.where(known, np.nan_to_num(y), 0.0), np.where(known, 1 - np.nan_to_num(y), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (w.T @ (pos * called) + prior) / (w.T @ pos + 2 * prior)
        fpr = (w.T @ (neg * called) + prior) / (w.T @ neg + 2 * prior)
    return {"tpr": tpr, "fpr": fpr, "fnr": 1 - tpr}


def _underdiagnosis(has_finding, said_no_finding, w, prior: float = 0.0):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w.T @ (has_finding * said_no_finding) + prior) / (w.T @ has_finding + 2 * prior)


def _statistics(plan, y, called, has_finding, said_no_finding, w, prior: float = 0.0) -> dict[str, np.ndarray]:
    """Every audited statistic for weights w (N, b): (b, F) arrays, underdiagnosis (b,)."""
    ranked = metrics._stats(plan, w)
    return {**{m: ranked[m] for m in RANKING}, **_rates(y, called, w, prior),
            "underdiagnosis": _underdiagnosis(has_finding, said_no_finding, w, prior)}


def _enough(metric: str, pos: np.ndarray, neg: np.ndarray, cases: float, min_cases: int) -> np.ndarray:
    """Per finding: whether the group (and the rest) hold enough cases for the metric to mean anything."""
    if metric in ("auroc", "auprc"):
        return (pos >= min_cases) & (neg >= min_cases)
    if metric in ("tpr", "fnr"):
        return pos >= min_cases
    if metric == "fpr":
        return neg >= min_cases
    if metric == "underdiagnosis":
        return np.array([cases >= min_cases])
    return pos + neg >= min_cases


def audit(units: pd.DataFrame, groups: pd.DataFrame, thresholds: dict, n_boot: int = 1000, seed: int = 0,
          ci_level: float = 0.95, min_group_patients: int = 30, attributes=ATTRIBUTES,
          min_cases: int = 10) -> pd.DataFrame:
    """One row per (attribute, group, finding, metric) with COLUMNS; see the module docstring.

    A figure whose group or rest has fewer than min_cases positives (or negatives, as the metric
    needs) is left empty: a TPR of 2 of 2 has a bootstrap interval, but it means nothing, and its
    p-value is kept out of the adjustment.
    """
    y = units[FINDINGS].to_numpy(np.float64)
    p = units[[f"p_{f}" for f in FINDINGS]].to_numpy(np.float64)
    cut = np.array([thresholds[f] for f in FINDINGS], dtype=float)
    called = p >= cut
    has_finding = (np.nan_to_num(units[PATHOLOGIES].to_numpy(np.float64)) == 1).any(1).astype(float)
    said_no_finding = called[:, FINDINGS.index("No Finding")].astype(float)
    plan = metrics._plan(y, p, list(FINDINGS))
    subjects = units["subject_id"].to_numpy(str)
    args = (plan, y, called, has_finding, said_no_finding)
    everyone = np.ones((len(units), 1))
    masks = {(a, g): (groups[a].to_numpy() == g) for a in attributes for g in sorted(pd.unique(groups[a]))}
    patients = {key: len(np.unique(subjects[mask])) for key, mask in masks.items()}
    kept = {key: mask for key, mask in masks.items() if patients[key] >= min_group_patients}

    def point(mask):
        return _statistics(*args, everyone * mask[:, None])

    estimates = {key: (point(mask), point(~mask)) for key, mask in kept.items()}
    pooled = point(np.ones(len(units), bool))
    samples = {key: ([], []) for key in kept}
    for w in metrics.patient_weights(subjects, len(units), n_boot, seed, chunk=64):
        for key, mask in kept.items():
            inside, outside = samples[key]
            inside.append(_statistics(*args, w * mask[:, None], AGRESTI_CAFFO))
            outside.append(_statistics(*args, w * ~mask[:, None], AGRESTI_CAFFO))
    tail = 100 * (1 - ci_level) / 2
    rows = []
    for (attribute, group), mask in masks.items():
        n = patients[(attribute, group)]
        if (attribute, group) not in kept:
            rows.append({"attribute": attribute, "group": group, "finding": "all", "metric": "suppressed",
                         "n_patients": f"<{min_group_patients}"})
            continue
        (value, rest), (inside, outside) = estimates[(attribute, group)], samples[(attribute, group)]
        counts = [(np.nansum(y[m] == 1, 0), np.nansum(y[m] == 0, 0), has_finding[m].sum()) for m in (mask, ~mask)]
        for metric in (*RANKING, *AT_THRESHOLD, "underdiagnosis"):
            enough = (_enough(metric, *counts[0], min_cases) & _enough(metric, *counts[1], min_cases))
            boot_in = np.concatenate([s[metric] for s in inside])
            boot_gap = boot_in - np.concatenate([s[metric] for s in outside])
            names = ["any"] if metric == "underdiagnosis" else FINDINGS
            for j, finding in enumerate(names):
                if not enough[j]:
                    rows.append({"attribute": attribute, "group": group, "finding": finding, "metric": metric,
                                 "n_patients": n})
                    continue
                col = (lambda a: a[:, j]) if metric != "underdiagnosis" else (lambda a: a)
                own, gap = col(boot_in), col(boot_gap)
                v = float(col(value[metric])[0])
                g = v - float(col(rest[metric])[0])
                floor = _null_se(metric, float(col(pooled[metric])[0]), j, counts)
                # ECE grows as a sample shrinks (binning noise), so a small group's ECE gap is partly its
                # size: reported with its CI, not tested.
                tested = metric != "ece"
                rows.append({"attribute": attribute, "group": group, "finding": finding, "metric": metric,
                             "value": v, **_interval(own, tail, ""), "n_patients": n, "gap": g,
                             **_interval(gap, tail, "gap_"),
                             "p_value": _p_two_sided(g, gap, floor) if tested else np.nan})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for (attribute, metric), family in table[table["metric"] != "suppressed"].groupby(["attribute", "metric"]):
        table.loc[family.index, "p_holm"] = holm(family["p_value"])
        table.loc[family.index, "p_bh"] = benjamini_hochberg(family["p_value"])
    return table


def _interval(samples: np.ndarray, tail: float, prefix: str) -> dict:
    valid = samples[~np.isnan(samples)]
    if not valid.size:
        return {f"{prefix}lo": np.nan, f"{prefix}hi": np.nan}
    lo, hi = np.percentile(valid, [tail, 100 - tail])
    return {f"{prefix}lo": float(lo), f"{prefix}hi": float(hi)}


def _hanley_mcneil(auc: float, n_pos: float, n_neg: float) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC of `auc` on n_pos positives, n_neg negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(np.sqrt(max(variance, 0.0)))


def _null_se(metric: str, pooled: float, j: int, counts) -> float:
    """The gap's standard error if group and rest shared the whole test set's value (0 for ECE).

    A bootstrap cannot see the spread of a rate of 24 of 24, or of an AUROC of 1.0: every resample
    repeats it. The two-proportion test's (and Hanley-McNeil's) null standard error is the floor.
    """
    (pos_g, neg_g, cases_g), (pos_r, neg_r, cases_r) = counts
    if metric in ("tpr", "fnr", "fpr", "underdiagnosis"):
        n_g, n_r = {"fpr": (neg_g[j], neg_r[j]), "underdiagnosis": (cases_g, cases_r)}.get(
            metric, (pos_g[j], pos_r[j]))
        rate = pooled if metric != "fnr" else 1 - pooled
        return float(np.sqrt(rate * (1 - rate) * (1 / n_g + 1 / n_r)))
    if metric in ("auroc", "auprc") and not np.isnan(pooled):
        auc = pooled if metric == "auroc" else 0.5   # AUPRC: a generous floor at chance ranking
        return float(np.hypot(_hanley_mcneil(auc, pos_g[j], neg_g[j]), _hanley_mcneil(auc, pos_r[j], neg_r[j])))
    return 0.0


def _p_two_sided(gap: float, gaps: np.ndarray, floor: float = 0.0) -> float:
    """Two-sided p of a zero gap: the gap over its standard error (a Wald test).

    The standard error is the bootstrap's (it follows the patients' clustering), never below the
    null standard error `floor`. Counting resamples beyond 0 instead cannot go below 1/n_boot, which
    a Holm adjustment over 28 or more tests lifts above any usual level.
    """
    from statistics import NormalDist

    valid = gaps[~np.isnan(gaps)]
    if valid.size < 2 or np.isnan(gap):
        return np.nan
    se = max(float(np.std(valid, ddof=1)), floor)
    if se == 0:
        return 1.0 if gap == 0 else 0.0
    return float(2 * (1 - NormalDist().cdf(abs(gap) / se)))


def with_intersection(demographics: pd.DataFrame) -> pd.DataFrame:
    """The demographics table with race_sex (e.g. 'Black / F') for the intersectional audit."""
    return demographics.assign(race_sex=demographics["race"].astype(str) + " / " + demographics["sex"].astype(str))


# --------------------------------------------------------------------------- a run
def audit_run(run_dir, p, progress: bool = False) -> dict:
    """Demographics for the run's cohort (demographics.csv), the audit of its test units (fairness.csv,
    fairness.json); the thresholds are metrics.json's validation-chosen max-F1 ones (fixed 0.5 without)."""
    from pathlib import Path

    from . import cohort as cohort_mod
    from . import demographics, levels
    from .evaluate import read_metrics, read_predictions
    from .fsutil import atomic_write_csv, atomic_write_json

    run_dir = Path(run_dir)
    report = read_metrics(run_dir)
    rule = "f1" if report["thresholds"]["chosen_on"] else "fixed_0.5"
    thresholds = {f: report["thresholds"]["values"][f].get(rule, 0.5) for f in FINDINGS}
    cohort = cohort_mod.read_cohort(run_dir / "cohort.csv")
    table, coverage = demographics.demographics_for_cohort(cohort, p.data_root, p.resolved_mimic_iv_root(),
                                                           p.race_policy)
    atomic_write_csv(run_dir / "demographics.csv", table)   # per image: stays in the run folder
    test = read_predictions(run_dir)
    test = test[test["split"] == "test"]
    units = levels.rows_at(test, p.eval_level, p.study_aggregate).reset_index(drop=True)
    key = "study_id" if p.eval_level == "study" else "dicom_id"
    attributes = with_intersection(table.drop_duplicates(key).set_index(key)).loc[units[key].to_numpy()]
    rows = audit(units, attributes.reset_index(drop=True), thresholds, n_boot=p.bootstrap, seed=p.seed,
                 ci_level=p.ci_level, min_group_patients=p.min_group_patients)
    atomic_write_csv(run_dir / "fairness.csv", rows)
    planted_file = p.resolved_mimic_iv_root() / PLANTED_FILE   # only the synthetic stand-in has one
    planted = json.loads(planted_file.read_text()) if planted_file.is_file() else None
    summary = {"run": run_dir.name, "level": p.eval_level, "threshold_rule": rule, "thresholds": thresholds,
               "coverage": coverage, "min_group_patients": p.min_group_patients, "n_boot": p.bootstrap,
               "ci_level": p.ci_level, "test_units": int(len(units)),
               "groups": group_sizes(attributes, units["subject_id"], p.min_group_patients),
               "significant": significant(rows).to_dict("records"),
               "planted": planted_check(rows, planted) if planted else None, "rows": rows.to_dict("records")}
    from .evaluate import _jsonable

    atomic_write_json(run_dir / "fairness.json", _jsonable(summary))
    return summary


def group_sizes(attributes: pd.DataFrame, subjects: pd.Series, min_group_patients: int) -> list[dict]:
    """Patients per (attribute, group); a small group's count shown as '<N'."""
    out = []
    for attribute in ATTRIBUTES:
        counts = pd.Series(subjects.to_numpy()).groupby(attributes[attribute].to_numpy()).nunique()
        out += [{"attribute": attribute, "group": g,
                 "patients": int(n) if n >= min_group_patients else f"<{min_group_patients}"}
                for g, n in counts.items()]
    return out


def significant(rows: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The gaps that survive Holm at alpha, largest first."""
    hits = rows[(rows["p_holm"] < alpha)].copy()
    return hits.reindex(hits["gap"].abs().sort_values(ascending=False).index)[
        ["attribute", "group", "finding", "metric", "value", "gap", "gap_lo", "gap_hi", "p_holm", "n_patients"]]


def planted_check(rows: pd.DataFrame, planted: dict, alpha: float = 0.05) -> dict:
    """Did the audit find the disparity the synthetic data planted (PLANTED.json), and nothing elsewhere?

    found: the planted group's gaps in the under-detection direction whose CI excludes 0 and whose
    Holm p < alpha; elsewhere: Holm-significant gaps on the attributes where nothing was planted.
    """
    hits = rows[rows["p_holm"] < alpha]
    mine = hits[(hits["attribute"] == planted["attribute"]) & (hits["group"] == planted["group"])]
    sign = mine["metric"].map(UNDER_DETECTION)
    found = mine[((sign < 0) & (mine["gap_hi"] < 0)) | ((sign > 0) & (mine["gap_lo"] > 0))]
    elsewhere = hits[hits["attribute"].isin(planted["unplanted"])]
    keep = ["attribute", "group", "finding", "metric", "value", "gap", "gap_lo", "gap_hi", "p_holm"]
    return {"planted": planted, "detected": bool(len(found)), "found": found[keep].to_dict("records"),
            "unplanted_clean": elsewhere.empty, "unplanted_significant": elsewhere[keep].to_dict("records")}


def plot_gaps(rows: pd.DataFrame, attribute: str, metric: str = "auroc"):
    """Forest plot: each group's gap from the rest per finding, with its CI; Holm-significant in red."""
    import matplotlib.pyplot as plt

    part = rows[(rows["attribute"] == attribute) & (rows["metric"] == metric)].dropna(subset=["gap"])
    fig, ax = plt.subplots(figsize=(7, 0.22 * max(len(part), 4) + 1))
    if part.empty:
        ax.text(0.5, 0.5, f"no group of {attribute} has enough patients", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        plt.close(fig)
        return fig
    y = np.arange(len(part))
    colors = np.where(part["p_holm"] < 0.05, "#c00000", "#4c72b0").tolist()   # errorbar takes one colour only
    ax.hlines(y, part["gap_lo"].fillna(part["gap"]), part["gap_hi"].fillna(part["gap"]), colors=colors, lw=1.2)
    ax.scatter(part["gap"], y, c=colors, s=14, zorder=3)
    ax.set_yticks(y, [f"{g} · {f}" for g, f in zip(part["group"], part["finding"])], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"{metric.upper()} gap: group minus the rest (patient-bootstrap CI; red: Holm p < 0.05)")
    ax.set_title(attribute)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_underdiagnosis(rows: pd.DataFrame):
    """Per attribute and group: the share of patients with a finding predicted 'No Finding', with its CI."""
    import matplotlib.pyplot as plt

    part = rows[(rows["metric"] == "underdiagnosis")].dropna(subset=["value"])
    attributes = [a for a in ATTRIBUTES if a in set(part["attribute"])]
    fig, axes = plt.subplots(1, max(len(attributes), 1), figsize=(3.2 * max(len(attributes), 1), 3.4),
                             sharey=True, squeeze=False)
    for ax, attribute in zip(axes[0], attributes):
        bars = part[part["attribute"] == attribute]
        err = np.vstack([bars["value"] - bars["lo"], bars["hi"] - bars["value"]]).clip(min=0)
        colors = np.where(bars["p_holm"] < 0.05, "#c00000", "#4c72b0").tolist()
        ax.bar(np.arange(len(bars)), bars["value"], yerr=np.nan_to_num(err), color=colors, capsize=3)
        ax.set_xticks(np.arange(len(bars)), bars["group"], rotation=60, ha="right", fontsize=7)
        ax.set_title(attribute, fontsize=9)
    axes[0][0].set_ylabel("underdiagnosis rate\n(finding present, 'No Finding' predicted)")
    fig.tight_layout()
    plt.close(fig)
    return fig
