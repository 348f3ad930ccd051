"""Multiple-testing adjustment where decisions are made: Holm (family-wise error) and Benjamini-Hochberg
(false discovery rate), both on arrays that may hold NaN (a test that was not run stays NaN and is not
counted in m), and Bonferroni-simultaneous normal intervals, which agree with Bonferroni decisions; and
how a p-value is printed (never as 0)."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np


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
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    return _adjusted(p, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


def bonferroni(p) -> np.ndarray:
    """Bonferroni-adjusted p-values: m * p, at most 1 (m: the known p-values)."""
    p = np.asarray(p, dtype=float)
    return np.minimum(p * int((~np.isnan(p)).sum()), 1.0)


def normal_quantile(level: float) -> float:
    """z such that a normal variable lies in [-z, z] with probability `level`."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def p_from_z(z: float) -> float:
    """Two-sided p of a standard normal statistic z."""
    return float(2 * (1 - NormalDist().cdf(abs(z))))


def format_p(p, n_valid=None) -> str:
    """A p-value for reading: three decimals, '< 0.001' below that, 'n/a' when there is none. Bootstrap
    p-values are never 0 (paired_bootstrap.bootstrap_p: at least 2 / (B + 1)), so none prints as certainty."""
    if p is None or p != p:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
