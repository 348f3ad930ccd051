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
  p-value (the gap over its bootstrap standard error) from the same patient resamples (one draw of
  patients serves every group, so a patient's images move together), and p-values adjusted across groups x findings of each
  (attribute, metric): Holm (family-wise) and Benjamini-Hochberg (false discovery rate).
Groups with fewer than min_group_patients patients are reported as "<N" with no figures
(small cells identify people and give no stable estimate) and are never plotted.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics
from .labels import FINDINGS

ATTRIBUTES = ("sex", "age_band", "race", "insurance", "race_sex")
RANKING = ("auroc", "auprc", "ece")
AT_THRESHOLD = ("tpr", "fpr", "fnr")
PATHOLOGIES = [f for f in FINDINGS if f not in ("No Finding", "Support Devices")]
COLUMNS = ["attribute", "group", "finding", "metric", "value", "lo", "hi", "n_patients", "gap", "gap_lo",
           "gap_hi", "p_value", "p_holm", "p_bh"]


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    m = len(order)
    if m:
        scaled = p[order] * m / np.arange(1, m + 1)
        out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


def _rates(y, called, w):
    """TPR, FPR, FNR per finding for the (N, b) weights w; y (N, F) with NaN masked, called (N, F) bools."""
    known = ~np.isnan(y)
    pos, neg = np.where(known, np.nan_to_num(y), 0.0), np.where(known, 1 - np.nan_to_num(y), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (w.T @ (pos * called)) / (w.T @ pos)
        fpr = (w.T @ (neg * called)) / (w.T @ neg)
    return {"tpr": tpr, "fpr": fpr, "fnr": 1 - tpr}


def _underdiagnosis(has_finding, said_no_finding, w):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w.T @ (has_finding * said_no_finding)) / (w.T @ has_finding)


def _statistics(plan, y, called, has_finding, said_no_finding, w) -> dict[str, np.ndarray]:
    """Every audited statistic for weights w (N, b): (b, F) arrays, underdiagnosis (b,)."""
    ranked = metrics._stats(plan, w)
    return {**{m: ranked[m] for m in RANKING}, **_rates(y, called, w),
            "underdiagnosis": _underdiagnosis(has_finding, said_no_finding, w)}


def audit(units: pd.DataFrame, groups: pd.DataFrame, thresholds: dict, n_boot: int = 1000, seed: int = 0,
          ci_level: float = 0.95, min_group_patients: int = 30, attributes=ATTRIBUTES) -> pd.DataFrame:
    """One row per (attribute, group, finding, metric) with COLUMNS; see the module docstring."""
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
    samples = {key: ([], []) for key in kept}
    for w in metrics.patient_weights(subjects, len(units), n_boot, seed, chunk=64):
        for key, mask in kept.items():
            inside, outside = samples[key]
            inside.append(_statistics(*args, w * mask[:, None]))
            outside.append(_statistics(*args, w * ~mask[:, None]))
    tail = 100 * (1 - ci_level) / 2
    rows = []
    for (attribute, group), mask in masks.items():
        n = patients[(attribute, group)]
        if (attribute, group) not in kept:
            rows.append({"attribute": attribute, "group": group, "finding": "all", "metric": "suppressed",
                         "n_patients": f"<{min_group_patients}"})
            continue
        (value, rest), (inside, outside) = estimates[(attribute, group)], samples[(attribute, group)]
        for metric in (*RANKING, *AT_THRESHOLD, "underdiagnosis"):
            boot_in = np.concatenate([s[metric] for s in inside])
            boot_gap = boot_in - np.concatenate([s[metric] for s in outside])
            names = ["any"] if metric == "underdiagnosis" else FINDINGS
            for j, finding in enumerate(names):
                col = (lambda a: a[:, j]) if metric != "underdiagnosis" else (lambda a: a)
                own, gap = col(boot_in), col(boot_gap)
                v = float(col(value[metric])[0])
                g = v - float(col(rest[metric])[0])
                rows.append({"attribute": attribute, "group": group, "finding": finding, "metric": metric,
                             "value": v, **_interval(own, tail, ""), "n_patients": n, "gap": g,
                             **_interval(gap, tail, "gap_"), "p_value": _p_two_sided(g, gap)})
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


def _p_two_sided(gap: float, gaps: np.ndarray) -> float:
    """Two-sided p of a zero gap from the gap's bootstrap standard error (a Wald test).

    Counting resamples beyond 0 cannot go below 1/n_boot, which a Holm adjustment over 28 or more
    tests then lifts above any usual level; the standard error gives a p-value that can.
    """
    from statistics import NormalDist

    valid = gaps[~np.isnan(gaps)]
    if valid.size < 2 or np.isnan(gap):
        return np.nan
    se = float(np.std(valid, ddof=1))
    if se == 0:
        return 1.0 if gap == 0 else 0.0
    return float(2 * (1 - NormalDist().cdf(abs(gap) / se)))


def with_intersection(demographics: pd.DataFrame) -> pd.DataFrame:
    """The demographics table with race_sex (e.g. 'Black / F') for the intersectional audit."""
    return demographics.assign(race_sex=demographics["race"].astype(str) + " / " + demographics["sex"].astype(str))
