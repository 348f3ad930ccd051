"""bench scale: the rehearsal of every step after training at MIMIC's scale, run here at a tiny size."""
from __future__ import annotations

import json

import pandas as pd

from cxrlib.bench import scale
from cxrlib.labels import FINDINGS
from cxrlib.runfiles import METRICS, PREDICTIONS


def test_bench_scale_times_every_step_at_each_size_and_says_how_each_grows(tmp_path):
    result = scale.bench_scale(["--base", "0.003", "--sizes", "1,2", "--bootstrap", "30", "--model-mb", "1",
                                "--keep", str(tmp_path)])
    small, large = result["sizes"]
    assert [s["multiple"] for s in result["sizes"]] == [1.0, 2.0]
    assert large["cohort_images"] > 1.5 * small["cohort_images"] and large["nih_images"] >= 2 * small["nih_images"] - 1
    for size in result["sizes"]:
        assert set(size["steps"]) == {"baseline", *scale.STEPS}
        for step in scale.STEPS:
            timed = size["steps"][step]
            assert timed["seconds"] >= 0 and timed["units"] > 0 and timed["peak_mb"] > 100, (step, timed)
        # the test split is carved to its share of the release's 5,159 images, from the synthetic test patients
        assert size["test_images"] >= round(scale.FULL["test_images"] * size["share"])
    assert set(result["growth"]) == set(scale.STEPS)
    assert result["growth"]["external"]["work"] >= 1.9   # NIH's rows scale with the size
    # what the steps wrote is a run like any other: its headline from drawn scores with a signal per finding
    run = tmp_path / "x2" / "runs" / "a"
    test = json.loads((run / METRICS).read_text())["splits"]["test"]["per_finding"]
    aurocs = [e["auroc"]["value"] for e in test.values() if e["auroc"]["value"] is not None]
    # a handful of test patients at this size: point estimates, mostly without CIs
    assert len(aurocs) >= 5 and 0.6 < sorted(aurocs)[len(aurocs) // 2] < 0.99   # the signal: test_drawn_scores_...
    predictions = pd.read_csv(run / PREDICTIONS)
    assert set(predictions["split"]) == {"validate", "test"} and predictions[[f"p_{f}" for f in FINDINGS]].notna().all().all()
    for name in ("fairness.json", "MODEL_CARD.md", "index.html", "external/nih/metrics.json"):
        assert (run / name).is_file(), name


def test_drawn_scores_separate_each_finding_as_asked():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = (rng.random((20_000, len(FINDINGS))) < 0.3).astype(float)
    scores = scale.draw_scores(labels, rng)
    aurocs = [roc_auc_score(labels[:, j], scores[:, j]) for j in range(len(FINDINGS))]
    # a binormal pair at separation d has AUROC Phi(d / sqrt 2)
    from statistics import NormalDist
    expected = [NormalDist().cdf(scale.SEPARATION[f] / 2 ** 0.5) for f in FINDINGS]
    assert np.allclose(aurocs, expected, atol=0.02) and scores.dtype == np.float32
