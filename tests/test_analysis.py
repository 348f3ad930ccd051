import numpy as np
import pandas as pd
import pytest

from cxrlib import runfiles
from cxrlib.data.cache import open_cache
from cxrlib.errors import UserError
from cxrlib.evaluation import analysis
from cxrlib.labels import FINDINGS

EDEMA = "Edema"


def predictions_frame(edema_labels, edema_probs, split="test", others=0.0, other_prob=0.1):
    """A predictions.csv-shaped frame: Edema as given, every other finding constant."""
    n = len(edema_labels)
    frame = pd.DataFrame({"dicom_id": [f"d{i:03d}" for i in range(n)], "subject_id": [f"1{i:07d}" for i in range(n)],
                          "study_id": [f"5{i:07d}" for i in range(n)], "split": split})
    for f in FINDINGS:
        frame[runfiles.prob_column(f)] = other_prob
        frame[f] = others
    frame[runfiles.prob_column(EDEMA)] = edema_probs
    frame[EDEMA] = np.asarray(edema_labels, dtype=float)
    return frame


def at(value=0.5):
    return {f: value for f in FINDINGS}


# --------------------------------------------------------------------------- worst errors
def test_top_errors_picks_the_most_confident_mistakes_in_order():
    labels = [0, 0, 0, 1, 1, 1, np.nan]
    probs = [0.9, 0.2, 0.95, 0.1, 0.8, 0.05, 0.99]
    frame = pd.concat([predictions_frame(labels, probs),
                       predictions_frame([0], [0.999], split="validate").assign(dicom_id="val")], ignore_index=True)
    errors = analysis.top_errors(frame, k=2)
    edema = errors[errors["finding"] == EDEMA]
    fp = edema[edema["kind"] == "FP"]
    fn = edema[edema["kind"] == "FN"]
    assert list(fp["dicom_id"]) == ["d002", "d000"] and list(fp["rank"]) == [1, 2]   # 0.95, 0.9; never validate
    assert list(fn["dicom_id"]) == ["d005", "d003"]                                   # 0.05, 0.1
    assert list(fp["p"]) == pytest.approx([0.95, 0.9]) and (fn["label"] == 1).all()
    assert "d006" not in set(edema["dicom_id"])                                      # masked label: no error
    # Every other finding is all-negative: k false positives each (ties broken by dicom_id), no false negative.
    other = errors[errors["finding"] == "Fracture"]
    assert list(other["kind"]) == ["FP", "FP"] and list(other["dicom_id"]) == ["d000", "d001"]


def test_errors_at_thresholds_and_masks():
    frame = predictions_frame([0, 1, 1, np.nan], [0.6, 0.6, 0.2, 0.9])
    wrong = analysis.errors_at(frame, at(0.5))[EDEMA].to_numpy()
    assert wrong[:3].tolist() == [1.0, 0.0, 1.0] and np.isnan(wrong[3])


def test_thresholds_come_from_validation_or_fall_back_to_the_fixed_one():
    values = {f: {"fixed_0.5": 0.5, "f1": 0.3, "youden": 0.2} for f in FINDINGS}
    values[EDEMA]["f1"] = None   # one class on validation
    chosen, note = analysis.thresholds_from_report({"thresholds": {"chosen_on": "validate", "values": values}})
    assert chosen["Fracture"] == 0.3 and chosen[EDEMA] == 0.5
    assert "validation" in note and EDEMA in note
    no_val = {f: {"fixed_0.5": 0.5} for f in FINDINGS}
    chosen, note = analysis.thresholds_from_report({"thresholds": {"chosen_on": None, "values": no_val}})
    assert set(chosen.values()) == {0.5} and "no validation split" in note


# --------------------------------------------------------------------------- label uncertainty
def test_uncertainty_table_separates_uncertain_from_certain_labels():
    # Source: two positives, two uncertain (mapped to 0 by 'zeros'), three negatives, one blank.
    source = [1, 1, -1, -1, 0, 0, 0, np.nan]
    targets = [1, 1, 0, 0, 0, 0, 0, 0]
    probs = [0.9, 0.7, 0.8, 0.3, 0.2, 0.1, 0.6, 0.4]
    test = predictions_frame(targets, probs)
    raw = pd.DataFrame({"subject_id": test["subject_id"], "study_id": test["study_id"],
                        **{f: 0.0 for f in FINDINGS}})
    raw[EDEMA] = source
    table = analysis.uncertainty_table(test, raw, at(0.5), "zeros")
    row = table.loc[EDEMA]
    assert (row["n_positive"], row["n_uncertain"], row["n_negative"], row["n_blank"]) == (2, 2, 3, 1)
    assert row["uncertain_policy"] == "zeros"
    assert row["mean_p_uncertain"] == pytest.approx(0.55) and row["mean_p_positive"] == pytest.approx(0.8)
    assert row["mean_p_blank"] == pytest.approx(0.4)
    assert row["auroc_certain"] == pytest.approx(1.0)          # 0.9, 0.7 above 0.2, 0.1, 0.6, 0.4
    # uncertain (0.8, 0.3) against the certain negatives (0.2, 0.1, 0.6, 0.4): 6 of 8 pairs won.
    assert row["auroc_uncertain_vs_negative"] == pytest.approx(6 / 8)
    assert row["error_rate_uncertain"] == pytest.approx(0.5)   # 0.8 called positive, its target is 0
    assert row["error_rate_certain"] == pytest.approx(1 / 6)   # only 0.6 (target 0) is wrong
    ignored = analysis.uncertainty_table(test.assign(**{EDEMA: [1, 1, np.nan, np.nan, 0, 0, 0, 0]}), raw,
                                         at(0.5), {"Edema": "ignore"}).loc[EDEMA]
    assert ignored["uncertain_policy"] == "ignore" and np.isnan(ignored["error_rate_uncertain"])
    with pytest.raises(ValueError, match="aligned"):
        analysis.uncertainty_table(test, raw.iloc[::-1], at(0.5))


