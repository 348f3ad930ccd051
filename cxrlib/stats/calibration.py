"""Calibration: reliability curves, expected calibration error and the Brier score, per finding and pooled."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import MetricsInputError, check_inputs


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(p, np.linspace(0, 100, n_bins + 1)) if p.size else np.linspace(0, 1, n_bins + 1)
    raise MetricsInputError(f"strategy = {strategy!r}: use 'uniform' (equal-width bins) or 'quantile'")


def reliability_curve(y, p, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Bins of predicted probability: bounds, count, mean prediction and observed positive rate.

    y and p are 1-D (NaN labels dropped). Binning as scikit-learn's calibration_curve; empty
    bins are kept with count 0 so every diagram shows the same bins.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    if p.size and (p.min() < 0 or p.max() > 1):
        raise MetricsInputError("calibration needs probabilities in [0, 1]; apply a sigmoid to the logits first")
    edges = _bin_edges(p, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = np.bincount(ids, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(ids, weights=y, minlength=n_bins) / count
    return pd.DataFrame({"bin": np.arange(n_bins), "lo": edges[:-1], "hi": edges[1:], "count": count,
                         "mean_pred": mean_pred, "frac_pos": frac_pos})


def ece(y, p, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error: sum over bins of (count / n) * |positive rate - mean prediction|."""
    curve = reliability_curve(y, p, n_bins, strategy)
    used = curve[curve["count"] > 0]
    n = used["count"].sum()
    return float((used["count"] * (used["frac_pos"] - used["mean_pred"]).abs()).sum() / n) if n else float("nan")


def brier(y, p) -> float:
    """Mean squared difference between probability and label (NaN labels dropped)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    known = ~np.isnan(y)
    return float(np.mean((p[known] - y[known]) ** 2)) if known.any() else float("nan")


def calibration(y, p, n_bins: int = 10, strategy: str = "uniform", findings=None) -> dict:
    """ECE and Brier score per finding and pooled over all unmasked cells."""
    y, p, findings = check_inputs(y, p, findings)
    per = {name: {"n": int((~np.isnan(y[:, j])).sum()), "ece": ece(y[:, j], p[:, j], n_bins, strategy),
                  "brier": brier(y[:, j], p[:, j])} for j, name in enumerate(findings)}
    pooled = {"n": int((~np.isnan(y)).sum()), "ece": ece(y, p, n_bins, strategy), "brier": brier(y, p)}
    return {"n_bins": n_bins, "strategy": strategy, "per_finding": per, "pooled": pooled}
