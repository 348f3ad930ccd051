"""The paired AUROC comparison of two scores on the same units: DeLong's test, for clustered data.

    delong_test(y, p_a, p_b, clusters=None) -> {auc_a, auc_b, diff, se, z, p, ...}
    delong_macro(y, p_a, p_b, clusters=None)  -> the same for the macro AUROC of (N, F) arrays

A patient with several images is a cluster: his images are not independent, and DeLong et al.
(Biometrics 1988) would count them as if they were. The variance here is Obuchowski's (Biometrics
1997) for clustered ROC data: the structural components V10 (each positive's share of negatives
ranked below it) and V01 (each negative's share of positives above it) are summed per cluster, and
the variances and covariance of the two AUCs come from those cluster sums. With one unit per cluster
the estimator is exactly DeLong's (the positive-negative cross term vanishes), and the test checks
that against an independent implementation. Ties count one half. diff = auc_a - auc_b; p is two-sided,
from the normal distribution of diff / se.

The macro AUROC (the mean over findings with both classes) has correlated terms: the same patients
carry every finding. Its variance sums each cluster's influence, d10_i / M + d01_i / N for every
finding's AUC difference averaged over findings, squared, times K / (K - 1) over the K clusters:
the same structural components, combined across findings as Obuchowski combines them within one.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def _components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 per positive, V01 per negative), from midranks: O(n log n)."""
    pos, neg = score[y == 1], score[y == 0]
    m, n = len(pos), len(neg)
    ranks_all = rankdata(np.concatenate([pos, neg]))
    below = ranks_all[:m] - rankdata(pos)          # negatives below each positive (ties one half)
    above = m - (ranks_all[m:] - rankdata(neg))    # positives above each negative
    return float(below.sum() / (m * n)), below / n, above / m


def _cluster_sums(values: np.ndarray, cluster_index: np.ndarray, n_clusters: int) -> np.ndarray:
    return np.bincount(cluster_index, weights=values, minlength=n_clusters)


def _p_two_sided(diff: float, se: float) -> tuple[float, float]:
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return z, (math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else 0.0)


def delong_macro(y, p_a, p_b, clusters=None) -> dict:
    """delong_test for the macro AUROC of (N, F) labels (NaN masked) and two (N, F) score arrays."""
    y, p_a, p_b = (np.asarray(v, dtype=float) for v in (y, p_a, p_b))
    ids = np.arange(len(y)) if clusters is None else np.asarray(clusters)
    _, cluster_index = np.unique(ids, return_inverse=True)
    k = int(cluster_index.max()) + 1 if len(ids) else 0
    influence, diffs, aucs = np.zeros(k), [], []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        t, rows = y[known, j], cluster_index[known]
        m, n = int((t == 1).sum()), int((t == 0).sum())
        if m == 0 or n == 0:
            continue
        per = []
        for score in (p_a[known, j], p_b[known, j]):
            auc, v10, v01 = _components(t, score)
            d10 = _cluster_sums(v10, rows[t == 1], k) - np.bincount(rows[t == 1], minlength=k) * auc
            d01 = _cluster_sums(v01, rows[t == 0], k) - np.bincount(rows[t == 0], minlength=k) * auc
            per.append((auc, d10 / m + d01 / n))
        aucs.append((per[0][0], per[1][0]))
        diffs.append(per[0][0] - per[1][0])
        influence += per[0][1] - per[1][1]
    if not diffs or k < 2:
        return {"auc_a": float("nan"), "auc_b": float("nan"), "diff": float("nan"), "se": float("nan"),
                "z": float("nan"), "p": float("nan"), "findings": len(diffs)}
    influence /= len(diffs)
    se = math.sqrt(k / (k - 1) * float(influence @ influence))
    diff = float(np.mean(diffs))
    z, p = _p_two_sided(diff, se)
    return {"auc_a": float(np.mean([a for a, _ in aucs])), "auc_b": float(np.mean([b for _, b in aucs])),
            "diff": diff, "se": se, "z": z, "p": p, "findings": len(diffs), "clusters": k}


def delong_test(y, p_a, p_b, clusters=None) -> dict:
    """Compare the AUROC of scores p_a and p_b for binary labels y (NaN rows are left out).

    clusters: one id per unit (the patient); None treats every unit as its own cluster.
    """
    y = np.asarray(y, dtype=float)
    p_a, p_b = np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)
    ids = np.arange(len(y)) if clusters is None else np.asarray(clusters)
    keep = ~np.isnan(y) & ~np.isnan(p_a) & ~np.isnan(p_b)
    y, p_a, p_b, ids = y[keep], p_a[keep], p_b[keep], ids[keep]
    m, n = int((y == 1).sum()), int((y == 0).sum())
    out = {"auc_a": float("nan"), "auc_b": float("nan"), "diff": float("nan"), "se": float("nan"),
           "z": float("nan"), "p": float("nan"), "n_pos": m, "n_neg": n}
    if m == 0 or n == 0:
        return out
    _, cluster_index = np.unique(ids, return_inverse=True)
    k = int(cluster_index.max()) + 1
    pos_cluster, neg_cluster = cluster_index[y == 1], cluster_index[y == 0]
    m_i = np.bincount(pos_cluster, minlength=k).astype(float)
    n_i = np.bincount(neg_cluster, minlength=k).astype(float)
    k10, k01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    aucs, d10, d01 = [], [], []
    for score in (p_a, p_b):
        auc, v10, v01 = _components(y, score)
        aucs.append(auc)
        d10.append(_cluster_sums(v10, pos_cluster, k) - m_i * auc)   # zero for clusters without positives
        d01.append(_cluster_sums(v01, neg_cluster, k) - n_i * auc)
    if k10 < 2 or k01 < 2:
        return {**out, "auc_a": aucs[0], "auc_b": aucs[1], "diff": aucs[0] - aucs[1]}

    def covariance(a: int, b: int) -> float:
        s10 = k10 / ((k10 - 1) * m) * float(d10[a] @ d10[b])
        s01 = k01 / ((k01 - 1) * n) * float(d01[a] @ d01[b])
        s11 = k / (k - 1) * float(d10[a] @ d01[b] + d10[b] @ d01[a]) / 2
        return s10 / m + s01 / n + 2 * s11 / (m * n)

    var = covariance(0, 0) + covariance(1, 1) - 2 * covariance(0, 1)
    diff = aucs[0] - aucs[1]
    se = math.sqrt(max(var, 0.0))
    z, p = _p_two_sided(diff, se)
    return {**out, "auc_a": aucs[0], "auc_b": aucs[1], "diff": diff, "se": se, "z": z, "p": p,
            "var_a": covariance(0, 0), "var_b": covariance(1, 1), "cov": covariance(0, 1), "clusters": k}
