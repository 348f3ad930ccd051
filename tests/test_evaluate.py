import hashlib
import html
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrlib import account, params, runfiles
from cxrlib.data.cohort import read_cohort
from cxrlib.errors import UserError
from cxrlib.evaluation import evaluate, paired, tables, trained
from cxrlib.evaluation import gold as goldlib
from cxrlib.evaluation.tables import HEADLINE
from cxrlib.labels import FINDINGS
from cxrlib.stats import levels, metrics
from cxrlib.stats.delong import delong_test

pytestmark = pytest.mark.slow


def frozen(run_dir, **overrides):
    p = runfiles.load_frozen(run_dir)
    return params.validate({**p.to_dict(), **overrides})


# --------------------------------------------------------------------------- the run's files
def test_every_notebook_ran_and_rendered(tiny_run):
    for nb in runfiles.NOTEBOOKS:
        executed = tiny_run / f"{nb}.ipynb"
        assert executed.is_file() and (tiny_run / f"{nb}.html").is_file(), nb
        cells = nbformat.read(str(executed), as_version=4).cells
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (nb, errors[:1])
    for name in ("params.yaml", "cohort.csv", "predictions.csv", "metrics.json", "checkpoints/best.pt"):
        assert (tiny_run / name).is_file(), name


def test_predictions_csv_columns_rows_and_labels(tiny_run):
    predictions = runfiles.read_predictions(tiny_run)
    assert list(predictions.columns) == runfiles.ID_COLUMNS + runfiles.prob_columns(FINDINGS) + FINDINGS
    cohort = read_cohort(tiny_run / "cohort.csv")
    expected = cohort[cohort["split"].isin(["validate", "test"])]
    assert sorted(predictions["dicom_id"]) == sorted(expected["dicom_id"])   # every image decoded in the demo
    assert set(predictions["split"]) == {"validate", "test"}
    probs = predictions[runfiles.prob_columns(FINDINGS)].to_numpy()
    assert np.isfinite(probs).all() and (probs > 0).all() and (probs < 1).all()
    merged = predictions.merge(cohort, on="dicom_id", suffixes=("", "_cohort"))
    assert np.array_equal(merged[FINDINGS].to_numpy(), merged[[f"{f}_cohort" for f in FINDINGS]].to_numpy(),
                          equal_nan=True)
    assert (merged["subject_id"] == merged["subject_id_cohort"]).all()


def test_predict_run_is_deterministic_and_tta_stays_close(tiny_run):
    p = frozen(tiny_run)
    on_disk = runfiles.read_predictions(tiny_run)
    again = evaluate.predict_run(tiny_run, p, write=False)
    assert list(again["dicom_id"]) == list(on_disk["dicom_id"])
    # Same batches, same bits; the float32 text round trip loses nothing.
    assert np.array_equal(again[runfiles.prob_columns(FINDINGS)].to_numpy(), on_disk[runfiles.prob_columns(FINDINGS)].to_numpy())
    plain = again.loc[again["split"] == "test", runfiles.prob_columns(FINDINGS)].to_numpy()
    tta = evaluate.predict_run(tiny_run, p, splits=("test",), tta=True, write=False)[runfiles.prob_columns(FINDINGS)].to_numpy()
    assert not np.allclose(tta, plain, atol=1e-4) and np.abs(tta - plain).max() < 0.2


