"""Notebook 03: predict a run's validation and test images once, then every figure with its CI.

    frame = predict_run(run_dir, p)              # -> <run_dir>/predictions.csv
    report = evaluate_run(run_dir, p, frame)      # -> <run_dir>/metrics.json

Honesty rules. The model is the run's best.pt, chosen by notebook 02 on the split named by
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
import torch
import torch.nn.functional as F
from torch import nn

from ..data.cache import cohort_with_rows, open_cache
from ..data.cohort import read_cohort
from ..errors import UserError
from ..fsutil import atomic_write_csv, atomic_write_json, jsonable
from ..labels import FINDINGS
from ..original import original_project_results
from ..params import validate
from ..runfiles import COHORT, ID_COLUMNS, METRICS, PREDICTIONS, PROB_COLUMNS, read_history, read_predictions
from ..stats import levels, metrics
from ..stats.calibration import reliability_curve
from ..stats.thresholds import choose_thresholds, threshold_metrics
from ..training.checkpoint import TEST_SELECTION_WARNING, load_trained, read_model_config
from ..training.inference import predict
from ..training.loader import BatchTransform, CacheDataset, make_loader
from ..training.runtime import amp_dtype, configure, resolve_device
from . import ensemble, recalibration
from .ensemble import is_ensemble, model_config
from .gold import gold_section, read_gold
from .provenance import fingerprint, versions
from .tables import (
    HEADLINE,
)

FIXED_THRESHOLD = 0.5   # chosen by no data: an honest reference point even without a validation split
TTA_SHIFT = 0.03        # fraction of the image side per shift; small enough to keep the anatomy in frame


# --------------------------------------------------------------------------- predictions
class ShiftTTA(nn.Module):
    """The model on the image and on four copies shifted up/down/left/right; logit of the mean probability.

    Deterministic (no random draws), and returning a logit keeps inference.predict's sigmoid exact.
    Edges are padded with their border pixels, so a shift adds no black band.
    """

    def __init__(self, model: nn.Module, shift: float = TTA_SHIFT):
        super().__init__()
        self.model = model
        self.offsets = [(0.0, 0.0), (shift, 0.0), (-shift, 0.0), (0.0, shift), (0.0, -shift)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for dx, dy in self.offsets:
            view = x
            if dx or dy:
                # affine_grid spans 2 units per image side, so a shift of s of the side is 2 * s.
                theta = torch.tensor([[1.0, 0.0, 2 * dx], [0.0, 1.0, 2 * dy]], dtype=x.dtype, device=x.device)
                grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
                view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            probs.append(torch.sigmoid(self.model(view).float()))
        return torch.logit(torch.stack(probs).mean(0), eps=1e-7)


def load_best(run_dir, p):
    """(model in eval mode, training params, device, evaluation transform) from <run_dir>/checkpoints/best.pt.

    The checkpoint decides what shaped the model (architecture, image size, resize, mean/std); `p`, the
    run's current parameters, decides where (device) and where the data now lives (data_root, cache_dir:
    a copied run folder may point elsewhere).
    """

    device = resolve_device(p)
    configure(p, device)
    model, trained, config = load_trained(run_dir, "best", device)
    trained = validate({**trained.to_dict(), "data_root": p.data_root, "cache_dir": p.cache_dir},
                                  "checkpoint parameters")
    mean, std = config["mean"], config["std"]
    if mean is None or std is None:   # a checkpoint older than model_config, trained on the cache's statistics
        stats = open_cache(trained.resolved_cache_dir(), trained.image_size, trained.resize,
                                      trained.decode).stats
        mean, std = stats["mean"] if mean is None else mean, stats["std"] if std is None else std
    transform = BatchTransform(mean, std).to(device).eval()
    return model, trained, device, transform


def eval_cohort(run_dir, trained):
    """The run's cohort rows that are in the image cache (with `cache_row`), and the cache."""

    cohort = read_cohort(Path(run_dir) / COHORT)
    cache = open_cache(trained.resolved_cache_dir(), trained.image_size, trained.resize, trained.decode)
    return cohort_with_rows(cohort, cache), cache


def predict_run(run_dir, p, splits=("validate", "test"), tta: bool = False, write: bool = True) -> pd.DataFrame:
    """Probabilities of the best checkpoint on `splits`; written atomically to <run_dir>/predictions.csv.

    Columns: dicom_id, subject_id, study_id, split, p_<finding> x 14, <finding> x 14 (the targets after
    the label policies; empty = masked). A requested split the cohort lacks is left out, except test.
    """

    run_dir = Path(run_dir)
    if ensemble.is_ensemble(run_dir):   # no checkpoint: the members' mean probability
        return ensemble.write_predictions(run_dir, splits) if write else ensemble.average_predictions(
            ensemble.member_dirs(run_dir))
    model, trained, device, transform = load_best(run_dir, p)
    cohort, cache = eval_cohort(run_dir, trained)
    chosen = cohort[cohort["split"].isin(list(splits))].reset_index(drop=True)
    if "test" in splits and not (chosen["split"] == "test").any():
        raise UserError(f"{run_dir}/cohort.csv has no test image in the cache {cache.dir}; "
                        "rebuild the cohort and cache with notebook 01")
    dataset = CacheDataset.from_cohort(cache, chosen)
    loader = make_loader(dataset, p.eval_batch_size, shuffle=False, num_workers=p.num_workers, seed=p.seed)
    net = ShiftTTA(model) if tta else model
    channels_last = device.type == "cuda" and p.channels_last
    probs, index = predict(net, loader, transform, device, amp_dtype(trained, device), channels_last)
    if not np.array_equal(index, np.arange(len(chosen))):
        raise RuntimeError("predict returned rows out of order")  # a bug, not a user mistake
    frame = chosen[ID_COLUMNS].copy()
    frame[PROB_COLUMNS] = probs.astype(np.float32)
    frame[FINDINGS] = chosen[FINDINGS].to_numpy(dtype=np.float32)
    if write:
        # %.9g round-trips float32 exactly, so tied scores stay tied when read back.
        atomic_write_csv(run_dir / PREDICTIONS, frame, float_format="%.9g")
    return frame


