"""The paired AUROC comparison of two scores on the same units: DeLong's test, for clustered data.

    delong_test(y, p_a, p_b, clusters=None) -> {auc_a, auc_b, diff, se, z, p, ...}
    delong_macro(y, p_a, p_b, clusters=None)  -> the same for the macro AUROC of (N, F) arrays

A patient with several images is a cluster: his images are not independent, and DeLong et al.
(Biometrics 1988) would count them as if they were. The variance here is Obuchowski's (Biometrics
1997) for clustered ROC data: the structural components V10 (each positive's share of negatives
ranked below it) and V01 (each negative's share of positives above it) are summed per cluster, and
the variances and covariance of the two AUCs come from those cluster sums, each with its own
small-sample factor k/(k-1) over the clusters that hold positives (k10), negatives (k01) or either (K).
With one unit per cluster the estimator is exactly DeLong's (the positive-negative cross term
vanishes), and the test checks that against an independent implementation. Ties count one half.
diff = auc_a - auc_b; p is two-sided, from the normal distribution of diff / se.

A finding needs at least two clusters with a positive and two with a negative: with one, its V10 has
no spread to estimate (the variance would be 0 whatever the data), so delong_test returns no p and
delong_macro leaves the finding out and names it in `left_out`.

The macro AUROC (the mean over the findings kept) has correlated terms: the same patients carry every
finding. Var(mean of the F differences) = (1/F^2) * sum over findings j, l of Cov(d_j, d_l), where
the diagonal is each finding's own clustered variance (the one delong_test uses) and the
cross-finding covariances come from the cluster influences psi_j = d10_j / m_j + d01_j / n_j:
Cov(d_j, d_l) = K / (K - 1) * sum over clusters of psi_j * psi_l. tests/test_delong.py checks the
size of the resulting test by simulation (equal AUROCs by construction), at rare and clustered counts.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from .metrics import MIN_POSITIVES

MIN_CLUSTERS = 2   # clusters with a positive (and with a negative) a finding needs for a variance


def _components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 per positive, V01 per negative), from midranks: O(n log n)."""
    pos, neg = score[y == 1], score[y == 0]
    m, n = len(pos), len(neg)
    ranks_all = rankdata(np.concatenate([pos, neg]))
    below = ranks_all[:m] - rankdata(pos)          # negatives below each positive (ties one half)
    above = m - (ranks_all[m:] - rankdata(neg))    # positives above each negative
    return float(below.sum() / (m * n)), below / n, above / m


def _p_two_sided(diff: float, se: float) -> tuple[float, float]:
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return z, (math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else 0.0)


def _finding(y: np.ndarray, scores: tuple, cluster_index: np.ndarray, k: int) -> dict:
    """One finding's AUCs and clustered structural components for each score (rows already unmasked).

    d10[s] and d01[s] are per-cluster sums of V10 - AUC and V01 - AUC (zero for a cluster without
    positives, resp. negatives); k10 and k01 count the clusters that hold positives and negatives.
    """
    pos_cluster, neg_cluster = cluster_index[y == 1], cluster_index[y == 0]
    m_i = np.bincount(pos_cluster, minlength=k).astype(float)
    n_i = np.bincount(neg_cluster, minlength=k).astype(float)
    out = {"m": int(len(pos_cluster)), "n": int(len(neg_cluster)), "k10": int((m_i > 0).sum()),
           "k01": int((n_i > 0).sum()), "auc": [], "d10": [], "d01": []}
    if out["m"] == 0 or out["n"] == 0:
        return out
    for score in scores:
        auc, v10, v01 = _components(y, score)
        out["auc"].append(auc)
        out["d10"].append(np.bincount(pos_cluster, weights=v10, minlength=k) - m_i * auc)
        out["d01"].append(np.bincount(neg_cluster, weights=v01, minlength=k) - n_i * auc)
    return out


def _estimable(f: dict) -> bool:
    return f["k10"] >= MIN_CLUSTERS and f["k01"] >= MIN_CLUSTERS


def _covariance(f: dict, a: int, b: int, k: int) -> float:
    """Obuchowski's covariance of score a's and score b's AUC on one finding."""
    m, n, k10, k01 = f["m"], f["n"], f["k10"], f["k01"]
    s10 = k10 / ((k10 - 1) * m) * float(f["d10"][a] @ f["d10"][b])
    s01 = k01 / ((k01 - 1) * n) * float(f["d01"][a] @ f["d01"][b])
    s11 = k / (k - 1) * float(f["d10"][a] @ f["d01"][b] + f["d10"][b] @ f["d01"][a]) / 2
    return s10 / m + s01 / n + 2 * s11 / (m * n)


def _difference_variance(f: dict, k: int) -> float:
    return max(_covariance(f, 0, 0, k) + _covariance(f, 1, 1, k) - 2 * _covariance(f, 0, 1, k), 0.0)


