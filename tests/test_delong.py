"""DeLong's paired AUROC test with Obuchowski's clustered variance (cxrlib.stats.metrics.delong_test)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrlib.stats.delong import delong_test


def delong_1988(y, a, b) -> dict:
    """DeLong, DeLong & Clarke-Pearson (Biometrics 1988), spelled out with the full kernel matrix."""
    out = {}
    v10s, v01s, aucs = [], [], []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = len(v10s[0]), len(v01s[0])
    s10 = np.cov(np.vstack(v10s), ddof=1)
    s01 = np.cov(np.vstack(v01s), ddof=1)
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    out["diff"] = aucs[0] - aucs[1]
    out["se"] = math.sqrt(var)
    out["z"] = out["diff"] / out["se"]
    out["p"] = 2 * (1 - 0.5 * (1 + math.erf(abs(out["z"]) / math.sqrt(2))))
    out["auc_a"], out["auc_b"] = aucs
    return out


@pytest.mark.parametrize("seed", range(5))
def test_one_image_per_patient_is_classic_delong_to_1e10(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 300))
    y = (rng.random(n) < rng.uniform(0.1, 0.5)).astype(float)
    a = y * rng.uniform(0.2, 1.5) + rng.normal(size=n)
    b = np.round(a + rng.normal(scale=0.8, size=n), 1)    # rounded: ties, within and across the classes
    ours = delong_test(y, a, b, clusters=np.arange(n).astype(str))
    reference = delong_1988(y, a, b)
    for key in ("auc_a", "auc_b", "diff", "se", "z"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-10), key
    assert ours["p"] == pytest.approx(reference["p"], abs=1e-10)
    assert ours["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    plain = delong_test(y, a, b)   # no clusters: every unit its own
    assert all(plain[k] == pytest.approx(ours[k], abs=1e-12) for k in ("diff", "se", "p"))


def test_an_exact_copy_of_every_image_adds_no_information():
    """Duplicated images within their patient: naive DeLong's SE shrinks by about sqrt(2); the clustered one
    stays where it was."""
    rng = np.random.default_rng(1)
    n = 150
    y = (rng.random(n) < 0.3).astype(float)
    a, b = y + rng.normal(size=n), 0.6 * y + rng.normal(size=n)
    once = delong_test(y, a, b, clusters=np.arange(n))
    twice = delong_test(np.r_[y, y], np.r_[a, a], np.r_[b, b], clusters=np.r_[np.arange(n), np.arange(n)])
    naive = delong_test(np.r_[y, y], np.r_[a, a], np.r_[b, b])
    assert twice["diff"] == pytest.approx(once["diff"])
    assert twice["se"] == pytest.approx(once["se"], rel=0.02)
    assert naive["se"] == pytest.approx(once["se"] / math.sqrt(2), rel=0.05)


def test_clustered_se_agrees_with_a_patient_bootstrap():
    rng = np.random.default_rng(2)
    patients = 200
    sizes = rng.integers(1, 5, patients)
    cluster = np.repeat(np.arange(patients), sizes)
    frailty = np.repeat(rng.normal(size=patients), sizes)   # images of one patient look alike
    y = (rng.random(len(cluster)) < 0.35).astype(float)
    a = y + frailty + rng.normal(scale=0.7, size=len(y))
    b = 0.7 * y + frailty + rng.normal(scale=0.7, size=len(y))
    result = delong_test(y, a, b, clusters=cluster)
    diffs = []
    members = [np.flatnonzero(cluster == i) for i in range(patients)]
    for _ in range(600):
        rows = np.concatenate([members[i] for i in rng.integers(0, patients, patients)])
        diffs.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    assert result["se"] == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
    assert result["clusters"] == patients
    assert delong_test(y, a, a, clusters=cluster)["p"] == 1.0


def test_degenerate_inputs_give_nan_not_an_error():
    assert math.isnan(delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["p"])
    same = delong_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8])
    assert same["diff"] == 0 and same["z"] == 0 and same["p"] == 1.0
    masked = delong_test([0, 1, np.nan, 1, 0], [0.1, 0.9, 0.5, 0.8, 0.3], [0.2, 0.7, 0.5, 0.6, 0.1])
    assert masked["n_pos"] == 2 and masked["n_neg"] == 2


def test_the_macro_test_reduces_to_one_finding_and_agrees_with_a_patient_bootstrap():
    from cxrlib.stats.delong import delong_macro

    rng = np.random.default_rng(3)
    n = 200
    y1 = (rng.random(n) < 0.3).astype(float)
    a1, b1 = y1 + rng.normal(size=n), 0.5 * y1 + rng.normal(size=n)
    one = delong_macro(y1[:, None], a1[:, None], b1[:, None])
    assert one["diff"] == pytest.approx(delong_test(y1, a1, b1)["diff"])
    assert one["se"] == pytest.approx(delong_test(y1, a1, b1)["se"], rel=0.02)

    patients, findings = 150, 4
    sizes = rng.integers(1, 4, patients)
    cluster = np.repeat(np.arange(patients), sizes)
    shared = np.repeat(rng.normal(size=(patients, 1)), sizes, axis=0)   # a patient's findings and images move together
    y = (rng.random((len(cluster), findings)) < 0.3).astype(float)
    y[rng.random(y.shape) < 0.05] = np.nan
    a = np.nan_to_num(y) + shared + rng.normal(scale=0.8, size=y.shape)
    b = 0.6 * np.nan_to_num(y) + shared + rng.normal(scale=0.8, size=y.shape)
    result = delong_macro(y, a, b, clusters=cluster)

    def macro(rows, s):
        values = []
        for j in range(findings):
            known = ~np.isnan(y[rows, j])
            values.append(roc_auc_score(y[rows, j][known], s[rows, j][known]))
        return np.mean(values)

    members = [np.flatnonzero(cluster == i) for i in range(patients)]
    diffs = []
    for _ in range(400):
        rows = np.concatenate([members[i] for i in rng.integers(0, patients, patients)])
        diffs.append(macro(rows, a) - macro(rows, b))
    everyone = np.arange(len(cluster))
    assert result["diff"] == pytest.approx(macro(everyone, a) - macro(everyone, b))
    assert result["se"] == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
    assert result["findings"] == findings and result["p"] < 0.05


# --------------------------------------------------------------------------- the macro test's size, simulated
DEMO_TEST_POSITIVES = [45, 60, 20, 35, 25, 4, 10, 80, 90, 60, 1, 1, 8, 120]   # two findings with one positive


def null_data(rng, positives, patients, sizes=None, rho=0.5):
    """Two scores with the same AUROC by construction (exchangeable), correlated with each other and, through a
    patient effect, across findings and images; `positives[j]` patients positive for finding j (all their images)."""
    sizes = np.ones(patients, int) if sizes is None else sizes
    cluster = np.repeat(np.arange(patients), sizes)
    y = np.zeros((len(cluster), len(positives)))
    for j, count in enumerate(positives):
        y[np.isin(cluster, rng.choice(patients, count, replace=False)), j] = 1
    frailty = np.repeat(rng.normal(size=(patients, 1)), sizes, axis=0)
    common = rng.normal(size=y.shape)
    a, b = (1.2 * y + frailty + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.normal(size=y.shape)
            for _ in range(2))
    return y, a, b, cluster


@pytest.mark.parametrize("positives, patients, several", [
    # without include, the default members (min_positives patients of each class): 4.8%, 5.7%, 4.3%
    (DEMO_TEST_POSITIVES, 305, False),                      # the demo's test counts: 34% rejections once
    ([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 5, 7, 9], 305, False),   # rare findings only: 9% once
    ([30, 20, 12, 8, 5, 3, 2, 40, 25, 10, 6, 4, 15, 50], 150, True),   # 1-4 images per patient: 10%, then 7%
])
def test_the_macro_test_holds_its_size_under_a_true_null(positives, patients, several):
    from cxrlib.stats.delong import delong_macro

    rng = np.random.default_rng(0)
    reps, rejected = 1000, 0
    for _ in range(reps):
        sizes = rng.integers(1, 5, patients) if several else None
        y, a, b, cluster = null_data(rng, positives, patients, sizes)
        rejected += delong_macro(y, a, b, clusters=cluster)["p"] < 0.05
    assert 0.035 <= rejected / reps <= 0.065   # 1,000 nulls: 5% +- 2.1 SE


def test_a_finding_with_one_positive_is_left_out_of_the_macro_not_given_zero_variance():
    from cxrlib.stats.delong import delong_macro

    rng = np.random.default_rng(4)
    n = 200
    y = np.zeros((n, 2))
    y[0, 0] = 1                                   # one positive: A ranks it first, B last
    y[:, 1] = rng.random(n) < 0.3
    a, b = rng.random((n, 2)), rng.random((n, 2))
    a[0, 0], b[0, 0] = 2.0, -1.0
    b[:, 1] = a[:, 1]                             # the other finding: identical scores
    result = delong_macro(y, a, b, findings=["rare", "common"])
    assert result["included"] == ["common"] and result["left_out"][0]["finding"] == "rare"
    assert "the macro needs 10 of each" in result["left_out"][0]["reason"]
    assert result["diff"] == 0 and result["p"] == 1.0
    assert math.isnan(delong_test(y[:, 0], a[:, 0], b[:, 0])["p"])   # the per-finding test gives no p either
    only = delong_macro(y, a, b, include=[True, False])
    assert only["findings"] == 0 and math.isnan(only["p"])
