"""Two sets of predictions of the same rows, scored on the same patient resamples: their differences with
percentile CIs and bootstrap p-values (make compare's paired comparison, the recalibration's before/after,
external validation's drop). The resampling machinery is metrics.py's.
"""
from __future__ import annotations

import numpy as np

from .calibration import calibration
from .inputs import check_inputs, json_number
from .metrics import (
    CONDITIONAL_SHARE,
    MIN_POSITIVES,
    bootstrap_plans,
    check_boot,
    patients_per_class,
    percentile_interval,
    ranking_metrics,
    resample_plan,
)


def bootstrap_p(diffs: np.ndarray) -> tuple[float, int]:
    """(two-sided bootstrap p of a zero difference, resamples used), never 0.

    p = 2 * (1 + k) / (1 + B) with k the resamples on the far side of 0 from the estimate's side
    (min of those <= 0 and those >= 0), clipped to 1: the +1 counts the observed data as one resample
    (Davison and Hinkley 1997, 4.4), so B resamples can show p no smaller than 2 / (B + 1), and a Holm
    adjustment over m tests no smaller than m times that.
    """
    finite = diffs[~np.isnan(diffs)]
    if not finite.size:
        return float("nan"), 0
    k = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
    return min(1.0, 2 * (1 + k) / (1 + finite.size)), int(finite.size)


def paired_bootstrap(y, p_a, p_b, groups=None, n_boot: int = 1000, seed: int = 0, ci_level: float = 0.95,
                     findings=None, n_bins: int = 10, progress: bool = False,
                     min_positives: int = MIN_POSITIVES) -> dict:
    """Run B minus run A on the same test rows, both scored on the same patient resamples.

    Each figure is {a, b, diff, lo, hi, p_value, n_boot_valid, conditional} with diff = b - a and
    p_value from bootstrap_p. The macro averages cover `macro_findings` (min_positives, as summarize);
    a finding outside them has its difference but no CI and no p.
    """
    check_boot(n_boot, ci_level)
    y, p_a, findings = check_inputs(y, p_a, findings, "p_a")
    _, p_b, _ = check_inputs(y, p_b, findings, "p_b")
    patients = patients_per_class(y, groups)   # once: the labels are shared
    points = [ranking_metrics(y, p, findings, min_positives, groups, patients) for p in (p_a, p_b)]
    cals = [calibration(y, p, n_bins, "uniform", findings) for p in (p_a, p_b)]
    plans = [resample_plan(y, p, findings, n_bins, min_positives, groups, patients) for p in (p_a, p_b)]
    boot_a, boot_b = bootstrap_plans(plans, y, groups, n_boot, seed, progress)

    def compare(a, b, key, column=None, estimable=True):
        da, db = boot_a[key], boot_b[key]
        diff = (db - da) if column is None else (db[:, column] - da[:, column])
        lo, hi, valid = percentile_interval(diff, ci_level)
        p_value, _ = bootstrap_p(diff)
        if not estimable:
            lo = hi = p_value = float("nan")
        return {**{k: json_number(v) for k, v in dict(a=a, b=b, diff=b - a, lo=lo, hi=hi, p_value=p_value).items()},
                "n_boot_valid": valid,
                "conditional": bool(estimable and valid < CONDITIONAL_SHARE * n_boot)}

    pa, pb = points
    return {
        "n_images": int(len(y)), "n_boot": n_boot, "seed": seed, "ci_level": ci_level,
        "diff": "b - a",
        "macro": {m: compare(pa["macro"][m], pb["macro"][m], f"{m}_macro") for m in ("auroc", "auprc")},
        "micro": {m: compare(pa["micro"][m], pb["micro"][m], f"{m}_micro") for m in ("auroc", "auprc")},
        "calibration": {m: compare(cals[0]["pooled"][m], cals[1]["pooled"][m], f"{m}_pooled")
                        for m in ("ece", "brier")},
        "per_finding": {name: {m: compare(pa["per_finding"][name][m], pb["per_finding"][name][m], m, j,
                                          pa["per_finding"][name]["estimable"])
                               for m in ("auroc", "auprc")} for j, name in enumerate(findings)},
        "excluded": pa["excluded"],
        "macro_findings": pa["macro_findings"],
        "not_estimable": pa["not_estimable"],
    }
