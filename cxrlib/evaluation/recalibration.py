"""Post-hoc recalibration, fitted on the validation split only and applied to every split.

`calibration: temperature` divides each finding's logit by its own temperature T > 0, the one that
minimises the validation log loss (Guo et al. 2017, per output). `isotonic` fits a non-decreasing
step-wise-linear map per finding (sklearn's IsotonicRegression, clipped outside the validation
range). Both are stored as plain numbers (T, or the map's knots) so that predict, export and a
reader without sklearn apply exactly the same function.

Temperature scaling is strictly increasing, so it leaves AUROC, AUPRC and the validation-chosen
calls unchanged; isotonic maps can tie scores and move them a little. The headline figures are the
model's own scores either way; recalibration answers "are the probabilities right", and notebook 03
shows reliability, ECE and Brier before and after, on the same patient resamples.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..stats.calibration import reliability_curve

METHODS = ("none", "temperature", "isotonic")
EPS = 1e-7   # probabilities are clipped this far from 0 and 1 before a logit (float32 scores reach both)


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_temperature(y, p) -> float:
    """The T > 0 minimising the mean log loss of sigmoid(logit(p) / T) on labelled rows.

    The loss is convex in 1/T, so a bracketed scalar search on log T finds its one minimum.
    """
    from scipy.optimize import minimize_scalar

    z, t = logit(p), np.asarray(y, dtype=np.float64)

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - t * s))   # BCE with logits, stable in both tails

    best = minimize_scalar(loss, bounds=(np.log(1e-2), np.log(1e2)), method="bounded",
                           options={"xatol": 1e-10, "maxiter": 500})
    return float(np.exp(best.x))


def fit_isotonic(y, p) -> dict:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}


def fit(method: str, y_val, p_val, findings) -> dict:
    """{method, fitted_on, per_finding: {finding: {T} | {x, y} | None}, notes}. None: left as it was
    (one class, or no labelled row, on validation: nothing to fit)."""
    if method not in METHODS:
        raise UserError(f"calibration = {method!r}: use one of {', '.join(METHODS)}")
    y_val, p_val = np.asarray(y_val, dtype=np.float64), np.asarray(p_val, dtype=np.float64)
    per_finding, notes = {}, []
    for j, name in enumerate(findings):
        known = ~np.isnan(y_val[:, j])
        t, s = y_val[known, j], p_val[known, j]
        if method == "none":
            per_finding[name] = None
        elif not 0 < t.sum() < t.size:
            per_finding[name] = None
            notes.append(f"{name}: one class on validation, left uncalibrated")
        elif method == "temperature":
            per_finding[name] = {"T": fit_temperature(t, s)}
        else:
            per_finding[name] = fit_isotonic(t, s)
    return {"method": method, "fitted_on": "validate", "per_finding": per_finding, "notes": notes}


def apply_one(entry: dict | None, p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if entry is None:
        return p
    if "T" in entry:
        return 1.0 / (1.0 + np.exp(-logit(p) / entry["T"]))
    return np.interp(p, entry["x"], entry["y"])   # IsotonicRegression.predict, clipped at the ends


def apply(calibrator: dict | None, p, findings=None) -> np.ndarray:
    """Calibrated (N, F) probabilities; NaN rows stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    if not calibrator or calibrator.get("method", "none") == "none":
        return p.copy()
    out = np.empty_like(p)
    for j, name in enumerate(findings or calibrator["per_finding"]):   # fitted in the outputs' order
        out[:, j] = apply_one(calibrator["per_finding"].get(name), p[:, j])
    return out


def section(calibrator: dict, y_test, p_test, groups, p, n_bins: int) -> dict:
    """metrics.json's calibration figures: ECE and Brier on test before and after, each with its CI,
    and after minus before on the same patient resamples; the reliability curves of both."""
    from ..stats import metrics, paired_bootstrap  # lazy: keeps scipy, sklearn out of this module's import

    names = list(calibrator["per_finding"])   # fitted in the outputs' order
    calibrated = apply(calibrator, p_test, names)
    paired = paired_bootstrap.paired_bootstrap(y_test, p_test, calibrated, groups, n_boot=p.bootstrap, seed=p.seed,
                                      ci_level=p.ci_level, n_bins=n_bins, findings=names)
    after = metrics.summarize(y_test, calibrated, groups, n_boot=p.bootstrap, seed=p.seed, ci_level=p.ci_level,
                              n_bins=n_bins, findings=names)
    return {**calibrator, "after": after["calibration"]["pooled"],
            "after_per_finding": {f: {m: e[m] for m in ("ece", "brier")} for f, e in after["per_finding"].items()},
            "after_minus_before": paired["calibration"],
            "test_reliability_pooled_after": reliability_curve(y_test, calibrated, n_bins).to_dict("list")}


def before_after(report: dict):
    """metrics.json's recalibration as a table: ECE and Brier on test, before and after, and the change,
    each with its patient-bootstrap CI (the change on paired resamples)."""
    import pandas as pd

    recal = report["recalibration"]
    before = report["splits"]["test"]["calibration"]["pooled"]
    rows = []
    for m in ("ece", "brier"):
        b, a, d = before[m], recal["after"][m], recal["after_minus_before"][m]
        rows.append({"figure": m.upper() if m == "ece" else "Brier", "before": b["value"], "before_lo": b["lo"],
                     "before_hi": b["hi"], "after": a["value"], "after_lo": a["lo"], "after_hi": a["hi"],
                     "change": d["diff"], "change_lo": d["lo"], "change_hi": d["hi"], "p_value": d["p_value"]})
    return pd.DataFrame(rows).set_index("figure")
