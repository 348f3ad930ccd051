import io
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrlib import original
from cxrlib.bench.bootstrap import bench_bootstrap
from cxrlib.errors import UserError
from cxrlib.evaluation import tables, viz
from cxrlib.labels import FINDINGS
from cxrlib.stats import metrics, paired_bootstrap
from cxrlib.stats.calibration import brier, calibration, ece, reliability_curve
from cxrlib.stats.thresholds import choose_thresholds, threshold_metrics


def make_data(n, seed=0, masked=0.1, ties=True):
    """Labels with varied prevalence and some NaNs; scores that carry signal and ties."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.05, 0.5, len(FINDINGS))
    y = (rng.random((n, len(FINDINGS))) < prevalence).astype(float)
    y[rng.random(y.shape) < masked] = np.nan
    p = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.2 * np.nan_to_num(y) - 1.5)))
    return y, (np.round(p, 2) if ties else p)


def sklearn_reference(y, p):
    per = {}
    for j, f in enumerate(FINDINGS):
        k = ~np.isnan(y[:, j])
        if 0 < y[k, j].sum() < k.sum():
            per[f] = (roc_auc_score(y[k, j], p[k, j]), average_precision_score(y[k, j], p[k, j]))
    k = ~np.isnan(y)
    return per, (roc_auc_score(y[k], p[k]), average_precision_score(y[k], p[k]))


def test_point_estimates_equal_sklearn_with_masks_and_a_finding_without_positives():
    y, p = make_data(400, seed=1)
    y[:, 10] = np.where(np.isnan(y[:, 10]), np.nan, 0.0)  # Pleural Other: no positives at all
    r = metrics.ranking_metrics(y, p)
    per, micro = sklearn_reference(y, p)
    assert set(per) == set(FINDINGS) - {"Pleural Other"}
    for f, (auroc, auprc) in per.items():
        assert r["per_finding"][f]["auroc"] == pytest.approx(auroc, abs=1e-12)
        assert r["per_finding"][f]["auprc"] == pytest.approx(auprc, abs=1e-12)
        assert r["per_finding"][f]["n"] == int((~np.isnan(y[:, FINDINGS.index(f)])).sum())
    assert r["excluded"] == ["Pleural Other"]
    assert "Pleural Other" in r["notes"][0] and "macro" in r["notes"][0]
    assert np.isnan(r["per_finding"]["Pleural Other"]["auroc"])
    assert r["macro"]["auroc"] == pytest.approx(np.mean([a for a, _ in per.values()]), abs=1e-12)
    assert r["macro"]["auprc"] == pytest.approx(np.mean([b for _, b in per.values()]), abs=1e-12)
    assert r["micro"]["auroc"] == pytest.approx(micro[0], abs=1e-12)
    assert r["micro"]["auprc"] == pytest.approx(micro[1], abs=1e-12)


def test_masked_labels_are_excluded_not_counted_as_negatives():
    y, p = make_data(300, seed=2, masked=0.0)
    masked = y.copy()
    masked[:100, 0] = np.nan
    a = metrics.ranking_metrics(masked, p)["per_finding"]["Atelectasis"]
    assert a["n"] == 200
    assert a["auroc"] == pytest.approx(roc_auc_score(y[100:, 0], p[100:, 0]), abs=1e-12)


def test_weighted_statistics_with_unit_weights_equal_sklearn():
    for ties in (True, False):
        y, p = make_data(500, seed=3, ties=ties)
        s = metrics.resample_stats(y, p, np.ones((1, len(y))))
        per, micro = sklearn_reference(y, p)
        for j, f in enumerate(FINDINGS):
            assert abs(s["auroc"][0, j] - per[f][0]) < 1e-12
            assert abs(s["auprc"][0, j] - per[f][1]) < 1e-12
        assert abs(s["auroc_micro"][0] - micro[0]) < 1e-12
        assert abs(s["auprc_micro"][0] - micro[1]) < 1e-12
        assert abs(s["auroc_macro"][0] - np.mean([a for a, _ in per.values()])) < 1e-12


def test_integer_weights_equal_sklearn_on_explicitly_duplicated_rows():
    y, p = make_data(250, seed=4)
    rng = np.random.default_rng(0)
    w = rng.integers(0, 4, size=(6, len(y)))
    s = metrics.resample_stats(y, p, w)
    for b in range(len(w)):
        rows = np.repeat(np.arange(len(y)), w[b])
        per, micro = sklearn_reference(y[rows], p[rows])
        for j, f in enumerate(FINDINGS):
            assert abs(s["auroc"][b, j] - per[f][0]) < 1e-12
            assert abs(s["auprc"][b, j] - per[f][1]) < 1e-12
        assert abs(s["auroc_micro"][b] - micro[0]) < 1e-12
        assert abs(s["auprc_micro"][b] - micro[1]) < 1e-12
        cal = calibration(y[rows], p[rows])
        assert abs(s["ece_pooled"][b] - cal["pooled"]["ece"]) < 1e-12
        assert abs(s["brier"][b, 5] - cal["per_finding"][FINDINGS[5]]["brier"]) < 1e-12


def test_resample_with_one_class_is_nan_and_counted():
    y = np.array([[1.0], [0.0], [0.0], [1.0]])
    p = np.array([[0.9], [0.2], [0.4], [0.3]])
    s = metrics.resample_stats(y, p, [[1, 1, 1, 1], [2, 0, 0, 2], [0, 1, 1, 0]], findings=["x"])
    assert s["auroc"][0, 0] == pytest.approx(0.75)
    assert np.isnan(s["auroc"][1:, 0]).all() and np.isnan(s["auroc_macro"][1:]).all()


def test_ci_contains_the_estimate_and_shrinks_with_n():
    widths = []
    for n in (200, 5000):
        y, p = make_data(n, seed=5, ties=False)
        s = metrics.summarize(y, p, np.arange(n), n_boot=200, seed=0)
        for fig in [s["macro"]["auroc"], s["micro"]["auprc"], s["per_finding"]["Edema"]["auroc"],
                    s["calibration"]["pooled"]["brier"]]:
            assert fig["lo"] <= fig["value"] <= fig["hi"]
        widths.append(s["macro"]["auroc"]["hi"] - s["macro"]["auroc"]["lo"])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(25)


def test_two_images_of_one_patient_always_resampled_together():
    groups = np.array([7, 7, 3, 9, 9, 9, 4])
    for w in metrics.patient_weights(groups, len(groups), n_boot=50, seed=1, chunk=16):
        assert (w[0] == w[1]).all() and (w[3] == w[4]).all() and (w[4] == w[5]).all()
        assert (w[[0, 2, 3, 6]].sum(0) == 4).all()  # four patients drawn per resample


def test_bootstrap_draws_do_not_depend_on_the_chunk_size():
    groups = np.arange(30) // 2
    a = np.concatenate(list(metrics.patient_weights(groups, 30, 20, seed=3, chunk=7)), axis=1)
    b = np.concatenate(list(metrics.patient_weights(groups, 30, 20, seed=3, chunk=64)), axis=1)
    assert (a == b).all()


def test_duplicated_images_of_a_patient_add_no_false_precision():
    y, p = make_data(300, seed=6, ties=False)
    twice_y, twice_p = np.repeat(y, 2, axis=0), np.repeat(p, 2, axis=0)
    single = metrics.summarize(y, p, np.arange(300), n_boot=300, seed=2)
    clustered = metrics.summarize(twice_y, twice_p, np.repeat(np.arange(300), 2), n_boot=300, seed=2)
    naive = metrics.summarize(twice_y, twice_p, np.arange(600), n_boot=300, seed=2)
    for key in ("value", "lo", "hi"):
        assert clustered["macro"]["auroc"][key] == pytest.approx(single["macro"]["auroc"][key], abs=1e-12)
    assert clustered["n_patients"] == 300 and clustered["n_images"] == 600
    width = lambda s: s["macro"]["auroc"]["hi"] - s["macro"]["auroc"]["lo"]  # noqa: E731
    assert width(naive) < 0.85 * width(clustered)


def test_summarize_is_json_ready_seeded_and_frames():
    y, p = make_data(150, seed=7)
    y[:, 12] = np.where(np.isnan(y[:, 12]), np.nan, 0.0)
    a = metrics.summarize(y, p, np.arange(150) // 3, n_boot=100, seed=11, ci_level=0.9)
    b = metrics.summarize(y, p, np.arange(150) // 3, n_boot=100, seed=11, ci_level=0.9)
    text = json.dumps(a, allow_nan=False)
    assert text == json.dumps(b, allow_nan=False)
    assert a["excluded"] == ["Pneumothorax"] and a["per_finding"]["Pneumothorax"]["auroc"]["value"] is None
    assert a["n_patients"] == 50 and a["ci_level"] == 0.9
    table = tables.frame(a)
    assert list(table.columns) == ["finding", "auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi",
                                   "n_pos", "n", "note"]
    assert list(table["finding"]) == FINDINGS + ["macro", "micro"]
    assert table.loc[1, "auroc"] == pytest.approx(a["per_finding"]["Cardiomegaly"]["auroc"]["value"])
    assert table.loc[15, "n_pos"] == int(np.nansum(y))


def test_paired_bootstrap_of_identical_predictions_is_exactly_zero():
    y, p = make_data(200, seed=8)
    r = paired_bootstrap.paired_bootstrap(y, p, p.copy(), np.arange(200) // 2, n_boot=200)
    for fig in [r["macro"]["auroc"], r["micro"]["auprc"], r["per_finding"]["Edema"]["auprc"],
                r["calibration"]["brier"]]:
        assert (fig["diff"], fig["lo"], fig["hi"], fig["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_detects_a_better_model():
    y, p = make_data(600, seed=9, ties=False)
    rng = np.random.default_rng(0)
    worse = np.clip(p + rng.normal(0, 0.25, p.shape), 0, 1)
    r = paired_bootstrap.paired_bootstrap(y, worse, p, np.arange(600), n_boot=300)
    m = r["macro"]["auroc"]
    assert m["diff"] == pytest.approx(m["b"] - m["a"]) and m["diff"] > 0
    assert m["lo"] > 0 and m["p_value"] < 0.01
    flipped = paired_bootstrap.paired_bootstrap(y, p, worse, np.arange(600), n_boot=300)["macro"]["auroc"]
    assert flipped["hi"] < 0 and flipped["p_value"] == m["p_value"]


def test_thresholds_come_from_validation_only():
    y_val, p_val = make_data(300, seed=10)
    chosen = choose_thresholds(y_val, p_val)
    assert choose_thresholds(y_val.copy(), p_val.copy()) == chosen
    per_test_set = []
    for seed in (11, 12):  # two different test sets: the thresholds must not move
        y_test, p_test = make_data(200, seed=seed)
        per_test_set.append(threshold_metrics(y_test, p_test, chosen))
    for table in per_test_set:
        for _, row in table.iterrows():
            assert row["threshold"] == chosen[row["finding"]][row["rule"]]
    assert not per_test_set[0][["tp", "fp"]].equals(per_test_set[1][["tp", "fp"]])


def test_chosen_thresholds_maximise_f1_and_youden_on_validation():
    y, p = make_data(300, seed=13)
    chosen = choose_thresholds(y, p)
    for j, f in enumerate(FINDINGS):
        k = ~np.isnan(y[:, j])
        t, s = y[k, j] == 1, p[k, j]
        def f1(c):
            tp, fp, fn = (t & (s >= c)).sum(), (~t & (s >= c)).sum(), (t & (s < c)).sum()
            return 2 * tp / (2 * tp + fp + fn)
        def youden(c):
            return (t & (s >= c)).sum() / t.sum() - (~t & (s >= c)).sum() / (~t).sum()
        candidates = np.unique(s)
        assert f1(chosen[f]["f1"]) == pytest.approx(max(f1(c) for c in candidates))
        assert youden(chosen[f]["youden"]) == pytest.approx(max(youden(c) for c in candidates))


def test_threshold_metrics_match_a_manual_count():
    y = np.array([[1, 0], [1, 1], [0, np.nan], [0, 0], [1, 1], [0, 1]], dtype=float)
    p = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.9], [0.1, 0.7], [0.5, 0.3], [0.5, 0.6]])
    thresholds = {"a": {"f1": 0.5}, "b": {"f1": 0.6, "youden": float("nan")}}
    t = threshold_metrics(y, p, thresholds, findings=["a", "b"])
    a = t.iloc[0]
    # a: called = p >= 0.5 -> rows 0, 2, 4, 5; positives rows 0, 1, 4
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (2, 2, 1, 1)
    assert a["sensitivity"] == pytest.approx(2 / 3) and a["specificity"] == pytest.approx(1 / 3)
    assert a["ppv"] == pytest.approx(0.5) and a["npv"] == pytest.approx(0.5) and a["f1"] == pytest.approx(4 / 7)
    b = t.iloc[1]  # row 2 is masked; called rows 1, 3, 5; positives rows 1, 4, 5
    assert (b["n"], b["tp"], b["fp"], b["tn"], b["fn"]) == (5, 2, 1, 1, 1)
    assert pd.isna(t.iloc[2]["tp"]) and t.iloc[2]["rule"] == "youden"
    with pytest.raises(UserError, match="choose_thresholds"):
        threshold_metrics(y, p, {"a": {"f1": 0.5}}, findings=["a", "b"])


def test_calibration_ece_brier_and_reliability_curve():
    rng = np.random.default_rng(14)
    p = rng.random(40_000)
    y = (rng.random(40_000) < p).astype(float)
    assert ece(y, p) < 0.015
    assert ece(y, p ** 3) > 0.1  # badly calibrated: systematic underconfidence
    assert brier(y, p) == pytest.approx(np.mean((p - y) ** 2))
    for strategy in ("uniform", "quantile"):
        curve = reliability_curve(y, p, n_bins=8, strategy=strategy)
        true, pred = calibration_curve(y, p, n_bins=8, strategy=strategy)
        used = curve[curve["count"] > 0]
        assert np.allclose(used["frac_pos"], true) and np.allclose(used["mean_pred"], pred)
        assert curve["count"].sum() == 40_000
    manual = sum(c * abs(t - m) for c, t, m in
                 reliability_curve(y, p, 10)[["count", "frac_pos", "mean_pred"]].itertuples(index=False))
    assert ece(y, p) == pytest.approx(manual / 40_000)
    yy, pp = make_data(300, seed=15)
    cal = calibration(yy, pp)
    k = ~np.isnan(yy)
    assert cal["pooled"]["brier"] == pytest.approx(np.mean((pp[k] - yy[k]) ** 2))
    assert cal["per_finding"]["Edema"]["n"] == int(k[:, 3].sum())


def test_bad_inputs_name_the_argument_and_the_fix():
    y, p = make_data(20, seed=16)
    raw = y.copy()
    raw[0, 0] = -1.0
    with pytest.raises(UserError, match="apply_policies"):
        metrics.summarize(raw, p, None, n_boot=10)
    with pytest.raises(UserError, match="same shape"):
        metrics.ranking_metrics(y, p[:, :13])
    with pytest.raises(UserError, match="groups"):
        metrics.summarize(y, p, np.arange(19), n_boot=10)
    with pytest.raises(UserError, match="p_b"):
        paired_bootstrap.paired_bootstrap(y, p, np.full_like(p, np.nan), None, n_boot=10)
    with pytest.raises(UserError, match="sigmoid"):
        calibration(y, p * 5 - 2)


def test_original_project_results_are_the_published_figures():
    r = original.original_project_results()
    assert r["seed-nopos"]["macro"] == {"auroc": 0.7191, "auprc": 0.2804}
    assert r["seed-nopos"]["micro"] == {"auroc": 0.8360, "auprc": 0.4764}
    assert r["seed-pos"]["macro"] == {"auroc": 0.7594, "auprc": 0.3091}
    assert r["seed-pos"]["micro"] == {"auroc": 0.8649, "auprc": 0.5313}
    assert r["seed-pos"]["pos_weight"] and "TEST SET" in r["seed-pos"]["selection"]


def test_plots_return_figures_that_render():
    y, p = make_data(120, seed=17)
    y[:, 10] = np.where(np.isnan(y[:, 10]), np.nan, 0.0)
    summary = metrics.summarize(y, p, None, n_boot=30)
    figures = [viz.plot_curves(y, p, summary=summary), viz.plot_curves(y, p, kind="pr"),
               viz.plot_forest(summary), viz.plot_reliability(y, p),
               viz.plot_reliability(y, p, per_finding=True)]
    titles = [ax.get_title() for ax in figures[0].axes]
    lo, hi = summary["per_finding"]["Edema"]["auroc"]["lo"], summary["per_finding"]["Edema"]["auroc"]["hi"]
    assert any(t.startswith("Edema\nAUROC") and f"[{lo:.3f}, {hi:.3f}]" in t for t in titles)
    assert any("one class only" in t for t in titles)
    assert sum(ax.get_visible() for ax in figures[0].axes) == 15
    for fig in figures:
        fig.savefig(io.BytesIO(), format="png")


def test_bench_bootstrap_reports_one_thread_timing():
    result = bench_bootstrap(["--images", "300", "--n-boot", "50", "--repeats", "1"])
    assert result["bench"] == "bootstrap" and result["threads"] == 1 and result["n_boot"] == 50
    assert result["seconds_best"] > 0


def test_a_split_with_one_patient_gives_degenerate_intervals_not_errors():
    """Every resample of a one-patient split is that patient: the CI collapses onto the estimate."""
    rng = np.random.default_rng(0)
    y = (rng.random((6, len(FINDINGS))) < 0.5).astype(float)
    y[:, FINDINGS.index("Edema")] = 0.0                      # a finding with no positive at all
    p = rng.random((6, len(FINDINGS)))
    summary = metrics.summarize(y, p, np.array(["p1"] * 6), n_boot=20, seed=0)
    macro = summary["macro"]["auroc"]
    assert macro["lo"] == pytest.approx(macro["value"]) == pytest.approx(macro["hi"])
    assert summary["per_finding"]["Edema"]["auroc"]["value"] is None


# --------------------------------------------------------------------------- estimable findings
def test_a_finding_below_min_positives_keeps_its_estimate_but_no_ci_and_leaves_the_macro():
    rng = np.random.default_rng(21)
    n = 300
    y = (rng.random((n, len(FINDINGS))) < 0.3).astype(float)
    y[:, 10] = 0
    y[:3, 10] = 1                                                  # Pleural Other: three positives
    p = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    s = metrics.summarize(y, p, np.arange(n), n_boot=200, seed=0, min_positives=10)
    rare = s["per_finding"]["Pleural Other"]
    assert not rare["estimable"] and rare["n_pos"] == 3 and rare["n_neg"] == n - 3
    assert rare["auroc"]["value"] == pytest.approx(roc_auc_score(y[:, 10], p[:, 10]))
    assert rare["auroc"]["lo"] is None and rare["auprc"]["hi"] is None
    assert s["not_estimable"] == ["Pleural Other"] and "Pleural Other" not in s["macro_findings"]
    others = [j for j in range(len(FINDINGS)) if j != 10]
    assert s["macro"]["auroc"]["value"] == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in others]))
    assert s["macro"]["auroc"]["n_boot_valid"] == 200 and not s["macro"]["auroc"]["conditional"]
    everything = metrics.summarize(y, p, np.arange(n), n_boot=200, seed=0, min_positives=1)
    assert everything["macro_findings"] == FINDINGS and everything["per_finding"]["Pleural Other"]["auroc"]["lo"] is not None
    # with min_positives 1, the one-positive-patient resamples lose the finding: the macro CI is conditional
    y[:, 10] = 0
    y[0, 10] = 1
    conditional = metrics.summarize(y, p, np.arange(n), n_boot=200, seed=0, min_positives=1)
    assert conditional["macro"]["auroc"]["n_boot_valid"] < 200 and conditional["macro"]["auroc"]["conditional"]
    table = tables.frame(conditional).set_index("finding")
    assert "conditional" in table.loc["macro", "note"] and "14 of 14" in table.loc["macro", "note"]
    assert "13 of 14" in tables.frame(metrics.summarize(y, p, None, n_boot=50)).set_index("finding").loc[
        "macro", "note"]


def test_the_percentile_interval_undercovers_below_min_positives():
    """Why MIN_POSITIVES is 10: the patient-bootstrap percentile interval of one AUROC (binormal, true AUROC
    Phi(1.5 / sqrt 2) = 0.856, 300 negatives) covers about 85% at 10 positives but half the time at 2."""
    from scipy.stats import norm

    truth = norm.cdf(1.5 / np.sqrt(2))

    def coverage(n_pos, reps=300, n_boot=200):
        rng, hits = np.random.default_rng(n_pos), 0
        for r in range(reps):
            y = np.r_[np.ones(n_pos), np.zeros(300)][:, None]
            p = 1 / (1 + np.exp(-(1.5 * y + rng.normal(size=y.shape))))
            weights = np.concatenate(list(metrics.patient_weights(None, len(y), n_boot, seed=r)), axis=1)
            aurocs = metrics.resample_stats(y, p, weights.T, findings=["f"])["auroc"][:, 0]
            lo, hi = np.percentile(aurocs[~np.isnan(aurocs)], [2.5, 97.5])   # summarize's interval
            hits += lo <= truth <= hi
        return hits / reps

    assert coverage(metrics.MIN_POSITIVES) >= 0.8
    assert coverage(2) <= 0.65


def test_a_bootstrap_p_is_never_zero():
    assert paired_bootstrap.bootstrap_p(np.full(999, 0.1)) == (pytest.approx(2 / 1000), 999)
    assert paired_bootstrap.bootstrap_p(np.zeros(50))[0] == 1.0
    assert paired_bootstrap.bootstrap_p(np.r_[np.full(90, 0.1), np.full(10, -0.1)])[0] == pytest.approx(2 * 11 / 101)


def test_estimability_counts_patients_not_images():
    """Ten positive images of eight patients are eight independent units: not estimable at min_positives 10
    with the patients given; without them each row is its own unit."""
    from cxrlib.stats.metrics import ranking_metrics, summarize

    rng = np.random.default_rng(0)
    n = 300
    groups = np.array([f"p{i}" for i in range(n)], dtype=object)
    groups[1], groups[3] = groups[0], groups[2]   # rows 0-9 positive: 8 patients
    y = np.zeros((n, 1))
    y[:10, 0] = 1
    p = np.clip(0.3 * y + rng.random((n, 1)), 0, 1)
    by_rows = ranking_metrics(y, p, ["x"], min_positives=10)
    by_patients = ranking_metrics(y, p, ["x"], min_positives=10, groups=groups)
    assert by_rows["per_finding"]["x"]["estimable"] and not by_patients["per_finding"]["x"]["estimable"]
    assert by_patients["per_finding"]["x"]["patients_pos"] == 8 and by_patients["per_finding"]["x"]["n_pos"] == 10
    assert "from 8 and 290 patients, fewer than min_positives = 10 patients" in by_patients["notes"][0]
    summary = summarize(y, p, groups, n_boot=20, min_positives=10, findings=["x"])
    assert summary["macro_findings"] == [] and summary["per_finding"]["x"]["auroc"]["lo"] is None


def test_auprc_macro_is_the_challenges_map_over_the_labels_with_positives():
    """CXR-LT ranks by mAP: the mean over labels of binary average precision. Ours is the AUPRC macro over the
    findings it can estimate; with min_positives 1 and no masked cells that is scikit-learn's macro AP over the
    labels with a positive (a label with none has no AP)."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    y = (rng.random((500, 40)) < np.geomspace(0.002, 0.4, 40)).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * y - 2)))
    names = [f"label {j}" for j in range(40)]
    has = y.sum(0) > 0
    ours = metrics.ranking_metrics(y, p, names, min_positives=1)
    assert not has.all() and ours["excluded"] == [n for n, h in zip(names, has) if not h]
    assert ours["macro"]["auprc"] == pytest.approx(average_precision_score(y[:, has], p[:, has], average="macro"),
                                                   abs=1e-12)
