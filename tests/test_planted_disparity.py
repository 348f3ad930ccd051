"""The planted disparity, end to end without a GPU: synthetic tree -> cohort -> MIMIC-IV join -> a model
-> the audit. The model is a logistic regression on 32x32 pixels (a CNN would take minutes; make demo
trains the ResNet): it learns from every training image, and must still under-detect in women, whose
findings the stand-in draws fainter (SIGNATURE_STRENGTH). The audit has to find that gap, in the
under-detection direction with a CI excluding 0 and surviving Holm, and find nothing on age, race or
insurance."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from cxrlib.data import cohort, demographics
from cxrlib.evaluation import audit, fairness
from cxrlib.labels import FINDINGS
from cxrlib.params import Params
from cxrlib.synthetic import mimic_cxr
from cxrlib.synthetic.mimic_iv import PLANTED_FILE

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*their selected study has no row:UserWarning")]


def pixels(root, paths) -> np.ndarray:
    def one(path):
        with Image.open(root / path) as image:
            return np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
    return np.stack([one(path).ravel() for path in paths])


def best_f1_threshold(p: np.ndarray, y: np.ndarray) -> float:
    known = ~np.isnan(y)
    p, y = p[known], y[known]
    candidates = np.unique(p)
    f1 = [2 * ((p >= t) & (y == 1)).sum() / max(1, (p >= t).sum() + (y == 1).sum()) for t in candidates]
    return float(candidates[int(np.argmax(f1))]) if len(candidates) else 0.5


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted") / "mimic"
    mimic_cxr.generate(root, subjects=2400, seed=7, workers=0, progress=False, max_studies=1)
    p = Params(data_root=str(root), views=["AP", "PA"], images_per_study="all", split_mode="official",
               val_fraction=0.0, label_source="negbio", uncertain_policy="zeros", blank_policy="zeros")
    frame, _ = cohort.build_cohort(root, p)
    table, coverage = demographics.demographics_for_cohort(frame, root, root / "mimic-iv")
    x, y, split = pixels(root, frame["path"]), frame[FINDINGS].to_numpy(float), frame["split"].to_numpy()
    scores, thresholds = frame[["subject_id", *FINDINGS]].copy(), {}
    for j, finding in enumerate(FINDINGS):
        train = (split == "train") & ~np.isnan(y[:, j])
        model = LogisticRegression(C=0.05, tol=1e-9, max_iter=10000).fit(x[train], y[train, j])
        scores[f"p_{finding}"] = model.predict_proba(x)[:, 1]
        validate = split == "validate"
        thresholds[finding] = best_f1_threshold(scores[f"p_{finding}"].to_numpy()[validate], y[validate, j])
    test = split == "test"
    groups = audit.with_intersection(table.reset_index(drop=True))[test].reset_index(drop=True)
    rows = fairness.audit(scores[test].reset_index(drop=True), groups, thresholds, n_boot=400, seed=0)
    planted = json.loads((root / "mimic-iv" / PLANTED_FILE).read_text())
    return rows, audit.planted_check(rows, planted), coverage


def test_the_audit_finds_the_planted_gap_in_women(audited):
    rows, check, coverage = audited
    assert coverage["patients"] > 1500
    assert check["detected"], audit.significant(rows).head(10)
    found = pd.DataFrame(check["found"])
    assert set(found["group"]) == {"F"} and set(found["attribute"]) == {"sex"}
    assert set(found["metric"]) <= {"auroc_macro", "underdiagnosis"} and (found["reference"] == "M").all()
    macro = rows[(rows["metric"] == "auroc_macro") & (rows["attribute"] == "sex") & rows["gap"].notna()].iloc[0]
    assert macro["group"] == "F" and macro["gap"] < 0   # ranked worse in women (significant or not)
    own = rows[rows["gap"].isna() & (rows["attribute"] == "sex")]
    under = own[own["metric"] == "underdiagnosis"].set_index("group")
    assert under.loc["F", "value"] > under.loc["M", "value"]   # more women with a finding called "No Finding"
    auroc = rows[(rows["metric"] == "auroc") & (rows["attribute"] == "sex") & (rows["group"] == "F")]
    assert (auroc["gap"].dropna() < 0).mean() >= 0.75           # most findings ranked worse in women


def test_the_audit_finds_nothing_where_nothing_was_planted(audited):
    rows, check, _ = audited
    assert check["unplanted_clean"], pd.DataFrame(check["unplanted_significant"])
    unplanted = rows[rows["attribute"].isin(["age_band", "race", "insurance"]) & rows["p_value"].notna()]
    assert len(unplanted) > 50 and (unplanted["p_value"] < 0.05).mean() < 0.15   # about the nominal rate, unadjusted
    assert not unplanted["significant"].fillna(False).astype(bool).any()
