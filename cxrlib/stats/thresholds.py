"""Decision thresholds: chosen on the validation split (max F1, Youden's J), counted on the test split."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from .inputs import MetricsInputError, check_inputs


def choose_thresholds(y_val, p_val, findings=None) -> dict:
    """Per finding, the max-F1 and the Youden's J threshold, from the VALIDATION split only.

    An image counts as positive when p >= threshold. Never pass test data here: a threshold
    picked on the test set makes every test figure at that threshold optimistic. NaN where the
    finding has one class on validation.
    """
    y, p, findings = check_inputs(y_val, p_val, findings, "p_val")
    chosen = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(y[:, j])
        t, s = y[known, j], p[known, j]
        if not 0 < t.sum() < t.size:
            chosen[name] = {"f1": float("nan"), "youden": float("nan")}
            continue
        precision, recall, cut = precision_recall_curve(t, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        fpr, tpr, roc_cut = roc_curve(t, s, drop_intermediate=False)
        best = roc_cut[np.argmax(tpr - fpr)]
        if np.isinf(best):  # nothing beats calling every image negative: a cut above every score
            best = np.nextafter(s.max(), np.inf)
        chosen[name] = {"f1": float(cut[np.argmax(f1)]), "youden": float(best)}
    return chosen


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def threshold_metrics(y_test, p_test, thresholds: dict, findings=None) -> pd.DataFrame:
    """Counts and rates on the test split at thresholds chosen on validation (choose_thresholds).

    One row per finding and rule: threshold, n, TP, FP, TN, FN, sensitivity, specificity, PPV,
    NPV, F1. Rates with an empty denominator are NaN.
    """
    y, p, findings = check_inputs(y_test, p_test, findings, "p_test")
    missing = [f for f in findings if f not in thresholds]
    if missing:
        raise MetricsInputError(f"thresholds has no entry for {missing}; build it with choose_thresholds(y_val, p_val)")
    rows = []
    for j, name in enumerate(findings):
        known = ~np.isnan(y[:, j])
        t, s = y[known, j] == 1, p[known, j]
        for rule, cut in thresholds[name].items():
            row = {"finding": name, "rule": rule, "threshold": cut, "n": int(t.size)}
            if np.isnan(cut):
                rows.append(row)
                continue
            called = s >= cut
            tp, fp = int((called & t).sum()), int((called & ~t).sum())
            fn, tn = int((~called & t).sum()), int((~called & ~t).sum())
            rows.append({**row, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                         "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
                         "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
                         "f1": _ratio(2 * tp, 2 * tp + fp + fn)})
    columns = ["finding", "rule", "threshold", "n", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv", "f1"]
    out = pd.DataFrame(rows).reindex(columns=columns)
    return out.astype({c: "Int64" for c in ("n", "tp", "fp", "tn", "fn")})
