"""A run of another label set end to end at small size: CXR-LT 2024's 40 findings on the synthetic stand-in, the
organisers' split, asymmetric loss; evaluated (mAP and macro AUROC with CIs, head / medium / tail), audited on
`Normal`, exported, predicted, carded, validated on the NIH stand-in with the labels NIH can say, and written as a
challenge submission. Then a comparison with a chexpert14 run is refused, naming the difference."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import run_notebooks, tiny_params
from sklearn.metrics import average_precision_score

from cxrlib import labelset, runfiles
from cxrlib.errors import UserError
from cxrlib.evaluation import ensemble, fairness, paired
from cxrlib.handoff import card, export, predict, submission
from cxrlib.synthetic import external_standins

pytestmark = pytest.mark.slow
LT = labelset.load("cxr-lt-2024")


@pytest.fixture(scope="module")
def lt_run(tiny_data, tiny_runs_dir):
    p = tiny_params(tiny_data, tiny_runs_dir, "tiny-lt", label_set="cxr-lt-2024", split_mode="label_set",
                    studies_per_subject="all", images_per_study="all", loss="asl", eval_level="image",
                    calibration="none", max_train_batches=3)
    return run_notebooks(p)


def test_a_cxr_lt_2024_run_trains_evaluates_audits_and_hands_on_its_40_labels(lt_run, tmp_path, one_thread):
    cohort = pd.read_csv(lt_run / runfiles.COHORT, nrows=0)
    assert list(cohort.columns[6:]) == list(LT.labels)                 # the set's labels, in its order
    report = runfiles.read_metrics(lt_run)
    assert report["model"]["labels"] == list(LT.labels) and report["model"]["label_set"] == "cxr-lt-2024"
    predictions = runfiles.read_predictions(lt_run)
    assert runfiles.labels_of(predictions) == list(LT.labels)
    # mAP: sklearn's macro average precision over the labels with positives (enough of them: min_positives)
    test = predictions[predictions["split"] == "test"]
    averaged = report["macro"]["findings"]
    assert averaged and set(averaged) <= set(LT.labels)
    y, prob = test[averaged].to_numpy(), test[runfiles.prob_columns(averaged)].to_numpy()
    assert report["headline"]["AUPRC macro"]["value"] == pytest.approx(average_precision_score(y, prob, average="macro"))
    head = report["buckets"]["groups"]["head"]
    assert report["buckets"]["label_set"] == "cxr-lt-2024" and head["findings"] and head["auroc"]["lo"] <= head["auroc"]["hi"]
    assert "Normal" in report["buckets"]["bucket"]
    audit = json.loads((lt_run / runfiles.FAIRNESS_JSON).read_text())
    assert audit["nothing_found"] == "Normal"
    # the tiny run's groups are all under min_group_patients: the audit itself, on its test images, with small groups
    sex = pd.DataFrame({"sex": np.where(np.arange(len(test)) % 2, "F", "M")})
    rows = fairness.audit(test.reset_index(drop=True), sex, {f: 0.5 for f in LT.labels}, n_boot=20,
                          min_group_patients=5, attributes=("sex",), min_cases=1, nothing_found="Normal")
    under = rows[(rows["metric"] == "underdiagnosis") & rows["gap"].isna()]
    normal = test["Normal"].to_numpy() == 0   # underdiagnosis: Normal called when Normal is 0
    called = test["p_Normal"].to_numpy() >= 0.5
    male = np.arange(len(test)) % 2 == 0
    by_hand = called[normal & male].mean()
    assert under.set_index("group").loc["M", "value"] == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="not among the run's labels"):
        fairness.audit(test.reset_index(drop=True), sex, {f: 0.5 for f in LT.labels}, n_boot=5, attributes=("sex",))
    assert report["gold"]["available"] is False and "chexpert14" in report["gold"]["reason"]
    gold = labelset.read_table(LT, runfiles.load_frozen(lt_run).data_root, "gold_test")   # task 2: its own split
    assert report["set_gold"]["images_scored"] == int(test["dicom_id"].isin(gold["dicom_id"]).sum()) > 0
    assert report["set_gold"]["labels"] == list(LT.gold_labels) and report["set_gold"]["rows_in_table"] == len(gold)

    p = runfiles.load_frozen(lt_run)
    record = export.export_run(lt_run, p, "torchscript")
    assert record["metadata"]["findings"] == list(LT.labels) and record["parity"]["max_abs_prob_diff"] < 1e-4
    first = test["dicom_id"].iloc[0]
    path = tiny_run_image(p, first)
    frame, skipped, _ = predict.predict_files(lt_run, p, [path], batch_size=4, progress=False)
    assert not skipped and runfiles.labels_of(frame) == list(LT.labels)
    assert np.abs(frame[runfiles.prob_columns(LT.labels)].to_numpy()[0]
                  - test.set_index("dicom_id").loc[first, runfiles.prob_columns(LT.labels)].to_numpy(float)).max() < 1e-5
    assert {f"call_{f}" for f in LT.labels} <= set(frame.columns)
    text = card.build_card(lt_run)
    assert "Head, medium and tail" in text and "Pneumoperitoneum" in text
    sub = submission.submission(lt_run)
    assert list(sub.columns) == ["dicom_id", *LT.labels] and len(sub) == len(test)
    assert "of the" in submission.coverage(sub, p)

    # external validation on NIH with the labels NIH can say: exactly Mass, Nodule, Emphysema... (not Fracture)
    from cxrlib.evaluation import external_validation
    root = tmp_path / "nih"
    external_standins.generate(root, "nih", images=60, seed=1, shift="planted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored, info = external_validation.score_source(lt_run, p, "nih", root, progress=False)
        ext = external_validation.external_report(lt_run, p, scored, info, n_boot=50)
    status = ext["label_map"]["status"]
    assert status["Mass"] == status["Nodule"] == status["Emphysema"] == "exact" and status["Fracture"] == "missing"
    assert set(ext["mapped"]) <= set(LT.labels) and "Mass" in ext["mapped"]


def tiny_run_image(p, dicom_id: str) -> str:
    cohort = pd.read_csv(runfiles.run_folder(p.run_dir())[0] / runfiles.COHORT, dtype=str)
    return os.path.join(p.data_root, cohort.set_index("dicom_id").loc[dicom_id, "path"])


def test_runs_of_two_label_sets_are_neither_compared_nor_ensembled(lt_run, tiny_run):
    p = runfiles.load_frozen(tiny_run)
    with pytest.raises(UserError, match="alone predicts.*label set"):
        paired.compare_runs(tiny_run, lt_run, p)
    with pytest.raises(UserError, match="An ensemble needs runs of one label set"):
        ensemble.average_predictions([tiny_run, lt_run])