# --------------------------------------------------------------------------- image properties
def test_metadata_columns_and_breakdown(tmp_path):
    test = predictions_frame([0, 1, 0, 1, 0, 1], [0.1, 0.9, 0.2, 0.4, 0.6, 0.8])
    meta = pd.DataFrame({"dicom_id": test["dicom_id"], "subject_id": test["subject_id"],
                         "study_id": test["study_id"], "ViewPosition": ["AP", "AP", "AP", "PA", "PA", "PA"],
                         "Rows": [3056, 3056, 3056, 2544, 2544, 2500], "Columns": [2544, 2544, 2544, 3056, 3056, 2500]})
    meta.to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    read = analysis.read_metadata_columns(tmp_path)
    assert list(read.columns) == ["dicom_id", "ViewPosition", "Rows", "Columns"]
    frame = analysis.with_image_properties(test, read, top_sizes=1)
    assert list(frame["orientation"]) == ["portrait"] * 3 + ["landscape"] * 2 + ["square"]
    assert list(frame["size"]) == ["3056x2544"] * 3 + ["other"] * 3
    table = analysis.breakdown(frame, "ViewPosition", at(0.5), n_boot=30)
    assert list(table.index) == ["AP", "PA"] and list(table["images"]) == [3, 3]
    assert table.loc["AP", "auroc_micro"] == pytest.approx(1.0)
    # PA: Edema 0.4 (label 1) is missed, 0.6 (label 0) is called; the 13 other findings are right at 0.1.
    assert table.loc["PA", "error_rate"] == pytest.approx(2 / (3 * 14))
    assert table.loc["AP", "error_rate"] == 0
    meta.drop(columns="Rows").to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    with pytest.raises(UserError, match=r"metadata.csv.gz: missing column\(s\) \['Rows'\]"):
        analysis.read_metadata_columns(tmp_path)


# --------------------------------------------------------------------------- co-occurrence
def test_fn_rate_when_another_finding_is_present_or_absent():
    n = 12
    test = predictions_frame([1] * n, [0.1] * 4 + [0.9] * 8)   # 12 Edema positives, the first 4 missed
    test["Pleural Effusion"] = [1.0] * 6 + [0.0] * 6             # effusion with 4 missed of 6; without it 0 of 6
    table = analysis.fn_by_cooccurrence(test, at(0.5), min_n=5)
    row = table[(table["finding"] == EDEMA) & (table["other"] == "Pleural Effusion")].iloc[0]
    assert (row["n_present"], row["n_absent"]) == (6, 6)
    assert row["fn_rate_present"] == pytest.approx(4 / 6) and row["fn_rate_absent"] == 0
    assert row["difference"] == pytest.approx(4 / 6)
    sparse = analysis.fn_by_cooccurrence(test, at(0.5), min_n=7)
    assert sparse["difference"].isna().all()
    assert len(table) == len(FINDINGS) * (len(FINDINGS) - 1)
    assert analysis.plot_cooccurrence(table) is not None


# --------------------------------------------------------------------------- on the tiny run
@pytest.mark.slow
def test_error_images_and_grad_cam_on_the_best_checkpoint(tiny_run):
    p = runfiles.load_frozen(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    errors = analysis.top_errors(predictions, 2)
    images, cams, note = analysis.error_images(tiny_run, p, errors)
    # the tiny run's ResNet50 at 32 px: layer4's map is 1 x 1, so the deepest block with 8 x 8 (layer1) is taken
    assert note.startswith("Grad-CAM on `layer") and "(body." in note and "its map 8 x 8 at 32 px" in note \
        and "deepest block" in note   # torchvision's name first, the Sequential's index beside it
    assert images.shape == cams.shape == (len(errors), 32, 32) and images.dtype == np.uint8
    assert cams.min() >= 0 and cams.max() <= 1 and np.isfinite(cams).all()
    cache = open_cache(p.resolved_cache_dir(), p.image_size, p.resize)
    rows = cache.rows_for(errors["dicom_id"])
    assert np.array_equal(images, np.asarray(cache.images[rows]))
    figure = analysis.error_gallery(errors, images, cams, errors["finding"].iloc[0])
    assert len([ax for ax in figure.axes if ax.images]) >= 2
    assert analysis.error_gallery(errors, images, cams, errors["finding"].iloc[0], redact=True) is None
    assert analysis.error_browser(errors, images, cams, redact=True) is None


@pytest.mark.slow
def test_error_analysis_notebook_shows_its_figures(tiny_run):
    html = (tiny_run / "04_error_analysis.html").read_text()
    assert html.count("data:image/png") >= 5 + len(FINDINGS)   # a gallery per finding, then the breakdowns
    for heading in ("Label uncertainty", "Image properties", "Co-occurring findings", "auroc_uncertain_vs_negative"):
        assert heading in html
    assert "no breakdown by view" not in html and ">PA<" in html   # the tiny run has AP and PA images: a table by view
