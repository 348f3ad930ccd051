"""The subgroup audit (fairness.py): gaps against a loop bootstrap, multiple testing against statsmodels,
small-cell suppression, and a planted disparity found where it was planted and nowhere else."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from cxrlib import fairness, metrics
from cxrlib.labels import FINDINGS


def test_holm_and_bh_match_statsmodels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(int(rng.integers(1, 30))) ** 3
        p[rng.random(p.size) < 0.1] = p[0]   # ties
        assert np.allclose(fairness.holm(p), multipletests(p, method="holm")[1])
        assert np.allclose(fairness.benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])
    with_nan = np.array([0.01, np.nan, 0.04])
    assert np.allclose(fairness.holm(with_nan)[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert np.isnan(fairness.holm(with_nan)[1])


def units_and_groups(n_patients=300, images=2, weak_group="B", strength=2.0, weak=0.2, seed=0):
    """Scores that separate the classes well, except in `weak_group` of attribute `sex`-like 'grp'."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_patients), images).astype(str)
    grp = np.where(np.arange(n_patients) % 3 == 0, "B", "A")[np.repeat(np.arange(n_patients), images)]
    other = np.where(rng.random(n_patients) < 0.5, "X", "Y")[np.repeat(np.arange(n_patients), images)]
    y = (rng.random((len(subject), len(FINDINGS))) < 0.3).astype(float)
    signal = np.where((grp == weak_group)[:, None], weak, strength)
    logits = signal * (2 * y - 1) + rng.normal(size=y.shape)
    units = pd.DataFrame(y, columns=FINDINGS)
    for j, f in enumerate(FINDINGS):
        units[f"p_{f}"] = 1 / (1 + np.exp(-logits[:, j]))
    units["subject_id"] = subject
    return units, pd.DataFrame({"grp": grp, "other": other})


def test_gap_ci_matches_a_brute_force_loop_bootstrap():
    units, groups = units_and_groups(n_patients=60, images=2, strength=1.0, weak=0.5)
    thresholds = {f: 0.5 for f in FINDINGS}
    table = fairness.audit(units, groups, thresholds, n_boot=200, seed=3, min_group_patients=5, attributes=("grp",),
                           min_cases=1)
    row = table[(table["group"] == "B") & (table["finding"] == FINDINGS[0]) & (table["metric"] == "auroc")].iloc[0]
    y, p = units[FINDINGS[0]].to_numpy(), units[f"p_{FINDINGS[0]}"].to_numpy()
    inside = groups["grp"].to_numpy() == "B"
    assert row["value"] == pytest.approx(roc_auc_score(y[inside], p[inside]))
    assert row["gap"] == pytest.approx(roc_auc_score(y[inside], p[inside]) - roc_auc_score(y[~inside], p[~inside]))
    gaps, tpr_gaps = [], []
    weights = np.concatenate(list(metrics.patient_weights(units["subject_id"].to_numpy(str), len(units), 200, 3,
                                                          chunk=64)), axis=1)
    for b in range(weights.shape[1]):
        rows = np.repeat(np.arange(len(units)), weights[:, b].astype(int))   # the resample, spelled out
        a, r = rows[inside[rows]], rows[~inside[rows]]
        gaps.append(roc_auc_score(y[a], p[a]) - roc_auc_score(y[r], p[r]))
        tpr = [(((p[s] >= 0.5) & (y[s] == 1)).sum() + 1) / ((y[s] == 1).sum() + 2) for s in (a, r)]   # Agresti-Caffo
        tpr_gaps.append(tpr[0] - tpr[1])
    assert [row["gap_lo"], row["gap_hi"]] == pytest.approx(np.percentile(gaps, [2.5, 97.5]), abs=1e-12)
    tpr_row = table[(table["group"] == "B") & (table["finding"] == FINDINGS[0]) & (table["metric"] == "tpr")].iloc[0]
    assert [tpr_row["gap_lo"], tpr_row["gap_hi"]] == pytest.approx(np.percentile(tpr_gaps, [2.5, 97.5]), abs=1e-12)


def test_small_groups_are_suppressed_and_carry_no_figures():
    units, groups = units_and_groups(n_patients=100, images=1)
    groups.loc[:4, "grp"] = "tiny"          # five patients
    table = fairness.audit(units, groups, {f: 0.5 for f in FINDINGS}, n_boot=20, min_group_patients=30,
                           attributes=("grp",))
    tiny = table[table["group"] == "tiny"]
    assert len(tiny) == 1 and tiny["n_patients"].iloc[0] == "<30" and tiny["value"].isna().all()
    assert set(table.columns) == set(fairness.COLUMNS)


def test_a_planted_disparity_is_found_and_nothing_where_none_was_planted():
    units, groups = units_and_groups(n_patients=400, images=1, strength=2.0, weak=0.6)
    table = fairness.audit(units, groups, {f: 0.5 for f in FINDINGS}, n_boot=300, seed=1,
                           attributes=("grp", "other"))
    auroc = table[(table["metric"] == "auroc")]
    weak = auroc[(auroc["group"] == "B")]
    assert (weak["gap_hi"] < 0).all() and (weak["p_holm"] < 0.05).all()   # every finding, after Holm
    unplanted = auroc[auroc["attribute"] == "other"]
    assert (unplanted["p_holm"] > 0.05).mean() >= 0.95
    under = table[(table["metric"] == "underdiagnosis") & (table["attribute"] == "grp")]
    assert set(under["finding"]) == {"any"} and under["value"].between(0, 1).all()


