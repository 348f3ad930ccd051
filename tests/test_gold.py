"""Study-level evaluation (levels.py) and the radiologist labels of 2.1.0 (gold.py, test_labels.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from cxrlib import account
from cxrlib.errors import UserError
from cxrlib.evaluation import gold
from cxrlib.labels import FINDINGS
from cxrlib.params import Params
from cxrlib.runfiles import prob_columns
from cxrlib.stats import levels, metrics
from cxrlib.synthetic import mimic_cxr, test_labels
from cxrlib.synthetic.tables import CHEXPERT, SPLIT

PROBS = prob_columns(FINDINGS)


def predictions(rows):
    """rows: (dicom, subject, study, split, p_first_finding, label_first_finding); other findings constant."""
    frame = pd.DataFrame(rows, columns=["dicom_id", "subject_id", "study_id", "split", "p", "y"])
    out = frame[["dicom_id", "subject_id", "study_id", "split"]].copy()
    for j, f in enumerate(FINDINGS):
        out[PROBS[j]] = frame["p"].to_numpy(np.float32) if j == 0 else np.float32(0.5)
        out[f] = frame["y"].to_numpy(np.float32) if j == 0 else np.float32(0.0)
    return out


FRAME = predictions([
    ("d1", "s1", "50000001", "test", 0.9, 1.0), ("d2", "s1", "50000001", "test", 0.3, 1.0),   # study of two
    ("d3", "s1", "50000002", "test", 0.2, 0.0),
    ("d4", "s2", "50000003", "test", 0.6, 0.0), ("d5", "s2", "50000003", "test", 0.8, 0.0),
    ("d6", "s3", "50000004", "test", 0.75, 1.0),
    ("d7", "s4", "50000005", "validate", 0.4, 0.0),
])


def test_study_rows_aggregate_by_hand():
    mean = levels.study_rows(FRAME, "mean")
    assert mean["study_id"].tolist() == ["50000001", "50000002", "50000003", "50000004", "50000005"]
    assert mean["n_images"].tolist() == [2, 1, 2, 1, 1]
    assert mean[PROBS[0]].tolist() == pytest.approx([0.6, 0.2, 0.7, 0.75, 0.4])
    assert levels.study_rows(FRAME, "max")[PROBS[0]].tolist() == pytest.approx([0.9, 0.2, 0.8, 0.75, 0.4])
    assert mean[FINDINGS[0]].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert mean["subject_id"].tolist() == ["s1", "s1", "s2", "s3", "s4"]
    assert levels.several_images_per_study(FRAME) and not levels.several_images_per_study(mean)
    assert levels.rows_at(FRAME, "image") is FRAME


def test_study_rows_refuse_a_study_whose_images_disagree():
    bad = FRAME.copy()
    bad.loc[1, FINDINGS[0]] = 0.0
    with pytest.raises(RuntimeError, match="50000001"):
        levels.study_rows(bad)


def test_study_level_auroc_counts_studies():
    test = levels.study_rows(FRAME[FRAME["split"] == "test"], "mean")
    # studies: positives 0.6 and 0.75, negatives 0.2 and 0.7 -> 3 of 4 pairs ordered (images: 4 of 6)
    assert roc_auc_score(test[FINDINGS[0]], test[PROBS[0]]) == pytest.approx(0.75)
    images = FRAME[FRAME["split"] == "test"]
    assert roc_auc_score(images[FINDINGS[0]], images[PROBS[0]]) == pytest.approx(4 / 6)
    summary = metrics.summarize(test[FINDINGS].to_numpy(), test[PROBS].to_numpy(), test["subject_id"], n_boot=20)
    assert summary["per_finding"][FINDINGS[0]]["auroc"]["value"] == pytest.approx(0.75)
    assert summary["n_images"] == 4 and summary["n_patients"] == 3


# --------------------------------------------------------------------------- the file
def write_gold(root, rows, columns=None):
    columns = columns or test_labels.GOLD_COLUMNS
    pd.DataFrame(rows, columns=columns).to_csv(root / gold.GOLD_FILE, index=False)


def test_read_gold_maps_airspace_opacity_and_keeps_the_values(tmp_path):
    assert gold.read_gold(tmp_path) is None
    assert "Airspace Opacity" in test_labels.GOLD_COLUMNS and "Lung Opacity" not in test_labels.GOLD_COLUMNS
    j = test_labels.GOLD_COLUMNS.index("Airspace Opacity") - 1
    row = [1.0, np.nan] + [0.0] * 12
    row[j] = -1.0
    write_gold(tmp_path, [["50000001", *row]])
    table = gold.read_gold(tmp_path)
    assert list(table.columns) == ["study_id", *FINDINGS]
    assert table["Lung Opacity"].iloc[0] == -1.0
    pd.DataFrame({"study_id": ["50000001"], "Edema": [1.0]}).to_csv(tmp_path / gold.GOLD_FILE, index=False)
    partial = gold.read_gold(tmp_path)   # a finding the file lacks is masked, not refused
    assert partial["Edema"].tolist() == [1.0] and partial.drop(columns=["study_id", "Edema"]).isna().all().all()
    np.testing.assert_array_equal(table[FINDINGS].to_numpy()[0], np.array(row))
    assert table["study_id"].tolist() == ["50000001"]


@pytest.mark.parametrize("change, message", [
    (lambda rows, cols: (rows, ["study"] + cols[1:]), "expected a study_id column"),
    (lambda rows, cols: ([[rows[0][0], 2.0, *rows[0][2:]]], cols), "must be 1, 0, -1 or blank"),
    (lambda rows, cols: (rows + rows, cols), "its own study_id"),
])
def test_read_gold_refuses_a_damaged_file_naming_it(tmp_path, change, message):
    rows, cols = change([["50000001", *([0.0] * 14)]], list(test_labels.GOLD_COLUMNS))
    write_gold(tmp_path, rows, cols)
    with pytest.raises(UserError, match=message) as e:
        gold.read_gold(tmp_path)
    assert gold.GOLD_FILE in str(e.value)


# --------------------------------------------------------------------------- agreement
def test_agreement_against_a_hand_computation():
    rng = np.random.default_rng(3)
    n = 60
    g = rng.integers(0, 2, (n, 14)).astype(float)
    a = np.where(rng.random((n, 14)) < 0.2, 1 - g, g)
    a[:5, 0] = np.nan           # masked on the NLP side
    g[5:8, 0] = np.nan          # and on the radiologists'
    subjects = np.repeat(np.arange(30), 2).astype(str)
    table = gold.agreement(pd.DataFrame(a, columns=FINDINGS), pd.DataFrame(g, columns=FINDINGS), subjects,
                           n_boot=200, seed=0, source="negbio")
    for j, f in enumerate(FINDINGS):
        known = ~np.isnan(a[:, j]) & ~np.isnan(g[:, j])
        x, t = a[known, j], g[known, j]
        row = table.set_index("finding").loc[f]
        assert row["n"] == known.sum() == (52 if j == 0 else 60)
        assert row["sensitivity"] == pytest.approx(((x == 1) & (t == 1)).sum() / (t == 1).sum())
        assert row["specificity"] == pytest.approx(((x == 0) & (t == 0)).sum() / (t == 0).sum())
        assert row["kappa"] == pytest.approx(cohen_kappa_score(x, t))
        assert row["kappa_lo"] <= row["kappa"] <= row["kappa_hi"]
    assert set(table["source"]) == {"negbio"}


# --------------------------------------------------------------------------- the model against the labels
def test_gold_section_scores_only_labelled_test_studies_with_the_given_thresholds(tmp_path):
    write_gold(tmp_path, [["50000001", 0.0, *([0.0] * 13)],     # the radiologists disagree with NLP here
                          ["50000002", 1.0, *([0.0] * 13)],
                          ["50000004", 1.0, *([0.0] * 13)],
                          ["50000005", 1.0, *([0.0] * 13)]])    # a validate study: never scored
    labels = pd.DataFrame({"subject_id": ["s1", "s1", "s2", "s3", "s4"],
                           "study_id": ["50000001", "50000002", "50000003", "50000004", "50000005"],
                           **{f: 0.0 for f in FINDINGS}})
    for source in gold.SOURCES:
        labels.to_csv(tmp_path / f"mimic-cxr-2.0.0-{source}.csv", index=False)
    p = Params(data_root=str(tmp_path), bootstrap=50, eval_level="study", study_aggregate="max")
    rules = {f: {"fixed_0.5": 0.5} for f in FINDINGS}
    section = gold.gold_section(FRAME, gold.read_gold(tmp_path), p, rules)
    assert section["available"] and section["studies_in_file"] == 4
    assert section["studies_scored"] == 3 and section["patients_scored"] == 2
    vs_gold = section["model_vs_gold"]["per_finding"][FINDINGS[0]]
    # max aggregation: study 1 scores 0.9 (gold 0), study 2 0.2 (gold 1), study 4 0.75 (gold 1) -> 0 of 2
    assert vs_gold["n_pos"] == 2 and vs_gold["auroc"]["value"] == pytest.approx(0.0)
    vs_nlp = section["model_vs_nlp"]["per_finding"][FINDINGS[0]]
    assert vs_nlp["n_pos"] == 2 and vs_nlp["auroc"]["value"] == pytest.approx(1.0)   # NLP: 1, 0, 1
    at = pd.DataFrame(section["thresholds_vs_gold"]).set_index(["finding", "rule"]).loc[(FINDINGS[0], "fixed_0.5")]
    assert at["threshold"] == 0.5 and at["tp"] == 1 and at["fp"] == 1 and at["fn"] == 1
    assert len(section["agreement"]) == 2 * 14
    assert not gold.comparison_table(section).empty
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").unlink()   # a partial copy: NegBio is still compared
    partial = gold.gold_section(FRAME, gold.read_gold(tmp_path), p, rules)
    assert {row["source"] for row in partial["agreement"]} == {"negbio"}
    assert "no chexpert table" in partial["agreement_missing"]


def test_gold_section_without_the_file_or_without_test_overlap(tmp_path):
    p = Params(data_root=str(tmp_path), bootstrap=20)
    assert gold.gold_section(FRAME, None, p)["available"] is False
    write_gold(tmp_path, [["59999999", *([0.0] * 14)]])
    pd.DataFrame({"subject_id": ["s9"], "study_id": ["59999999"], **{f: [0.0] for f in FINDINGS}}).to_csv(
        tmp_path / "mimic-cxr-2.0.0-negbio.csv", index=False)
    pd.DataFrame({"subject_id": ["s9"], "study_id": ["59999999"], **{f: [0.0] for f in FINDINGS}}).to_csv(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    section = gold.gold_section(FRAME, gold.read_gold(tmp_path), p)
    assert section["studies_scored"] == 0 and "split_mode: official" in section["reason"]


# --------------------------------------------------------------------------- the synthetic file
def test_synthetic_radiologist_labels_cover_official_test_studies_and_disagree_as_documented(tmp_path):
    mimic_cxr.generate(tmp_path, subjects=4000, seed=0, images=False, progress=False)
    labelled = gold.read_gold(tmp_path)
    split = pd.read_csv(tmp_path / SPLIT, dtype=str)
    test_studies = set(split.loc[split["split"] == "test", "study_id"])
    assert set(labelled["study_id"]) <= test_studies
    assert 0.5 < len(labelled) / len(test_studies) < 0.7          # GOLD_FRACTION of those with a label row
    drawn = pd.read_csv(tmp_path / CHEXPERT, dtype={"study_id": str}).set_index("study_id")
    drawn = drawn.loc[labelled["study_id"], FINDINGS].to_numpy()
    g = labelled[FINDINGS].to_numpy()
    common = [j for j, f in enumerate(FINDINGS) if f not in test_labels.rare_findings() + ["No Finding"]]
    rare = [FINDINGS.index(f) for f in test_labels.rare_findings()]
    for cols, missed in ((common, test_labels.POSITIVE_MISSED), (rare, test_labels.RARE_POSITIVE_MISSED)):
        d, r = drawn[:, cols], g[:, cols]
        assert np.mean(r[d == 1] == 0) == pytest.approx(missed, abs=0.04)
    d, r = drawn[:, common], g[:, common]
    assert np.mean(r[d == -1] == 1) == pytest.approx(test_labels.UNCERTAIN_RESOLVED, abs=0.08)
    assert np.mean(r[np.isnan(d)] == 0) == pytest.approx(test_labels.BLANK_NEGATIVE, abs=0.03)


def test_the_annotator_and_nlp_macros_are_set_side_by_side_over_the_same_findings():
    """Each label set's own macro covers the findings it alone can estimate (13 against 7 in the demo): side by
    side they compared different findings. The sentence the card and the index print compares like with like."""
    rng = np.random.default_rng(0)
    n = 400
    groups = np.arange(n).astype(str)
    y_gold = (rng.random((n, 14)) < 0.2).astype(float)
    y_nlp = y_gold.copy()
    y_nlp[:, 7:] = 0
    y_nlp[:5, 7:] = 1            # the NLP labels hold too few positives for findings 8-14
    prob = np.clip(0.4 * y_gold + rng.random((n, 14)) * 0.8, 0, 1)
    common = dict(groups=groups, n_boot=30, seed=0, ci_level=0.95, min_positives=10)
    section = {"model_vs_gold": metrics.summarize(y_gold, prob, **common),
               "model_vs_nlp": metrics.summarize(y_nlp, prob, **common), "studies_scored": n, "patients_scored": n}
    same = gold.like_for_like(section, y_gold, y_nlp, prob, common)
    assert same["findings"] == FINDINGS[:7] and len(section["model_vs_gold"]["macro_findings"]) == 14
    on_seven = metrics.summarize(y_gold[:, :7], prob[:, :7], findings=FINDINGS[:7], **common)["macro"]["auroc"]
    assert same["gold"]["value"] == pytest.approx(on_seven["value"])
    assert same["gold"]["value"] != pytest.approx(section["model_vs_gold"]["macro"]["auroc"]["value"])
    line = account.annotator_line({**section, "like_for_like": same})
    assert "both over the 7 findings both label sets can estimate (Atelectasis, Cardiomegaly" in line
