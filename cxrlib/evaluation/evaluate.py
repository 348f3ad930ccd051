"""Notebook 03: predict a run's validation and test images once, then every figure with its CI.

    frame = predict_run(run_dir, p)              # -> <run_dir>/predictions.csv
    report = evaluate_run(run_dir, p, frame)      # -> <run_dir>/metrics.json

Honesty rules. The model is the run's best.pt (an ensemble: each member's), chosen by notebook 02 on the split named by
select_on; when that split is the test set, metrics.json says so (`test_selected`, `warnings`)
and the notebook shows it in a red box. Decision thresholds are chosen on the validation split
only (max F1 and Youden's J) and applied to the test split; a fixed 0.5 is reported beside them
because it is chosen by no data at all. Confidence intervals are percentile intervals of a
patient-level bootstrap (all images of a subject are drawn together).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labelset
from ..data.cohort import read_cohort
from ..errors import UserError
from ..fsutil import atomic_write_csv, atomic_write_json, jsonable
from ..original import original_project_results
from ..runfiles import COHORT, METRICS, PREDICTIONS, labels_of, prob_columns, read_predictions
from ..stats import levels, metrics
from ..stats.calibration import reliability_curve
from ..stats.thresholds import choose_thresholds, threshold_metrics
from ..training.contamination import warning_text
from . import recalibration
from .gold import gold_section, read_gold
from .kinds import open_run
from .longtail import buckets_section, set_gold_section
from .provenance import fingerprint, versions
from .tables import HEADLINE

FIXED_THRESHOLD = 0.5   # chosen by no data: an honest reference point even without a validation split


# --------------------------------------------------------------------------- predictions
def predict_run(run_dir, p, splits=("validate", "test"), tta: bool = False, write: bool = True) -> pd.DataFrame:
    """Probabilities on `splits` (a trained run's best checkpoint, or an ensemble's members' mean: kinds.open_run);
    written atomically to <run_dir>/predictions.csv.

    Columns: dicom_id, subject_id, study_id, split, p_<finding> x 14, <finding> x 14 (the targets after
    the label policies; empty = masked). A requested split the cohort lacks is left out, except test.
    """

    frame = open_run(run_dir).predictions(p, splits, tta)
    if write:
        # %.9g round-trips float32 exactly, so tied scores stay tied when read back.
        atomic_write_csv(Path(run_dir) / PREDICTIONS, frame, float_format="%.9g")
    return frame


def scored_units(predictions: pd.DataFrame, p) -> pd.DataFrame:
    """The rows every figure counts: the predictions themselves, or one row per study (eval_level)."""

    return levels.rows_at(predictions, p.eval_level, p.study_aggregate)


def arrays(frame: pd.DataFrame, split: str | None = None):
    """(labels (N, K) with NaN = masked, probabilities (N, K), subject ids) of one split; K: the run's labels."""
    rows = frame if split is None else frame[frame["split"] == split]
    names = labels_of(frame)
    return (rows[names].to_numpy(dtype=np.float64), rows[prob_columns(names)].to_numpy(dtype=np.float64),
            rows["subject_id"].to_numpy(dtype=str))


# --------------------------------------------------------------------------- metrics.json
def evaluate_run(run_dir, p, predictions: pd.DataFrame | None = None, progress: bool = False,
                 write: bool = True) -> dict:
    """Every figure of the run with its CI; written atomically to <run_dir>/metrics.json.

    Per split: metrics.summarize (AUROC, AUPRC per finding, macro, micro; ECE and Brier) on patient
    resamples. Thresholds come from validation alone. `headline` is the test split's macro and micro
    AUROC and AUPRC as {value, lo, hi}. Every figure counts the units of eval_level (images, or studies
    with their images aggregated by study_aggregate); `level.other` holds the test figures at the other
    level when some study has several images. `gold` scores the test studies the radiologists labelled
    (gold.py), never used for a threshold or a choice.
    """

    run_dir = Path(run_dir)
    if predictions is None:
        predictions = read_predictions(run_dir)
    splits = [s for s in ("validate", "test") if (predictions["split"] == s).any()]
    if "test" not in splits:
        raise UserError(f"{Path(run_dir) / PREDICTIONS} holds no test rows; rerun predict_run with the test split")
    started = time.perf_counter()
    units = levels.rows_at(predictions, p.eval_level, p.study_aggregate)
    names = labels_of(predictions)
    summaries = {}
    for split in splits:
        y, prob, groups = arrays(units, split)
        summaries[split] = metrics.summarize(y, prob, groups, n_boot=p.bootstrap, seed=p.seed,
                                             ci_level=p.ci_level, progress=progress, min_positives=p.min_positives,
                                             findings=names)
    y_test, p_test, test_groups = arrays(units, "test")
    rules = validation_rules(units)
    notes = []
    if "validate" in splits:
        y_val, p_val, _ = arrays(units, "validate")
    else:
        notes.append("no validation split: only the fixed 0.5 threshold is reported (choosing a threshold "
                     "on the test set would make the test figures at it optimistic)")
    at_thresholds = threshold_metrics(y_test, p_test, rules, names)
    test = summaries["test"]
    for key, (avg, m) in HEADLINE.items():
        valid = test[avg][m]["n_boot_valid"]
        if test[avg][m]["conditional"]:
            notes.append(f"{key}: CI from {valid} of {p.bootstrap} resamples (the others lost every positive or "
                         "every negative of a finding); it is conditional on those and may not contain the estimate")
    level = level_section(predictions, units, p, progress)
    run = open_run(run_dir)
    sel = run.selection(p)
    model = run.model_config()
    contamination_warning = warning_text(model.get("starting_weights"))
    warnings_list = [contamination_warning] if contamination_warning else []   # selection: test_selected, worded by account
    notes += [sel["note"]] if sel.get("note") else []
    reliability = reliability_curve(y_test, p_test, test["calibration"]["n_bins"])
    recal = None
    if p.calibration != "none" and "validate" in splits:

        fitted = recalibration.fit(p.calibration, y_val, p_val, names)
        recal = recalibration.section(fitted, y_test, p_test, test_groups, p, test["calibration"]["n_bins"])
        notes += [f"recalibration: {n}" for n in fitted["notes"]]
    elif p.calibration != "none":
        notes.append(f"calibration: {p.calibration} needs a validation split to be fitted on; not recalibrated")
    report = {
        "run": run_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "headline": headline(test),
        "headline_split": "test",
        "macro": {"findings": test["macro_findings"], "not_estimable": test["not_estimable"],
                  "one_class": test["excluded"], "min_positives": p.min_positives},
        "level": level,
        # head / medium / tail by the label set's rule (a share rule reads the training images' prevalence)
        "buckets": buckets_section(y_test, p_test, test_groups, read_cohort(run_dir / COHORT), p,
                                   labelset.load(p.label_set), names),
        "ci": {"level": p.ci_level, "n_boot": p.bootstrap, "seed": p.seed, "method": test["ci_method"]},
        "splits": summaries,
        "thresholds": {"chosen_on": "validate" if "validate" in splits else None, "level": p.eval_level,
                       "values": rules,
                       "test": at_thresholds.to_dict("records")},
        "calibration": {"test_reliability_pooled": reliability.to_dict("list")},
        "recalibration": None if recal is None else {**recal, "level": p.eval_level},
        "image_level": image_level_section(predictions, p, rules, recal),
        "selection": sel,
        "set_gold": set_gold_section(predictions, p, labelset.load(p.label_set)),   # CXR-LT 2024's task 2
        "gold": gold_section(predictions, read_gold(p.data_root), p,
                                      rules if p.eval_level == "study" else
                                      validation_rules(levels.rows_at(predictions, "study", p.study_aggregate))),
        "test_selected": sel["test_selected"],
        "contaminated": contamination_warning is not None,   # the starting weights may have seen the test patients
        "warnings": warnings_list,
        "notes": notes + test["notes"],
        "data": fingerprint(run_dir, p, predictions, model),
        "model": model,
        "params": p.to_dict(),
        "versions": versions(),
        "original_project": original_project_results(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    report = jsonable(report)
    if write:
        atomic_write_json(run_dir / METRICS, report)
    return report


def validation_rules(units: pd.DataFrame) -> dict:
    """{finding: {fixed_0.5, f1, youden}}: max-F1 and Youden's J chosen on the validation rows of `units`
    (images or studies) and nothing else; only the fixed 0.5 without a validation split."""
    names = labels_of(units)
    rules = {f: {"fixed_0.5": FIXED_THRESHOLD} for f in names}
    if (units["split"] == "validate").any():
        y_val, p_val, _ = arrays(units, "validate")
        for f, chosen in choose_thresholds(y_val, p_val, names).items():
            rules[f].update(chosen)
    return rules


def image_level_section(predictions: pd.DataFrame, p, rules: dict, recal: dict | None) -> dict:
    """What single images need (predict, the export, notebook 04's per-image errors): thresholds and the
    recalibration map fitted on the validation IMAGES. At eval_level: image they are the headline's own;
    at study level they are fitted again, since a threshold tuned on study means is not one for an image."""

    fitted_on = "validate" if (predictions["split"] == "validate").any() else None
    if p.eval_level == "image":
        calibrator = {k: recal[k] for k in ("method", "fitted_on", "per_finding", "notes")} if recal else None
        return {"level": "image", "same_as_headline": True, "thresholds": {"chosen_on": fitted_on, "values": rules},
                "recalibration": calibrator or {"method": "none"}}
    calibrator = {"method": "none"}
    if p.calibration != "none" and fitted_on:
        y_val, p_val, _ = arrays(predictions, "validate")
        calibrator = recalibration.fit(p.calibration, y_val, p_val, labels_of(predictions))
    return {"level": "image", "same_as_headline": False,
            "thresholds": {"chosen_on": fitted_on, "values": validation_rules(predictions)},
            "recalibration": calibrator}


def headline(summary: dict) -> dict:
    """The test split's macro and micro AUROC and AUPRC: {value, lo, hi, n_boot_valid, conditional}."""
    return {key: {k: summary[avg][m][k] for k in ("value", "lo", "hi", "n_boot_valid", "conditional")}
            for key, (avg, m) in HEADLINE.items()}


def level_section(predictions: pd.DataFrame, units: pd.DataFrame, p, progress: bool = False) -> dict:
    """Which unit the figures count (image or study), and the test figures at the other level when they differ."""

    several = levels.several_images_per_study(predictions)
    out = {"headline": p.eval_level, "aggregate": p.study_aggregate if p.eval_level == "study" else None,
           "units_per_split": levels.units_per_split(units), "several_images_per_study": several, "other": None}
    if several:
        other = "image" if p.eval_level == "study" else "study"
        rows = levels.rows_at(predictions, other, p.study_aggregate)
        y, prob, groups = arrays(rows, "test")
        test = metrics.summarize(y, prob, groups, n_boot=p.bootstrap, seed=p.seed, ci_level=p.ci_level,
                                 progress=progress, min_positives=p.min_positives, findings=labels_of(rows))
        out["other"] = {"level": other, "aggregate": p.study_aggregate if other == "study" else None,
                        "units_per_split": levels.units_per_split(rows), "test": test,
                        "headline": headline(test)}
    return out