def test_the_planted_check_names_the_gaps_found_and_any_false_positive():
    units, groups = units_and_groups(n_patients=400, images=1, strength=2.0, weak=0.6)
    table = fairness.audit(units, groups, {f: 0.5 for f in FINDINGS}, n_boot=300, seed=1,
                           attributes=("grp", "other"))
    planted = {"attribute": "grp", "group": "B", "signature_strength": 0.5, "unplanted": ["other"]}
    check = fairness.planted_check(table, planted)
    assert check["detected"] and check["unplanted_clean"]
    found = pd.DataFrame(check["found"])
    assert {"auroc", "tpr", "fnr"} <= set(found["metric"])
    assert (found.loc[found["metric"] == "auroc", "gap_hi"] < 0).all()
    assert (found.loc[found["metric"] == "fnr", "gap_lo"] > 0).all()
    assert len(found) == ((table["group"] == "B") & (table["p_holm"] < 0.05)
                          & table["metric"].isin(["auroc", "auprc", "tpr", "fnr", "underdiagnosis"])).sum()
    wrong_group = fairness.planted_check(table, {**planted, "group": "A"})   # A does better than the rest
    assert not wrong_group["detected"]
    swapped = fairness.planted_check(table, {**planted, "attribute": "other", "group": "X", "unplanted": ["grp"]})
    assert not swapped["detected"] and not swapped["unplanted_clean"]
    assert {r["group"] for r in swapped["unplanted_significant"]} == {"A", "B"}


def test_a_rate_of_all_hits_in_a_small_group_is_not_called_a_disparity():
    """24 of 24 against 66 of 87 happens by chance; the bootstrap alone would see no spread at all."""
    rng = np.random.default_rng(5)
    n = 111
    y = np.zeros((n, len(FINDINGS)))
    y[:, 0] = 1
    hit = np.r_[np.ones(24), rng.permutation(np.r_[np.ones(66), np.zeros(21)])]
    units = pd.DataFrame(y, columns=FINDINGS)
    for j, f in enumerate(FINDINGS):
        units[f"p_{f}"] = np.where(hit == 1, 0.9, 0.1) if j == 0 else 0.5
    units["subject_id"] = np.arange(n).astype(str)
    groups = pd.DataFrame({"grp": np.r_[np.full(24, "A"), np.full(87, "B")]})
    table = fairness.audit(units, groups, {f: 0.5 for f in FINDINGS}, n_boot=300, min_group_patients=10,
                           attributes=("grp",))
    tpr = table[(table["metric"] == "tpr") & (table["group"] == "A")].iloc[0]
    assert tpr["value"] == 1.0 and tpr["gap"] == pytest.approx(1 - 66 / 87)
    assert 0.001 < tpr["p_value"] < 0.05 and tpr["p_holm"] > tpr["p_value"]   # the two-proportion test's scale
    assert table.loc[table["metric"] == "ece", "p_value"].isna().all()


# --------------------------------------------------------------------------- notebook 05 on the tiny run
def test_notebook_05_writes_group_level_figures_only(tiny_run):
    import json

    rows = pd.read_csv(tiny_run / "fairness.csv")
    assert list(rows.columns) == fairness.COLUMNS
    summary = json.loads((tiny_run / "fairness.json").read_text())
    cohort = pd.read_csv(tiny_run / "cohort.csv", dtype=str)
    assert summary["coverage"]["patients"] == cohort["subject_id"].nunique()
    assert not any(key in json.dumps(summary["rows"]) for key in cohort["subject_id"].head(20))
    demographics = pd.read_csv(tiny_run / "demographics.csv", dtype=str)
    assert len(demographics) == len(cohort) and set(demographics["race"]) <= set(
        ["White", "Black", "Hispanic/Latino", "Asian", "Other", "Unknown"])
    html = (tiny_run / "05_fairness.html").read_text()
    assert "Underdiagnosis" in html and "Holm" in html


def test_redaction_covers_notebook_05(tiny_redacted_run):
    html = (tiny_redacted_run / "05_fairness.html").read_text()
    assert "data:image/png" not in html   # plots as SVG vectors: no pixel data


def test_plots_draw_groups_with_figures_and_say_when_there_are_none():
    units, groups = units_and_groups(n_patients=200, images=1, strength=2.0, weak=0.6)
    table = fairness.audit(units, groups, {f: 0.5 for f in FINDINGS}, n_boot=50, attributes=("grp",))
    figure = fairness.plot_gaps(table, "grp", "auroc")
    assert len(figure.axes[0].get_yticklabels()) == 2 * len(FINDINGS)
    assert fairness.plot_underdiagnosis(table).axes
    empty = fairness.plot_gaps(table.iloc[0:0], "grp")
    assert "no group" in empty.axes[0].texts[0].get_text()
