"""Input checks shared by the statistics: labels, probabilities and patient ids as the metrics expect them.

Conventions: y (N, F) holds 0, 1 or NaN (a masked label); p (N, F) probabilities; groups (N,) patient ids.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import UserError
from ..labels import FINDINGS


class MetricsInputError(UserError, ValueError):
    """Labels, probabilities or patient ids of the wrong shape or with impossible values."""


def check_inputs(y, p, findings=None, p_name: str = "p"):
    """y and p as float64 (N, F) arrays and the F finding names; raises MetricsInputError."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 2 or p.shape != y.shape:
        raise MetricsInputError(f"labels y {y.shape} and predictions {p_name} {p.shape} must be (N, F) arrays "
                                "of the same shape, one row per image and one column per finding")
    if findings is None:
        findings = FINDINGS if y.shape[1] == len(FINDINGS) else [f"finding_{j}" for j in range(y.shape[1])]
    findings = list(findings)
    if len(findings) != y.shape[1]:
        raise MetricsInputError(f"findings names {len(findings)} columns but y has {y.shape[1]}")
    known = ~np.isnan(y)
    bad = y[known][(y[known] != 0) & (y[known] != 1)]
    if bad.size:
        raise MetricsInputError(f"labels y hold {np.unique(bad)[:5].tolist()}; they must be 0, 1 or NaN (masked). "
                                "Map raw labels with cxrlib.labels.apply_policies first")
    if not np.isfinite(p[known]).all():
        raise MetricsInputError(f"predictions {p_name} hold NaN or inf where a label is known; "
                                "check the predictions file for missing rows")
    return y, p, findings


def group_index(groups, n: int) -> np.ndarray:
    """Patient ids (any type) as 0..G-1; None means one patient per image."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise MetricsInputError(f"groups has shape {groups.shape}; give one patient id (subject_id) per row, "
                                f"i.e. shape ({n},)")
    return np.unique(groups, return_inverse=True)[1].ravel()


def json_number(x) -> Optional[float]:
    """A float for JSON: NaN becomes None (null)."""
    x = float(x)
    return None if np.isnan(x) else x