def test_shift_tta_averages_probabilities_of_the_shifted_views():
    class LeftBright(nn.Module):      # logit = mean of the left third of the image: a shift changes it
        def forward(self, x):
            return x[..., : x.shape[-1] // 3].mean(dim=(1, 2, 3))[:, None].repeat(1, 2)

    x = torch.zeros(2, 1, 30, 30)
    x[..., :10] = 3.0
    tta = trained.ShiftTTA(LeftBright(), shift=0.1)
    views = []
    for dx, dy in tta.offsets:
        shifted = torch.roll(x, shifts=(round(-dy * 30), round(-dx * 30)), dims=(2, 3))
        if dx > 0:
            shifted[..., -3:] = x[..., -1:]      # border padding, as grid_sample's padding_mode="border"
        if dx < 0:
            shifted[..., :3] = x[..., :1]
        views.append(torch.sigmoid(LeftBright()(shifted)))
    expected = torch.stack(views).mean(0)
    assert torch.allclose(torch.sigmoid(tta(x)), expected, atol=1e-5)
    assert not torch.allclose(expected, torch.sigmoid(LeftBright()(x)))


# --------------------------------------------------------------------------- metrics.json
def test_metrics_json_headline_selection_and_fingerprint(tiny_run):
    report = json.loads((tiny_run / "metrics.json").read_text())
    assert set(report["headline"]) == {"AUROC macro", "AUROC micro", "AUPRC macro", "AUPRC micro"}
    test = report["splits"]["test"]
    for key, figure in report["headline"].items():
        assert set(figure) == {"value", "lo", "hi", "n_boot_valid", "conditional"}
        average, metric = HEADLINE[key]
        if figure["lo"] is None:   # the tiny test split: no finding with min_positives of each class
            assert average == "macro" and not report["macro"]["findings"], key
            continue
        assert figure["lo"] <= figure["hi"], key
        if not figure["conditional"]:
            assert figure["lo"] <= figure["value"] <= figure["hi"], key
        else:
            # The interval rests on fewer than 99% of the resamples (the others lost every positive of a
            # finding in the macro): conditional on those, and the report must say so.
            assert figure["n_boot_valid"] < 0.99 * report["ci"]["n_boot"], key
            assert any(note.startswith(f"{key}: CI from") for note in report["notes"]), key
    macro = report["macro"]
    assert macro["min_positives"] == 10 and set(macro["findings"]) == set(test["macro_findings"])
    for finding, entry in test["per_finding"].items():   # the macro covers exactly the estimable findings
        assert (finding in macro["findings"]) == (min(entry["n_pos"], entry["n_neg"]) >= 10)
        assert entry["estimable"] or entry["auroc"]["lo"] is None
    for key in ("AUROC micro", "AUPRC micro"):   # micro pools every cell: every resample counts
        assert test["micro"][key.split()[0].lower()]["n_boot_valid"] == report["ci"]["n_boot"]
    assert report["headline"]["AUROC micro"]["value"] == test["micro"]["auroc"]["value"]
    # the demo's eval_level: study, each study's images' probabilities averaged
    assert report["level"]["headline"] == "study" and report["level"]["aggregate"] == "mean"
    studies = levels.study_rows(runfiles.read_predictions(tiny_run), "mean")
    y, p, _ = evaluate.arrays(studies, "test")
    assert test["micro"]["auroc"]["value"] == pytest.approx(metrics.ranking_metrics(y, p)["micro"]["auroc"], abs=1e-12)
    assert test["n_images"] == report["level"]["units_per_split"]["test"] == len(y)
    assert test["n_boot"] == 50 and report["ci"]["level"] == 0.95
    assert set(report["splits"]) == {"validate", "test"}
    assert report["selection"]["select_on"] == "validate" and report["selection"]["best_epoch"] == 1
    assert report["test_selected"] is False and report["warnings"] == []
    data = report["data"]
    assert data["cohort_sha256"] == hashlib.sha256((tiny_run / "cohort.csv").read_bytes()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", data["cache_index_sha256"])
    assert data["cache"]["cache_version"] >= 1 and data["cache"]["size"] == 32
    assert sum(data["images_per_split"].values()) == len(runfiles.read_predictions(tiny_run))
    assert report["params"]["arch"] == "resnet50" and report["versions"]["torch"] == torch.__version__
    assert report["original_project"]["seed-pos"]["macro"]["auroc"] == 0.7594
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


def test_epochs_are_chosen_on_the_units_the_figures_count(tiny_run):
    """The demo scores studies; training chose its epoch on validation studies too (history's select_level),
    and the best epoch's score is the study-level macro AUROC of its predictions (to float32 rounding)."""
    history = pd.read_csv(tiny_run / "history.csv")
    assert (history["select_level"] == "study").all()
    report = runfiles.read_metrics(tiny_run)
    assert report["selection"]["level"] == "study" and report["selection"]["note"] is None
    studies = levels.study_rows(runfiles.read_predictions(tiny_run), "mean")
    y, p, _ = evaluate.arrays(studies, "validate")
    best = history[history["selected"]].iloc[-1]
    assert best["val_auroc_macro"] == pytest.approx(metrics.ranking_metrics(y, p)["macro"]["auroc"], abs=1e-4)


def test_per_unit_aggregates_probabilities_and_keeps_one_label_row():
    from cxrlib.training.inference import per_unit

    probs = np.array([[0.2, 0.9], [0.4, 0.1], [0.7, 0.5]])
    labels = np.array([[1.0, np.nan], [1.0, np.nan], [0.0, 1.0]])
    mean, first = per_unit(probs, labels, ["s2", "s2", "s1"])
    assert np.allclose(mean, [[0.3, 0.5], [0.7, 0.5]]) and np.array_equal(first[:, 0], [1.0, 0.0])
    assert np.isnan(first[0, 1]) and first[1, 1] == 1.0
    assert np.allclose(per_unit(probs, labels, ["s2", "s2", "s1"], "max")[0], [[0.4, 0.9], [0.7, 0.5]])


def test_thresholds_never_look_at_the_test_labels(tiny_run):
    p = frozen(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    base = evaluate.evaluate_run(tiny_run, p, predictions, write=False)
    shuffled = predictions.copy()
    test = (shuffled["split"] == "test").to_numpy()
    studies = levels.study_rows(predictions[test]).set_index("study_id")[FINDINGS]   # labels are per study
    order = np.random.default_rng(0).permutation(len(studies))
    relabelled = studies.iloc[order].set_axis(studies.index)
    shuffled.loc[test, FINDINGS] = relabelled.loc[shuffled.loc[test, "study_id"]].to_numpy()
    other = evaluate.evaluate_run(tiny_run, p, shuffled, write=False)
    assert other["thresholds"]["values"] == base["thresholds"]["values"]
    assert other["thresholds"]["test"] != base["thresholds"]["test"]   # the shuffle did change the test labels
    assert base["thresholds"]["chosen_on"] == "validate"
    # ... whereas the validation labels do move them.
    flipped = predictions.copy()
    val = (flipped["split"] == "validate").to_numpy()
    flipped.loc[val, FINDINGS] = 1.0 - flipped.loc[val, FINDINGS].to_numpy()
    moved = evaluate.evaluate_run(tiny_run, p, flipped, write=False)
    assert moved["thresholds"]["values"] != base["thresholds"]["values"]


def test_radiologist_labels_only_score(tiny_run, tiny_data, tmp_path):
    """Without the 2.1.0 file every figure, threshold and choice is the same; with it, a gold section."""
    p = frozen(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    with_gold = evaluate.evaluate_run(tiny_run, p, predictions, write=False)
    bare = tmp_path / "release-2.0.0"
    bare.mkdir()
    for table in tiny_data.glob("mimic-cxr-2.0.0-*"):
        (bare / table.name).symlink_to(table)
    without = evaluate.evaluate_run(tiny_run, params.validate({**p.to_dict(), "data_root": str(bare),
                                                              "cache_dir": str(p.resolved_cache_dir())}),
                                    predictions, write=False)
    assert without["gold"]["available"] is False and "2.1.0" in without["gold"]["reason"]
    for key in ("headline", "thresholds", "splits", "selection", "level"):
        assert with_gold[key] == without[key], key
    gold = with_gold["gold"]
    assert gold["available"] and gold["studies_scored"] > 0
    test_studies = set(predictions.loc[predictions["split"] == "test", "study_id"])
    assert gold["studies_scored"] == len(test_studies & set(goldlib.read_gold(tiny_data)["study_id"]))
    assert gold["model_vs_gold"]["n_images"] == gold["model_vs_nlp"]["n_images"] == gold["studies_scored"]
    assert {row["source"] for row in gold["agreement"]} == {"negbio", "chexpert"}


def test_threshold_metrics_on_test_match_hand_counts(tiny_run):
    report = runfiles.read_metrics(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    test = levels.study_rows(predictions[predictions["split"] == "test"], "mean")   # the demo's eval_level
    table = tables.threshold_table(report)
    for row in table[table["rule"] == "f1"].dropna(subset=["tp"]).itertuples():
        y = test[row.finding].to_numpy()
        called = test[runfiles.prob_column(row.finding)].to_numpy() >= row.threshold
        known = ~np.isnan(y)
        assert row.tp == int((called & (y == 1))[known].sum()) and row.fn == int((~called & (y == 1))[known].sum())
        assert row.threshold == report["thresholds"]["values"][row.finding]["f1"]


def test_without_a_validation_split_only_the_fixed_threshold(tiny_run):
    p = frozen(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    report = evaluate.evaluate_run(tiny_run, p, predictions[predictions["split"] == "test"], write=False)
    assert report["thresholds"]["chosen_on"] is None
    assert all(set(v) == {"fixed_0.5"} for v in report["thresholds"]["values"].values())
    assert any("no validation split" in n for n in report["notes"])
    assert set(report["splits"]) == {"test"}


def test_selection_on_test_is_flagged_loudly(tiny_run, tmp_path, capsys):
    p = frozen(tiny_run, select_on="test", select_metric="accuracy")
    report = evaluate.evaluate_run(tiny_run, p, runfiles.read_predictions(tiny_run), write=False)
    assert report["test_selected"] is True and report["selection"]["test_selected"] is True
    assert account.warnings(report)[0] == account.SELECTED_ON_TEST and "optimistic" in account.SELECTED_ON_TEST
    assert report["selection"]["warning"] == account.SELECTED_ON_TEST and report["warnings"] == []   # worded once
    assert account.warnings(runfiles.read_metrics(tiny_run)) == []
    # make runs says so beside the figure (in red in a terminal), as it does for contaminated starting weights
    from cxrlib.experiments import lister
    from cxrlib.fsutil import atomic_write_json, jsonable

    listed = tmp_path / "runs" / "selected"
    listed.mkdir(parents=True)
    runfiles.freeze(p, listed)
    contaminated = {"starting_weights": {"contamination": {"status": "contaminated"}}}
    check = "the starting weights saw MIMIC-CXR's test patients"
    atomic_write_json(listed / runfiles.METRICS, jsonable({**report, "model": contaminated, "warnings": [check]}))
    note = lister.runs_table(tmp_path / "runs").set_index("run").loc["selected", "note"]
    assert note.startswith(f"WARNING: {account.SELECTED_ON_TEST_SHORT}; WARNING: {account.CONTAMINATED_SHORT}; ")
    lister.cli("runs", ["--runs-dir", str(tmp_path / "runs")])   # and in full, under the table, in account's words
    printed = capsys.readouterr().out
    assert f"WARNING selected: {account.SELECTED_ON_TEST}\nWARNING selected: {check}\n" in printed


def test_original_comparison_puts_our_ci_beside_both_published_models(tiny_run):
    report = runfiles.read_metrics(tiny_run)
    table = tables.original_comparison(report)
    assert list(table.index) == ["AUROC macro", "AUROC micro", "AUPRC macro", "AUPRC micro"]
    assert table.loc["AUROC macro", "original pos_weight off"] == 0.7191
    assert table.loc["AUPRC micro", "original pos_weight on"] == 0.5313
    head = report["headline"]["AUROC micro"]
    assert table.loc["AUROC micro", "ours"] == head["value"] and table.loc["AUROC micro", "ours_lo"] == head["lo"]
    # demo is pos_weight: false, so the matching published model is the pos_weight-off one.
    assert table.loc["AUROC micro", "ours - original (same pos_weight)"] == pytest.approx(head["value"] - 0.8360)
    assert "test set" in table.attrs["note"].lower()


# --------------------------------------------------------------------------- two runs
def test_compare_runs_with_itself_gives_zero_differences(tiny_run):
    table = paired.compare_runs(tiny_run, tiny_run, frozen(tiny_run))
    assert set(table["metric"]) == {"auroc", "auprc", "ece", "brier"}
    defined = table.dropna(subset=["diff"])
    assert len(defined) >= 6
    assert (defined["diff"] == 0).all() and (defined["lo"] == 0).all() and (defined["hi"] == 0).all()
    assert (defined["this_run"] == defined["other_run"]).all()
    assert table.attrs["shared_images"] == table.attrs["this_images"] > 0


def test_compare_runs_sees_a_better_run(tiny_run, tmp_path):
    better = tmp_path / "better"
    better.mkdir()
    predictions = runfiles.read_predictions(tiny_run)
    labels = predictions[FINDINGS].to_numpy()
    # Nudge every probability towards its label: ranking can only improve.
    probs = predictions[runfiles.prob_columns(FINDINGS)].to_numpy() + 0.5 * np.nan_to_num(labels)
    predictions[runfiles.prob_columns(FINDINGS)] = np.clip(probs, 0, 1)
    predictions.to_csv(better / "predictions.csv", index=False)
    table = paired.compare_runs(better, tiny_run, frozen(tiny_run)).set_index(["finding", "metric"])
    assert table.loc[("micro", "auroc"), "diff"] > 0 and table.loc[("micro", "auroc"), "lo"] > 0
    assert table.loc[("micro", "auroc"), "this_run"] > table.loc[("micro", "auroc"), "other_run"]
    # DeLong beside the bootstrap: per finding it is delong_test on the shared units, clustered by patient
    p = frozen(tiny_run)
    units = levels.rows_at(predictions[predictions["split"] == "test"], p.eval_level, p.study_aggregate)
    other = levels.rows_at(runfiles.read_predictions(tiny_run).query("split == 'test'"), p.eval_level, p.study_aggregate)
    finding = next(f for f in FINDINGS if pd.notna(table.loc[(f, "auroc"), "delong_p"]))
    expected = delong_test(units[finding], units[f"p_{finding}"], other[f"p_{finding}"],
                                   clusters=units["subject_id"])
    assert table.loc[(finding, "auroc"), "delong_p"] == pytest.approx(expected["p"], rel=1e-9)
    assert table.loc[(finding, "auroc"), "delong_se"] == pytest.approx(expected["se"], rel=1e-9)
    assert table.loc[("macro", "auroc"), "delong_p"] < 0.05
    per_finding = table.loc[FINDINGS].xs("auroc", level="metric")["delong_p_holm"].dropna()
    assert (per_finding >= table.loc[FINDINGS].xs("auroc", level="metric")["delong_p"].dropna()).all()


def test_compare_runs_refuses_other_labels_and_disjoint_test_sets(tiny_run, tmp_path):
    p = frozen(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    relabelled = tmp_path / "relabelled"
    relabelled.mkdir()
    changed = predictions.copy()
    changed["Edema"] = 1.0 - changed["Edema"]
    changed.to_csv(relabelled / "predictions.csv", index=False)
    with pytest.raises(UserError, match="label the shared test images differently.*Edema"):
        paired.compare_runs(tiny_run, relabelled, p)
    disjoint = tmp_path / "disjoint"
    disjoint.mkdir()
    moved = predictions.copy()
    moved["dicom_id"] = "x" + moved["dicom_id"]
    moved.to_csv(disjoint / "predictions.csv", index=False)
    with pytest.raises(UserError, match="share no test image"):
        paired.compare_runs(tiny_run, disjoint, params.validate({**p.to_dict(), "eval_level": "image"}))
    moved["study_id"] = "x" + moved["study_id"]   # at study level (the demo's) studies are paired
    moved.to_csv(disjoint / "predictions.csv", index=False)
    with pytest.raises(UserError, match=r"share no test study \(joined on study_id\)"):
        paired.compare_runs(tiny_run, disjoint, p)
    with pytest.raises(UserError, match=r"predictions.csv: no predictions; run notebook 03"):
        paired.compare_runs(tiny_run, tmp_path / "never-evaluated", p)


@pytest.mark.probe(issue=22, kind="silent")
def test_compare_runs_refuses_other_test_sets_unless_asked_and_then_counts_them(tiny_run, tmp_path):
    """AP-only against AP+PA shares some studies: a difference on those is not the difference of the two runs'
    reported figures, so it is refused; compare_on: shared compares them and says how many of each run's."""
    p = frozen(tiny_run)
    predictions = runfiles.read_predictions(tiny_run)
    test_studies = predictions.loc[predictions["split"] == "test", "study_id"].unique()
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    predictions[~predictions["study_id"].isin(test_studies[:5])].to_csv(fewer / "predictions.csv", index=False)
    n = len(test_studies)
    with pytest.raises(UserError, match=f"has {n} test studies and fewer {n - 5}; they share {n - 5}.*compare_on: shared"):
        paired.compare_runs(tiny_run, fewer, p)
    table = paired.compare_runs(tiny_run, fewer, params.validate({**p.to_dict(), "compare_on": "shared"}))
    assert (table.attrs["shared_images"], table.attrs["this_images"], table.attrs["other_images"]) == (n - 5, n, n - 5)
    assert table.attrs["identical"] is False and table.attrs["compare_on"] == "shared"
    assert paired.compare_runs(tiny_run, tiny_run, p).attrs["identical"] is True


# --------------------------------------------------------------------------- reports
def test_evaluate_notebook_shows_tables_and_figures(tiny_run):
    html = (tiny_run / "03_evaluate.html").read_text()
    assert "AUROC macro" in html and "original pos_weight on" in html
    assert html.count("data:image/png") >= 6   # forest, ROC, PR, two reliability diagrams, ...
    assert "OPTIMISTIC" not in html and "the test set was not used to choose it" in html
    assert "compare_with is empty" in html


def test_redacted_run_holds_no_image_at_all(tiny_redacted_run):
    found = []
    for path in sorted(tiny_redacted_run.glob("*.ipynb")) + sorted(tiny_redacted_run.glob("*.html")):
        text = path.read_text()
        for marker in ("image/png", "image/jpeg", "data:image", "<image"):
            if marker in text:
                found.append((path.name, marker))
    assert not found
    names = {p.name for p in tiny_redacted_run.iterdir()}
    assert {f"{nb}.{ext}" for nb in runfiles.NOTEBOOKS for ext in ("ipynb", "html")} <= names
    # The plots are still there, as vectors.
    assert "image/svg+xml" in (tiny_redacted_run / "03_evaluate.ipynb").read_text()
    assert '<figure class="thumb"><a href="03_evaluate.html"><svg' in (tiny_redacted_run / runfiles.INDEX).read_text()
    assert "redact_images is on" in (tiny_redacted_run / "04_error_analysis.html").read_text()
    # compare_with: tiny (the same model) in notebook 03: paired differences, all zero.
    assert "tiny-redacted - tiny on the" in (tiny_redacted_run / "03_evaluate.html").read_text()


def test_user_mistakes_get_one_clear_line(tmp_path):
    p = params.validate({"device": "cpu"})
    with pytest.raises(UserError, match=r"best.pt: no checkpoint; train the run first"):
        evaluate.predict_run(tmp_path, p)
    with pytest.raises(UserError, match=r"metrics.json: no metrics; run notebook 03"):
        runfiles.read_metrics(tmp_path)
    (tmp_path / "predictions.csv").write_text("dicom_id,split\nx,test\n")
    with pytest.raises(UserError, match=r"predictions.csv: missing column\(s\)"):
        runfiles.read_predictions(tmp_path)


def test_one_warnings_wording_reaches_the_terminal_the_index_the_card_and_notebook_03(tiny_run, tmp_path, monkeypatch,
                                                                                     capsys):
    """The selection and contamination warnings are worded once (cxrlib.account): a new wording there is what
    make runs' summary, the index page, the model card and notebook 03 show."""
    import shutil

    from cxrlib.experiments.lister import cli, evaluation_summary
    from cxrlib.fsutil import atomic_write_json, jsonable
    from cxrlib.handoff.card import build_card
    from cxrlib.handoff.index_page import build_index

    run = tmp_path / "runs" / tiny_run.name
    run.mkdir(parents=True)
    for name in ("metrics.json", "params.yaml", "cohort_report.json", "fairness.json", "cohort.csv"):
        shutil.copy2(tiny_run / name, run / name)
    report = runfiles.read_metrics(run)
    atomic_write_json(run / runfiles.METRICS, jsonable({**report, "test_selected": True}))
    monkeypatch.setattr(account, "SELECTED_ON_TEST", "a wording changed in one place")
    assert "  WARNING: a wording changed in one place" in evaluation_summary(run)
    cli("runs", ["--runs-dir", str(run.parent)])   # make runs: in full under the table
    assert f"WARNING {run.name}: a wording changed in one place" in capsys.readouterr().out
    assert "a wording changed in one place" in build_index(run)
    assert "> **WARNING: a wording changed in one place**" in build_card(run)
    assert account.macro_sentence(report) in "\n".join(evaluation_summary(run))
    notebook = (Path(__file__).resolve().parent.parent / "notebooks" / "03_evaluate.py").read_text()
    assert "account.warnings(report)" in notebook and "account.headline_notes(report)" in notebook
    # notebook 03 prints the account's sentences and words none of its own: each is in its HTML as returned
    page = html.unescape((tiny_run / "03_evaluate.html").read_text())
    said = [*account.headline_notes(report), account.level_sentence(report), *account.threshold_notes(report),
            *account.gold_lines(report["gold"])]
    assert account.macro_sentence(report) in said and [line for line in said if line not in page] == []


def test_head_medium_and_tail_average_their_estimable_findings_by_the_training_share(tiny_run):
    from cxrlib.data.cohort import read_cohort

    report = runfiles.read_metrics(tiny_run)
    section = report["buckets"]
    assert section["label_set"] == "chexpert14" and section["rule"] == {"rule": "share", "head": 0.1, "tail": 0.01}
    train = read_cohort(tiny_run / runfiles.COHORT).query("split == 'train'")
    for finding, bucket in section["bucket"].items():
        share = float((train[finding] == 1).mean())
        assert section["train_prevalence"][finding] == pytest.approx(share)
        assert bucket == ("head" if share > 0.1 else "tail" if share < 0.01 else "medium")
    per_finding = report["splits"]["test"]["per_finding"]
    for name, group in section["groups"].items():
        assert set(group["macro_findings"]) <= set(group["findings"])
        assert group["findings"] == [f for f in FINDINGS if section["bucket"][f] == name]
        if group["macro_findings"]:   # the group's mean over its estimable findings, each as the test table has it
            for metric in ("auroc", "auprc"):
                expected = np.mean([per_finding[f][metric]["value"] for f in group["macro_findings"]])
                assert group[metric]["value"] == pytest.approx(expected)
    table = tables.bucket_table(report)
    assert list(table.index) == ["head", "medium", "tail"] and "mAP (AUPRC macro)" in table