def scored_units(predictions: pd.DataFrame, p) -> pd.DataFrame:
    """The rows every figure counts: the predictions themselves, or one row per study (eval_level)."""

    return levels.rows_at(predictions, p.eval_level, p.study_aggregate)


def arrays(frame: pd.DataFrame, split: str | None = None):
    """(labels (N, 14) with NaN = masked, probabilities (N, 14), subject ids) of one split."""
    rows = frame if split is None else frame[frame["split"] == split]
    return (rows[FINDINGS].to_numpy(dtype=np.float64), rows[PROB_COLUMNS].to_numpy(dtype=np.float64),
            rows["subject_id"].to_numpy(dtype=str))


# --------------------------------------------------------------------------- metrics.json
def selection(run_dir, p) -> dict:
    """How best.pt was chosen, from the run's parameters and history.csv (never from the test figures here)."""

    if ensemble.is_ensemble(run_dir):
        return ensemble.selection(run_dir)
    history = read_history(run_dir)
    kept = history[history["selected"].astype(bool)] if len(history) else history
    best = kept.iloc[-1] if len(kept) else None
    score = {"auroc": "val_auroc_macro", "accuracy": "val_accuracy"}[p.select_metric]
    # history.csv from before select_level scored epochs per image
    level = str(history["select_level"].iloc[-1]) if "select_level" in history and len(history) else "image"
    out = {"select_on": p.select_on, "select_metric": p.select_metric, "level": level,
           "best_epoch": int(best["epoch"]) if best is not None else None,
           "best_score": float(best[score]) if best is not None else None,
           "epochs_run": int(len(history)), "test_selected": p.select_on == "test", "warning": None, "note": None}
    if out["test_selected"]:
        out["warning"] = TEST_SELECTION_WARNING
    if level != p.eval_level:
        out["note"] = (f"epochs were chosen on {level}-level figures (eval_level at training time); the figures "
                       f"here are {p.eval_level}-level (eval_level was changed after training)")
    return out


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
        raise UserError(f"{run_dir}/predictions.csv holds no test rows; rerun predict_run with the test split")
    started = time.perf_counter()
    units = levels.rows_at(predictions, p.eval_level, p.study_aggregate)
    summaries = {}
    for split in splits:
        y, prob, groups = arrays(units, split)
        summaries[split] = metrics.summarize(y, prob, groups, n_boot=p.bootstrap, seed=p.seed,
                                             ci_level=p.ci_level, progress=progress, min_positives=p.min_positives)
    y_test, p_test, test_groups = arrays(units, "test")
    rules = validation_rules(units)
    notes = []
    if "validate" in splits:
        y_val, p_val, _ = arrays(units, "validate")
    else:
        notes.append("no validation split: only the fixed 0.5 threshold is reported (choosing a threshold "
                     "on the test set would make the test figures at it optimistic)")
    at_thresholds = threshold_metrics(y_test, p_test, rules)
    test = summaries["test"]
    for key, (avg, m) in HEADLINE.items():
        valid = test[avg][m]["n_boot_valid"]
        if test[avg][m]["conditional"]:
            notes.append(f"{key}: CI from {valid} of {p.bootstrap} resamples (the others lost every positive or "
                         "every negative of a finding); it is conditional on those and may not contain the estimate")
    level = level_section(predictions, units, p, progress)
    sel = selection(run_dir, p)

    model = model_config(run_dir) if is_ensemble(run_dir) else read_model_config(run_dir)   # from best.pt
    warnings_list = [sel["warning"]] if sel["warning"] else []
    notes += [sel["note"]] if sel.get("note") else []
    reliability = reliability_curve(y_test, p_test, test["calibration"]["n_bins"])
    recal = None
    if p.calibration != "none" and "validate" in splits:

        fitted = recalibration.fit(p.calibration, y_val, p_val)
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
        "ci": {"level": p.ci_level, "n_boot": p.bootstrap, "seed": p.seed, "method": test["ci_method"]},
        "splits": summaries,
        "thresholds": {"chosen_on": "validate" if "validate" in splits else None, "level": p.eval_level,
                       "values": rules,
                       "test": at_thresholds.to_dict("records")},
        "calibration": {"test_reliability_pooled": reliability.to_dict("list")},
        "recalibration": None if recal is None else {**recal, "level": p.eval_level},
        "image_level": image_level_section(predictions, p, rules, recal),
        "selection": sel,
        "gold": gold_section(predictions, read_gold(p.data_root), p,
                                      rules if p.eval_level == "study" else
                                      validation_rules(levels.rows_at(predictions, "study", p.study_aggregate))),
        "test_selected": sel["test_selected"],
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
    rules = {f: {"fixed_0.5": FIXED_THRESHOLD} for f in FINDINGS}
    if (units["split"] == "validate").any():
        y_val, p_val, _ = arrays(units, "validate")
        for f, chosen in choose_thresholds(y_val, p_val).items():
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
        calibrator = recalibration.fit(p.calibration, y_val, p_val)
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
                                 progress=progress, min_positives=p.min_positives)
        out["other"] = {"level": other, "aggregate": p.study_aggregate if other == "study" else None,
                        "units_per_split": levels.units_per_split(rows), "test": test,
                        "headline": headline(test)}
    return out
