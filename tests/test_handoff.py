"""From run to use: recalibration against closed forms and sklearn, the exported files against PyTorch and
against predictions.csv, predict on the source JPEGs against predictions.csv, and the model card."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib import params, runfiles
from cxrlib.__main__ import main
from cxrlib.account import figure_text
from cxrlib.data.cohort import read_cohort
from cxrlib.errors import UserError
from cxrlib.evaluation import analysis, evaluate, recalibration, trained
from cxrlib.handoff import card, checklists, export, predict
from cxrlib.labels import FINDINGS
from cxrlib.stats import levels
from cxrlib.stats.metrics import ranking_metrics
from cxrlib.stats.thresholds import choose_thresholds


# --------------------------------------------------------------------------- recalibration
def test_temperature_has_the_closed_form_of_one_repeated_score():
    # Every score is p0 and a share q of the labels is positive: the log loss is least where
    # sigmoid(logit(p0) / T) = q, so T = logit(p0) / logit(q).
    p0, q = 0.9, 0.7
    y = np.r_[np.ones(70), np.zeros(30)]
    t = recalibration.fit_temperature(y, np.full(100, p0))
    assert t == pytest.approx(np.log(p0 / (1 - p0)) / np.log(q / (1 - q)), rel=1e-7)


def test_temperature_zeroes_the_log_loss_gradient_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-z / 2.5))).astype(float)   # overconfident scores: T near 2.5
    p = 1 / (1 + np.exp(-z))
    t = recalibration.fit_temperature(y, p)
    s = 1 / (1 + np.exp(-z / t))
    assert 2.0 < t < 3.0 and abs(np.mean((s - y) * z)) < 1e-6   # d(loss)/d(1/T) = mean((s - y) z) = 0
    fitted = recalibration.fit("temperature", y[:, None], p[:, None], findings=["x"])
    out = recalibration.apply(fitted, p[:, None], findings=["x"])
    assert np.allclose(out[:, 0], s, atol=1e-9)
    assert ranking_metrics(y[:, None], out, ["x"])["macro"]["auroc"] == pytest.approx(
        ranking_metrics(y[:, None], p[:, None], ["x"])["macro"]["auroc"], abs=1e-12)


def test_isotonic_equals_sklearns_isotonic_regression_inside_and_outside_the_fitted_range():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(1)
    p_val = rng.uniform(0.1, 0.9, 500)
    y_val = (rng.random(500) < p_val ** 2).astype(float)
    y_val[::7] = np.nan   # masked cells are left out of the fit
    fitted = recalibration.fit("isotonic", y_val[:, None], p_val[:, None], findings=["x"])
    p_test = np.r_[rng.uniform(0, 1, 300), 0.0, 1.0]
    known = ~np.isnan(y_val)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p_val[known], y_val[known])
    assert np.allclose(recalibration.apply(fitted, p_test[:, None], ["x"])[:, 0], reference.predict(p_test), atol=1e-12)


def test_a_finding_with_one_class_on_validation_is_left_as_it_was_and_said_so():
    y = np.c_[np.ones(20), np.r_[np.ones(10), np.zeros(10)]]
    p = np.linspace(0.05, 0.95, 20)[:, None].repeat(2, 1)
    fitted = recalibration.fit("temperature", y, p, findings=["a", "b"])
    assert fitted["per_finding"]["a"] is None and "a: one class" in fitted["notes"][0]
    out = recalibration.apply(fitted, p, ["a", "b"])
    assert np.array_equal(out[:, 0], p[:, 0]) and not np.allclose(out[:, 1], p[:, 1])
    with pytest.raises(UserError, match="calibration = 'platt'"):
        recalibration.fit("platt", y, p, ["a", "b"])


def test_the_run_is_recalibrated_on_validation_and_reports_before_and_after(tiny_run):
    p = params.validate({**runfiles.load_frozen(tiny_run).to_dict(), "calibration": "temperature"})
    predictions = runfiles.read_predictions(tiny_run)
    report = evaluate.evaluate_run(tiny_run, p, predictions, write=False)
    recal = report["recalibration"]
    units = levels.rows_at(predictions, p.eval_level, p.study_aggregate)   # what every figure counts
    y_val, p_val, _ = evaluate.arrays(units, "validate")
    by_hand = recalibration.fit("temperature", y_val, p_val, FINDINGS)
    for f in FINDINGS:
        ours, theirs = recal["per_finding"][f], by_hand["per_finding"][f]
        assert (ours is None) == (theirs is None) and (ours is None or ours["T"] == pytest.approx(theirs["T"]))
    assert recal["fitted_on"] == "validate"
    y_test, p_test, _ = evaluate.arrays(units, "test")
    from cxrlib.stats.calibration import calibration as cal

    after = cal(y_test, recalibration.apply(by_hand, p_test), 10, "uniform", FINDINGS)["pooled"]["ece"]
    assert recal["after"]["ece"]["value"] == pytest.approx(after, abs=1e-9)
    assert recal["after"]["ece"]["lo"] <= recal["after"]["ece"]["hi"]
    assert recal["after_minus_before"]["ece"]["diff"] == pytest.approx(
        after - report["splits"]["test"]["calibration"]["pooled"]["ece"]["value"], abs=1e-9)
    assert report["headline"] == runfiles.read_metrics(tiny_run)["headline"]   # discrimination: the model's scores


def test_single_images_get_thresholds_and_temperatures_fitted_on_validation_images(tiny_run):
    """At eval_level: study the headline's thresholds and temperatures are fitted on study means; what scores one
    image (predict, export, notebook 04) gets its own, fitted on the validation images."""
    p = params.validate({**runfiles.load_frozen(tiny_run).to_dict(), "calibration": "temperature"})
    predictions = runfiles.read_predictions(tiny_run)
    report = evaluate.evaluate_run(tiny_run, p, predictions, write=False)
    image = report["image_level"]
    assert image["level"] == "image" and not image["same_as_headline"] and report["thresholds"]["level"] == "study"
    y_img, p_img, _ = evaluate.arrays(predictions, "validate")
    chosen = choose_thresholds(y_img, p_img)
    for f in FINDINGS:
        expected = chosen[f]["f1"]
        got = image["thresholds"]["values"][f]["f1"]
        assert (got is None and np.isnan(expected)) or got == pytest.approx(expected)
    by_hand = recalibration.fit("temperature", y_img, p_img, FINDINGS)
    for f in FINDINGS:
        ours, theirs = image["recalibration"]["per_finding"][f], by_hand["per_finding"][f]
        assert (ours is None) == (theirs is None) and (ours is None or ours["T"] == pytest.approx(theirs["T"]))
    study_cut, _ = analysis.thresholds_from_report(report, "f1")
    image_cut, note = analysis.thresholds_from_report(report, "f1", level="image")
    assert "per image" in note and image_cut != study_cut
    assert analysis.fitted_for(report, "image")[1] == image["recalibration"]


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_export_matches_pytorch_and_predictions_csv(tiny_run, tmp_path, fmt):
    p = runfiles.load_frozen(tiny_run)
    out = tmp_path / f"model{export.FORMATS[fmt]}"
    summary = export.export_run(tiny_run, p, fmt, out)
    assert summary["parity"]["max_abs_prob_diff"] < 1e-4 and summary["parity"]["images"] > 10
    meta = export.read_metadata(out)
    assert meta["findings"] == FINDINGS and meta["input"]["image_size"] == p.image_size
    # The file scores single images: its thresholds were chosen on the validation IMAGES (the demo's figures
    # count studies, whose thresholds were tuned on study means), and the metadata says so.
    report = runfiles.read_metrics(tiny_run)
    f1 = {f: v["f1"] for f, v in report["image_level"]["thresholds"]["values"].items()}
    assert meta["thresholds"]["values"] == {f: pytest.approx(0.5 if f1[f] is None else f1[f]) for f in FINDINGS}
    assert meta["thresholds"]["level"] == "image" and meta["calibration"]["level"] == "image"
    assert meta["headline_test"]["level"] == "study"
    # Independently of export's own check: the file on cached images against notebook 03's predictions.
    cohort, cache = trained.eval_cohort(tiny_run, p)
    test = cohort[cohort["split"] == "test"].head(20)
    _, probs = export.run_exported(out, np.ascontiguousarray(cache.images[test["cache_row"].to_numpy()]))
    expected = runfiles.read_predictions(tiny_run).set_index("dicom_id").loc[test["dicom_id"], runfiles.prob_columns(FINDINGS)]
    assert probs.shape == (20, 14) and np.abs(probs - expected.to_numpy()).max() < 1e-4
    if fmt == "onnx":
        batch_of_one = export.run_exported(out, np.ascontiguousarray(cache.images[test["cache_row"].to_numpy()[:1]]))[1]
        assert np.abs(batch_of_one - expected.to_numpy()[:1]).max() < 1e-4   # the batch axis is dynamic


@pytest.mark.probe(issue=22, kind="loss")
def test_a_failed_check_leaves_the_previous_export_and_its_record(tiny_run, tmp_path, monkeypatch):
    p = runfiles.load_frozen(tiny_run)
    out = tmp_path / "model.pt"
    first = export.export_run(tiny_run, p, "torchscript", out)
    record = export.record_path(out)
    before = out.read_bytes(), record.read_text()
    (tmp_path / ".model.pt.export.tmp").write_bytes(b"left by an export killed mid-write")
    monkeypatch.setattr(export, "PARITY_LIMIT", 0.0)   # nothing passes: the check fails after writing
    with pytest.raises(UserError, match="was not kept, and model.pt .if any. is unchanged"):
        export.export_run(tiny_run, p, "torchscript", out)
    assert (out.read_bytes(), record.read_text()) == before and not list(tmp_path.glob(".model.pt*"))
    assert export.read_record(out)["sha256"] == first["sha256"] == json.loads(record.read_text())["sha256"]
    out.write_bytes(b"another file")                 # a record never describes a file other than its own
    assert export.read_record(out) is None


# --------------------------------------------------------------------------- predict
def test_predicting_the_source_jpegs_reproduces_predictions_csv(tiny_run, tmp_path, capsys):
    p = runfiles.load_frozen(tiny_run)
    cohort = read_cohort(tiny_run / "cohort.csv")
    test = cohort[cohort["split"] == "test"].head(12)
    files = [str(p.data_root) + "/" + path for path in test["path"]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    folder = tmp_path / "pngs"
    folder.mkdir()
    cached, cache = trained.eval_cohort(tiny_run, p)
    first = cached.set_index("dicom_id").loc[test["dicom_id"].iloc[0], "cache_row"]
    Image.fromarray(np.asarray(cache.images[first])).save(folder / "first.PNG")   # the cached pixels, as a PNG
    frame, skipped, _ = predict.predict_files(tiny_run, p, files + [str(broken), str(folder), "nope.jpg"],
                                              batch_size=5, progress=False)
    expected = runfiles.read_predictions(tiny_run).set_index("dicom_id").loc[test["dicom_id"], runfiles.prob_columns(FINDINGS)]
    assert list(frame["path"][:12]) == files
    assert np.abs(frame[runfiles.prob_columns(FINDINGS)].to_numpy()[:12] - expected.to_numpy()).max() < 1e-5
    probs = frame[runfiles.prob_columns(FINDINGS)].to_numpy()
    assert np.abs(probs[12] - expected.to_numpy()[0]).max() < 1e-5   # same pixels, no resize
    assert dict(skipped) == {"nope.jpg": "no such file or folder", str(broken): dict(skipped)[str(broken)]}
    # a file is one image: predict applies the thresholds chosen on validation images, also in a study-level run
    report = json.loads((tiny_run / "metrics.json").read_text())
    thresholds = (report["image_level"] or {}).get("thresholds", report["thresholds"])["values"] \
        if report["level"]["headline"] == "study" else report["thresholds"]["values"]
    f = "Support Devices"
    cut = 0.5 if thresholds[f]["f1"] is None else thresholds[f]["f1"]
    assert (frame[f"call_{f}"] == (frame[f"p_{f}"] >= cut)).all()
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(tiny_run), *files[:3], "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    written = pd.read_csv(out)
    assert len(written) == 3 and np.allclose(written[runfiles.prob_columns(FINDINGS)], expected.to_numpy()[:3], atol=1e-6)
    assert main(["predict", "--run", str(tiny_run), str(broken), "--no-progress"]) == 1
    assert f"skipped {broken}:" in capsys.readouterr().err
    # No Finding means none of the pathologies: never called beside one
    pathologies = [f"call_{f}" for f in FINDINGS if f not in ("No Finding", "Support Devices")]
    assert not (frame["call_No Finding"].astype(bool) & frame[pathologies].any(axis=1)).any()
    # at the terminal: a short block per image, every call (none hidden behind '+1 more') and the top 3, on one
    # scale, in lines of at most ~130 columns
    assert main(["predict", "--run", str(tiny_run), *files[:2], "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    shown = text.splitlines()
    assert shown[0] == str(files[0]) and shown[1].startswith("  called (") and "--format wide" in shown[-1]
    assert all(len(x) <= 130 for x in shown[1:-1] if not x.startswith(str(p.data_root))), shown
    first = text.split(str(files[1]))[0]
    called = [f for f in FINDINGS if frame[f"call_{f}"].iloc[0]]
    assert ("called (probability): none" in first or "called (calibrated probability): none" in first) if not called \
        else all(f in first for f in called)
    assert "more)" not in text


# --------------------------------------------------------------------------- the model card
def test_the_model_card_is_written_from_the_run_folder(tiny_run, tmp_path):
    copy = tmp_path / tiny_run.name
    copy.mkdir()
    for name in ("metrics.json", "params.yaml", "cohort_report.json", "fairness.json", "cohort.csv"):
        if (tiny_run / name).is_file():
            shutil.copy2(tiny_run / name, copy / name)
    md, page = card.write_card(copy)
    text = md.read_text()
    report = json.loads((copy / "metrics.json").read_text())
    macro = report["headline"]["AUROC macro"]
    assert f"| AUROC macro | {figure_text(macro)} | {macro['n_boot_valid']} of 50 |" in text
    for item, where in checklists.filled(checklists.TRIPOD_AI + checklists.CLAIM, []):   # no external validation
        assert f"| {item} | {where} |" in text
    assert "| 32 External validation | not done: one hospital" in text
    assert "| 23b Heterogeneity across clusters (hospitals) | not examined: one hospital" in text
    # TRIPOD+AI's own numbers (BMJ 2024): 13 class imbalance, 14 fairness, 15 output, 16 development vs evaluation data,
    # 22 model specification; there is no 12h. CLAIM 2020: 21 level of disjoint partitions, 26 selection.
    items = [item for item, _ in checklists.TRIPOD_AI]
    for number, words in (("13", "Class imbalance"), ("14", "Fairness"), ("15", "Model output"),
                          ("16", "Differences between development and evaluation data"), ("22", "Model specification"),
                          ("10", "Sample size")):
        assert f"{number} {words}" in " | ".join(items)
    assert not any(item.startswith(("12h", "23 Model spec")) for item in items)
    assert "21 Level at which partitions are disjoint" in text and "26 Method of selecting the final model" in text
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Training data", "Evaluation data",
                    "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"):
        assert f"## {section}" in text, section   # Mitchell et al.'s sections
    cohort = read_cohort(copy / "cohort.csv")
    for split in ("train", "validate", "test"):   # every split, the training one too
        part = cohort[cohort["split"] == split]
        assert f"| {split} | {len(part)} | {part['study_id'].nunique()} | {part['subject_id'].nunique()} |" in text
    assert "synthetic stand-in for MIMIC-CXR-JPG" in text and "trained on MIMIC-CXR-JPG" not in text
    assert "one annotator" in text and "reports" in text and "reference standard by experts" not in text
    assert "The macro figures average" in text and "(TP/P)" in text
    assert "credentialed PhysioNet data" in text and "Not a medical device" in text
    assert ("model was selected on the test split" in text) == report["test_selected"]
    audit = json.loads((copy / "fairness.json").read_text())
    for group in audit["groups"]:   # every group, not only the ones with a significant gap
        assert f"| {group['attribute']} | {group['group']} | {group['patients']} |" in text
    assert "<table>" in page.read_text() and "data:image" not in page.read_text()


@pytest.mark.probe(issue=22, kind="silent")
def test_the_card_calls_an_export_of_an_older_checkpoint_stale(tiny_run, tmp_path):
    copy = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("*.ipynb", "*.html", "export"))
    (copy / "export").mkdir()
    record = {"file": "model.onnx", "format": "onnx", "sha256": "ab" * 32, "parity": {"images": 5,
              "max_abs_prob_diff": 1e-7, "limit": 1e-4}, "metadata": {"checkpoint_sha256": "0" * 64,
                                                                       "input": {"image_size": 32}}}
    (copy / "export" / "model.onnx.json").write_text(json.dumps(record))
    assert "describes a file that is not there" in card.build_card(copy)   # no model.onnx beside the record
    (copy / "export" / "model.onnx").write_bytes(b"onnx bytes")
    record["sha256"] = hashlib.sha256(b"onnx bytes").hexdigest()
    (copy / "export" / "model.onnx.json").write_text(json.dumps(record))
    assert "is STALE" in card.build_card(copy)
    record["metadata"]["checkpoint_sha256"] = hashlib.sha256((copy / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    (copy / "export" / "model.onnx.json").write_text(json.dumps(record))
    text = card.build_card(copy)
    assert "STALE" not in text and "checked against PyTorch on 5 cached test images" in text
    # weights: none never saw MIMIC-CXR: no contamination box, here or in notebooks 02 and 03
    assert "starting weights: random initialisation (weights: none)" in text
    assert not any("MAY HAVE SEEN THE TEST PATIENTS" in t for t in
                   [text, *((tiny_run / f"{nb}.html").read_text() for nb in ("02_train", "03_evaluate"))])


# --------------------------------------------------------------------------- reports to hand around
def test_reports_of_03_to_05_hide_their_code_unless_asked_and_01_02_show_it(tiny_run, tmp_path):
    from cxrlib.experiments import runs

    assert "predict_run" in (tiny_run / "03_evaluate.ipynb").read_text()       # the notebook keeps its code
    assert "predict_run" not in (tiny_run / "03_evaluate.html").read_text()     # report_code: hide (the default)
    assert "error_images" not in (tiny_run / "04_error_analysis.html").read_text()
    assert "build_cohort" in (tiny_run / "01_cohort.html").read_text()
    shutil.copy2(tiny_run / "03_evaluate.ipynb", tmp_path / "03_evaluate.ipynb")
    shown = params.validate({**runfiles.load_frozen(tiny_run).to_dict(), "report_code": "show"})
    assert "predict_run" in runs.render(tmp_path / "03_evaluate.ipynb", shown).read_text()


@pytest.mark.probe(issue=22, kind="silent")
def test_the_commands_name_a_missing_run_and_export_from_the_command_line(tiny_run, tmp_path, capsys):
    assert main(["card", "--run", "no-such-run"]) == 2
    assert "--run no-such-run: not a run folder" in capsys.readouterr().err
    out = tmp_path / "m.pt"
    assert main(["export", "--run", str(tiny_run), "--format", "torchscript", "--out", str(out)]) == 0
    assert "parity with PyTorch" in capsys.readouterr().out and out.is_file()
    assert json.loads((tmp_path / "m.pt.json").read_text())["parity"]["max_abs_prob_diff"] < 1e-4
    for batch in ("0", "-3"):   # once: nothing predicted and exit 0, or a traceback
        assert main(["predict", "--run", str(tiny_run), "--batch", batch, str(tmp_path)]) == 2
        assert f"--batch {batch}: give the number of images per forward pass, at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- the run's index page and navigation
def local_links(page) -> list[str]:
    import re

    return [h for h in re.findall(r'(?:href|src)="([^"]+)"', page.read_text())
            if not h.startswith(("data:", "#")) and "://" not in h]


def test_the_index_page_links_every_report_and_file_and_states_the_headline(tiny_run):
    import re

    index = tiny_run / runfiles.INDEX
    text = index.read_text()
    report = runfiles.read_metrics(tiny_run)
    macro = report["headline"]["AUROC macro"]
    assert f"{macro['value']:.3f} [{macro['lo']:.3f}, {macro['hi']:.3f}]" in text
    assert "per <b>study</b>" in text or "per <b>image</b>" in text
    assert "primary gap(s) significant" in text          # the audit's verdict
    links = local_links(index)
    for name in ("01_cohort.html", "02_train.html", "03_evaluate.html", "04_error_analysis.html", "05_fairness.html",
                 "metrics.json", "params.yaml", "predictions.csv", "fairness.json"):
        assert name in links, name
    assert [h for h in links if not (tiny_run / h).exists()] == []
    thumbs = re.findall(r'<figure class="thumb"><a href="0[235]_[a-z_]+\.html"><img src="data:image/png[^"]*" '
                        r'alt="key figure of 0[235] [A-Za-z ]+">', text)
    assert len(thumbs) >= 4 and text.count("<figcaption>key figure of 0") >= 4   # captioned, with alt text
    assert "Synthetic data: this run was trained and tested on cxrlib's synthetic stand-in" in text
    assert "http://" not in text and "https://" not in text   # nothing from the network


def test_every_report_links_to_the_index_and_the_others_with_contents_that_resolve(tiny_run):
    import re

    reports = sorted(tiny_run.glob("0[1-5]_*.html"))
    assert len(reports) == 5
    for page in reports:
        text = page.read_text()
        links = local_links(page)
        assert runfiles.INDEX in links and all(r.name in links for r in reports), page.name
        assert [h for h in links if not (tiny_run / h).exists()] == [], page.name
        anchors = re.findall(r'<nav class="cxr-toc">.*?</nav>', text, flags=re.S)
        assert anchors, f"{page.name}: no table of contents"
        targets = re.findall(r'href="#([^"]+)"', anchors[0])
        assert len(targets) >= 3 and all(f'id="{t}"' in text for t in targets), page.name
        # wide tables scroll inside the page instead of being cut off at its right edge
        assert "table{display:block;overflow-x:auto;max-width:100%}" in text.replace(" ", "")


def test_the_navigation_follows_the_folder_when_a_report_is_added_later(tmp_path):
    from cxrlib.handoff import html as reports
    from cxrlib.handoff.index_page import write_index

    run = tmp_path / "r"
    run.mkdir()
    page = "<html><head></head><body><h1>x</h1><h2 id='a'>A</h2></body></html>"
    (run / "01_cohort.html").write_text(reports.with_navigation(page, run, "01_cohort.html"))
    assert "03_evaluate.html" not in (run / "01_cohort.html").read_text()
    (run / "03_evaluate.html").write_text(page)
    write_index(run)
    first = (run / "01_cohort.html").read_text()
    assert 'href="03_evaluate.html"' in first and 'href="index.html"' in first and first.count("cxr-nav--") == 2
    assert "Not evaluated yet" in (run / runfiles.INDEX).read_text()