def _influence(f: dict) -> np.ndarray:
    """Per cluster: its share of the AUC difference's deviation (A minus B)."""
    return (f["d10"][0] - f["d10"][1]) / f["m"] + (f["d01"][0] - f["d01"][1]) / f["n"]


def _cluster_index(ids) -> tuple[np.ndarray, int]:
    _, index = np.unique(np.asarray(ids), return_inverse=True)
    index = index.ravel()
    return index, (int(index.max()) + 1 if len(index) else 0)


def delong_macro(y, p_a, p_b, clusters=None, findings=None, include=None, min_patients: int = MIN_POSITIVES) -> dict:
    """delong_test for the macro AUROC of (N, F) labels (NaN masked) and two (N, F) score arrays.

    The macro is the mean over the estimable findings: at least `min_patients` clusters (patients) holding a
    positive and as many holding a negative, metrics' rule by default, so that the test holds its size on
    clustered data (with MIN_CLUSTERS alone, findings of a handful of patients made it reject a true null
    about 7% of the time); when `include` (F booleans) is given, only over those it also allows. `left_out`
    names the others with the reason.
    """
    y, p_a, p_b = (np.asarray(v, dtype=float) for v in (y, p_a, p_b))
    names = list(findings) if findings is not None else [str(j) for j in range(y.shape[1])]
    cluster_index, k = _cluster_index(np.arange(len(y)) if clusters is None else clusters)
    allowed = np.ones(y.shape[1], bool) if include is None else np.asarray(include, bool)
    need = max(MIN_CLUSTERS, min_patients)
    kept, left_out = [], []
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        f = _finding(y[known, j], (p_a[known, j], p_b[known, j]), cluster_index[known], k)
        if not allowed[j]:
            left_out.append({"finding": name, "reason": "not estimable by the caller's rule (too few positives)"})
        elif min(f["k10"], f["k01"]) < need:
            left_out.append({"finding": name, "reason": f"{f['k10']} patient(s) with a positive and {f['k01']} "
                                                        f"with a negative; the macro needs {need} of each"})
        else:
            kept.append((name, f))
    nan = float("nan")
    out = {"auc_a": nan, "auc_b": nan, "diff": nan, "se": nan, "z": nan, "p": nan, "findings": len(kept),
           "included": [name for name, _ in kept], "left_out": left_out, "clusters": k}
    if not kept or k < 2:
        return out
    influences = np.stack([_influence(f) for _, f in kept])          # (F, K)
    covariance = k / (k - 1) * influences @ influences.T              # cross-finding terms
    np.fill_diagonal(covariance, [_difference_variance(f, k) for _, f in kept])
    se = math.sqrt(max(float(covariance.sum()), 0.0)) / len(kept)
    diff = float(np.mean([f["auc"][0] - f["auc"][1] for _, f in kept]))
    z, p = _p_two_sided(diff, se)
    return {**out, "auc_a": float(np.mean([f["auc"][0] for _, f in kept])),
            "auc_b": float(np.mean([f["auc"][1] for _, f in kept])), "diff": diff, "se": se, "z": z, "p": p}


def delong_test(y, p_a, p_b, clusters=None) -> dict:
    """Compare the AUROC of scores p_a and p_b for binary labels y (NaN rows are left out).

    clusters: one id per unit (the patient); None treats every unit as its own cluster. With fewer than
    MIN_CLUSTERS clusters holding a positive (or a negative) the AUCs are given but no se and no p.
    """
    y = np.asarray(y, dtype=float)
    p_a, p_b = np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)
    ids = np.arange(len(y)) if clusters is None else np.asarray(clusters)
    keep = ~np.isnan(y) & ~np.isnan(p_a) & ~np.isnan(p_b)
    y, p_a, p_b, ids = y[keep], p_a[keep], p_b[keep], ids[keep]
    cluster_index, k = _cluster_index(ids)
    f = _finding(y, (p_a, p_b), cluster_index, k)
    nan = float("nan")
    out = {"auc_a": nan, "auc_b": nan, "diff": nan, "se": nan, "z": nan, "p": nan, "n_pos": f["m"], "n_neg": f["n"]}
    if not f["auc"]:
        return out
    out.update(auc_a=f["auc"][0], auc_b=f["auc"][1], diff=f["auc"][0] - f["auc"][1])
    if not _estimable(f):
        return out
    se = math.sqrt(_difference_variance(f, k))
    z, p = _p_two_sided(out["diff"], se)
    return {**out, "se": se, "z": z, "p": p, "var_a": _covariance(f, 0, 0, k), "var_b": _covariance(f, 1, 1, k),
            "cov": _covariance(f, 0, 1, k), "clusters": k}
