"""External validation: a run's best checkpoint on another hospital's images, beside its own test split.

    frame, info = score_source(run_dir, p, "nih", data_root)          # predictions, one row per image
    report = external_report(run_dir, p, frame, info, n_boot=1000)    # every figure, JSON-able

The images go through the checkpoint's preprocessing (size, resize, decode, normalisation) into their own
cache (<cache_dir>/external-<source>[-equalized]/, never mixed with MIMIC's). Figures count the run's
eval_level units (studies where the source has them; NIH and VinDr-CXR images are their own studies) and
resample patients (VinDr-CXR has none: images).

The procedure, declared before any figure is seen:
- Primary (the one decision per source): the drop of the macro AUROC from the run's own test split to the
  external set, over the findings the source maps *exactly* and both sides can estimate (min_positives
  positives and negatives). Internal and external are independent samples: the drop's interval is the
  percentile interval of the difference of independent patient bootstraps. A drop is reported when the
  interval lies above 0; one below 0 says the external AUROC is higher (`direction`: drop, higher, none),
  which is no failure of the model but still a difference to explain (cleaner labels, an easier case mix).
  Approximately mapped findings mix site and definition, so they are shown, not decided on.
- Exploratory: per-finding drops with Holm-adjusted p-values; thresholds chosen on the run's validation
  split, carried over (what a deployed model would do); calibration (ECE, calibration-in-the-large)
  with and without the run's recalibration; the sex and age-band audit of evaluation.fairness.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import labelset
from ..data.cache import build_cache, cohort_with_rows
from ..data.demographics import age_band
from ..data.external_selection import BIT_DEPTH, FORMATS, MIN_PRESENT, check_present, selected_images
from ..errors import UserError
from ..fsutil import atomic_write_csv, atomic_write_json, jsonable
from ..runfiles import (
    EXTERNAL_METRICS,
    EXTERNAL_PREDICTIONS,
    ID_COLUMNS,
    checkpoint_stamp,
    external_dir,
    labels_of,
    prob_columns,
    read_metrics,
    read_predictions,
)
from ..stats import levels, metrics, paired_bootstrap
from ..stats.calibration import ece
from ..stats.multiplicity import holm
from ..stats.thresholds import threshold_metrics
from ..synthetic.external_standins import PLANTED_FILE as STAND_IN_PLANTED
from ..training.checkpoint import read_model_config
from ..training.contamination import external_warning
from ..training.inference import predict
from ..training.loader import CacheDataset, make_loader
from ..training.runtime import inference_amp
from . import fairness, recalibration
from .analysis import fitted_for
from .provenance import versions
from .trained import eval_cohort, load_best

HISTOGRAM_IMAGES = 500      # images per side whose pixels make the intensity histograms


def external_cache_dir(p, source: str, equalize: bool) -> Path:
    return Path(p.resolved_cache_dir()) / (f"external-{source}" + ("-equalized" if equalize else ""))


def image_modes(data_root: Path, paths) -> dict:
    """How many files of each PIL mode (L, RGB, RGBA, I;16, ...) or DICOM: read from the headers only."""
    counts: dict[str, int] = {}
    for rel in paths:
        try:
            with Image.open(data_root / rel) as img:
                mode = img.mode
        except Exception:   # DICOM, or a file the cache's report already names
            mode = "DICOM" if str(rel).endswith((".dcm", ".dicom")) else "unreadable"
        counts[mode] = counts.get(mode, 0) + 1
    return counts


def histogram(images, rows: np.ndarray, limit: int = HISTOGRAM_IMAGES) -> list[float]:
    """The share of pixels at each of the 256 grey levels over up to `limit` cached images."""
    chosen = np.sort(np.random.default_rng(0).permutation(rows)[:limit]) if len(rows) else rows
    counts = np.zeros(256, np.int64)
    for row in chosen:
        counts += np.bincount(np.asarray(images[row]).ravel(), minlength=256)
    return (counts / max(counts.sum(), 1)).round(6).tolist()


def score_source(run_dir, p, source: str, data_root, subset: str | None = None, views: str = "frontal",
                 equalize: bool = False, progress: bool = True, allow_missing: bool = False) -> tuple[pd.DataFrame, dict]:
    """(predictions: dicom_id (the source's image_id), subject_id, study_id, split, view, sex, age, p_<finding>,
    <finding>; info: the source table's map, notes, counts, cache, intensity histograms). Only the selected images
    on disk are scored; check_present decides whether there are enough."""
    for name, value in (("equalize", equalize), ("allow_missing", allow_missing)):
        if not isinstance(value, bool):   # notebook 07 by hand: the string "no" would be true
            raise UserError(f"{name} = {value!r}: write True or False")
    data_root = Path(data_root)
    found, selected, present = selected_images(source, data_root, subset, views, p.label_set)
    check_present(source, data_root, selected, present, allow_missing)
    table = selected[present]
    model, trained, device, transform = load_best(run_dir, p)
    if list(found.label_map.entries) != model.labels:   # the map is the run's label set's: its labels, in order
        raise UserError(f"{found.label_map.name}'s map names other labels than the {len(model.labels)} best.pt "
                        f"predicts; is label_set ({p.label_set}) the one the run trained with?")
    cohort = pd.DataFrame({"dicom_id": table["image_id"], "subject_id": table["patient_id"],
                           "study_id": table["study_id"], "split": "external", "path": table["path"],
                           "bits": table["bits"], "view": table["view"], "sex": table["sex"], "age": table["age"]})
    cohort[model.labels] = table[model.labels].to_numpy(np.float64)
    reader = {"formats": list(FORMATS[source]), "equalize": bool(equalize)}
    cache = build_cache(data_root, cohort, trained.image_size, trained.resize,
                        cache_dir=external_cache_dir(p, source, equalize), workers=p.cache_workers,
                        progress=progress, decode=trained.decode, reader=reader)
    failed = cache.failures
    rows = cohort_with_rows(cohort, cache)
    loader = make_loader(CacheDataset.from_cohort(cache, rows, model.labels), p.eval_batch_size, shuffle=False,
                         num_workers=p.num_workers, seed=p.seed)
    channels_last = device.type == "cuda" and p.channels_last
    started = time.perf_counter()
    probs, index = predict(model, loader, transform, device, inference_amp(trained, device), channels_last)
    scoring = {"images": int(len(rows)), "seconds": round(time.perf_counter() - started, 2), "device": str(device)}
    frame = rows[[*ID_COLUMNS, "view", "sex", "age"]].copy()
    frame[prob_columns(model.labels)] = probs[np.argsort(index)].astype(np.float32)
    frame[model.labels] = rows[model.labels].to_numpy(np.float32)
    internal_cohort, internal_cache = eval_cohort(run_dir, trained)
    internal_rows = internal_cohort.loc[internal_cohort["split"] == "test", "cache_row"].to_numpy()
    info = {
        "source": source, "data_root": str(data_root), "views": views, "equalize": bool(equalize),
        "allow_missing": bool(allow_missing), **table_info(found, len(selected), len(table), frame, len(failed)),
        "failures": failed.head(20).to_dict("records"),
        "inference": {**scoring, "images_per_second": round(scoring["images"] / max(scoring["seconds"], 0.01), 1)},
        "file_modes": image_modes(data_root, rows["path"]),
        "preprocessing": {"image_size": trained.image_size, "resize": trained.resize, "decode": trained.decode,
                          "bit_depth": BIT_DEPTH[source], "cache": str(cache.dir)},
        "intensity": {"internal": histogram(internal_cache.images, internal_rows),
                      "external": histogram(cache.images, rows["cache_row"].to_numpy())},
    }
    return frame, info


def table_info(found, chosen: int, present: int, frame: pd.DataFrame, failed: int) -> dict:
    """What score_source's info says of the source's table and what was scored of it: the subset, the label map
    (its record and table), the reader's notes, the unit, and the counts from the table to the scored images."""
    return {"subset": found.subset, "label_map": found.label_map.record(found.vocabulary),
            "map_table": found.label_map.table(found.vocabulary).to_dict("records"),
            "notes": found.notes, "unit_note": found.unit_note,
            "counts": {"table_images": int(len(found.table)), "chosen_images": int(chosen),
                       "present_images": int(present), "missing_images": int(chosen - present),
                       "scored_images": int(len(frame)), "failed_images": int(failed),
                       "patients": int(frame["subject_id"].nunique()), "studies": int(frame["study_id"].nunique())}}


# --------------------------------------------------------------------------- figures

def units_of(frame: pd.DataFrame, p) -> pd.DataFrame:
    return levels.rows_at(frame, p.eval_level, p.study_aggregate)


def matrices(units: pd.DataFrame, findings: list[str]):
    return (units[findings].to_numpy(np.float64), units[[f"p_{f}" for f in findings]].to_numpy(np.float64),
            units["subject_id"].to_numpy(str))


def estimable(y: np.ndarray, patients: np.ndarray, minimum: int) -> np.ndarray:
    """Per finding: at least `minimum` patients with a positive and as many with a negative (metrics' rule)."""
    return metrics.patients_per_class(y, patients).min(0) >= max(minimum, 1)


def auroc_drop(internal: pd.DataFrame, external: pd.DataFrame, findings: list[str], n_boot: int, seed: int,
               ci_level: float, min_positives: int) -> dict:
    """Internal minus external AUROC (macro over `findings`, and each), with independent patient bootstraps:
    percentile intervals of the difference, two-sided bootstrap p-values, Holm over the findings."""
    sides = [matrices(internal, findings), matrices(external, findings)]
    point = [metrics.ranking_metrics(y, prob, findings, min_positives, g) for y, prob, g in sides]
    boot = [paired_bootstrap.bootstrap_plans([metrics.resample_plan(y, prob, findings, min_positives=min_positives, groups=g)],
                                    y, g, n_boot, seed + k, progress=False)[0] for k, (y, prob, g) in enumerate(sides)]
    macro_diff = boot[0]["auroc_macro"] - boot[1]["auroc_macro"]
    lo, hi, _ = metrics.percentile_interval(macro_diff, ci_level)
    value = point[0]["macro"]["auroc"] - point[1]["macro"]["auroc"]
    p_macro = paired_bootstrap.bootstrap_p(macro_diff[np.isfinite(macro_diff)])[0] if np.isfinite(macro_diff).any() else None
    rows = []
    for j, finding in enumerate(findings):
        diff = boot[0]["auroc"][:, j] - boot[1]["auroc"][:, j]
        d_lo, d_hi, _ = metrics.percentile_interval(diff, ci_level)
        a, b = point[0]["per_finding"][finding]["auroc"], point[1]["per_finding"][finding]["auroc"]
        p_value = paired_bootstrap.bootstrap_p(diff[np.isfinite(diff)])[0] if np.isfinite(diff).any() else np.nan
        rows.append({"finding": finding, "internal": a, "external": b, "drop": a - b, "lo": d_lo, "hi": d_hi,
                     "p_value": p_value})
    table = pd.DataFrame(rows)
    if len(table):
        tested = table["p_value"].notna().to_numpy()
        table["p_holm"] = np.nan
        table.loc[tested, "p_holm"] = holm(table.loc[tested, "p_value"].to_numpy())
    return {"findings": findings, "internal": point[0]["macro"]["auroc"], "external": point[1]["macro"]["auroc"],
            "value": value, "lo": lo, "hi": hi, "p_value": p_macro, "ci_level": ci_level, "n_boot": n_boot,
            "reported": bool(np.isfinite(lo) and lo > 0),
            "direction": "drop" if np.isfinite(lo) and lo > 0 else "higher" if np.isfinite(hi) and hi < 0 else "none",
            "method": "independent patient bootstraps of the run's test split and the external set; percentile",
            "per_finding": table.to_dict("records")}


def calibration_rows(y, prob, calibrated, findings) -> list[dict]:
    """ECE and calibration-in-the-large (mean predicted minus observed) per finding, before and after."""
    rows = []
    for j, finding in enumerate(findings):
        known = ~np.isnan(y[:, j])
        if not known.any():
            continue
        t, before, after = y[known, j], prob[known, j], calibrated[known, j]
        rows.append({"finding": finding, "n": int(known.sum()), "prevalence": float(t.mean()),
                     "mean_p": float(before.mean()), "citl": float(before.mean() - t.mean()),
                     "ece": ece(t, before), "mean_p_recalibrated": float(after.mean()),
                     "citl_recalibrated": float(after.mean() - t.mean()), "ece_recalibrated": ece(t, after)})
    return rows


def external_report(run_dir, p, frame: pd.DataFrame, info: dict, n_boot: int | None = None) -> dict:
    """Every figure of one external validation; JSON-able (NaN -> None)."""
    n_boot = n_boot or p.bootstrap
    status = info["label_map"]["status"]
    names = labels_of(frame)   # the run's labels, in output order (its map's)
    nothing_found = labelset.load(p.label_set).nothing_found
    mapped = [f for f in names if status[f] != "missing"]
    exact = [f for f in mapped if status[f] == "exact"]
    units = units_of(frame, p)
    internal = units_of(read_predictions(run_dir), p)
    internal = internal[internal["split"] == "test"].reset_index(drop=True)   # the units notebook 03 scored
    y_ext, p_ext, g_ext = matrices(units, mapped)
    summary = metrics.summarize(y_ext, p_ext, g_ext, n_boot=n_boot, seed=p.seed, ci_level=p.ci_level,
                                findings=mapped, min_positives=p.min_positives) if mapped else None
    y_int, _, g_int = matrices(internal, exact)
    y_exact, _, g_exact = matrices(units, exact)
    compared = [f for f, a, b in zip(exact, estimable(y_int, g_int, p.min_positives),
                                     estimable(y_exact, g_exact, p.min_positives)) if a and b]
    drop = auroc_drop(internal, units, compared, n_boot, p.seed, p.ci_level, p.min_positives) if compared else None
    approximate = [f for f in (summary or {}).get("macro_findings", []) if status[f] == "approximate"]
    run_metrics = read_metrics(run_dir)
    scored_unit = "image" if p.eval_level == "image" or frame["study_id"].is_unique else "study"
    fitted, calibrator, _ = fitted_for(run_metrics, scored_unit)
    # metrics.json writes a threshold that could not be chosen (one class on validation) as null
    rules = {f: {rule: np.nan if v is None else float(v) for rule, v in by_rule.items()}
             for f, by_rule in fitted["values"].items()}
    at_thresholds = threshold_metrics(y_ext, p_ext, {f: rules[f] for f in mapped}, mapped) if mapped else None
    if scored_unit == p.eval_level:
        internal_at = [r for r in run_metrics["thresholds"]["test"] if r["finding"] in mapped]
    else:   # the run's own test images at the same image-level thresholds
        images = read_predictions(run_dir)
        images = images[images["split"] == "test"]
        y_img, p_img, _ = matrices(images, mapped)
        internal_at = threshold_metrics(y_img, p_img, {f: rules[f] for f in mapped}, mapped).to_dict("records")
    calibrated = recalibration.apply(calibrator, units[prob_columns(names)].to_numpy(np.float64), names)
    calibrated = calibrated[:, [names.index(f) for f in mapped]]
    inexact = [f for f in names if status[f] != "exact"]   # the audit, like the decision, on exact findings only
    audit = subgroup_audit(units.assign(**{f: np.nan for f in inexact}), frame, {f: rules[f]["f1"] for f in names},
                           n_boot, p, nothing_found)
    model = read_model_config(run_dir)
    return jsonable({
        "source": info["source"], "subset": info["subset"], "run": Path(run_dir).name,
        "synthetic": (Path(info["data_root"]) / STAND_IN_PLANTED).is_file(),   # cxrlib's stand-in, not the source
        "level": p.eval_level, "unit_note": info["unit_note"], "label_map": info["label_map"],
        "map_table": info["map_table"], "mapped": mapped, "exact": exact, "compared": compared,
        "counts": {**info["counts"], "units": int(len(units))}, "notes": info["notes"],
        "summary": summary, "drop": drop,
        # one headline (the exact findings the drop compares, with its CI); the approximate ones apart, labelled
        "macro": {"exact": macro_over(units, compared, n_boot, p),
                  "approximate": macro_over(units, approximate, n_boot, p),
                  "run_headline": {"value": (run_metrics.get("headline") or {}).get("AUROC macro", {}).get("value"),
                                   "findings": len((run_metrics.get("macro") or {}).get("findings") or [])}},
        "audit_findings": "exactly mapped findings only" + ("" if status[nothing_found] == "exact" else
                                                            f"; {nothing_found} is not exact, so no underdiagnosis rate"),
        "thresholds": {"chosen_on": fitted["chosen_on"], "rule": "f1", "unit": scored_unit,
                       "external": [] if at_thresholds is None else at_thresholds.to_dict("records"),
                       "internal": internal_at},
        "calibration": {"recalibration": (calibrator or {}).get("method", "none"), "unit": scored_unit,
                        "per_finding": calibration_rows(y_ext, p_ext, calibrated, mapped)},
        "audit": audit,
        "intensity": info["intensity"], "file_modes": info["file_modes"], "preprocessing": info["preprocessing"],
        "equalize": info["equalize"], "views": info["views"], "failures": info["failures"],
        "allow_missing": info["allow_missing"], "min_present": MIN_PRESENT, "inference": info.get("inference"),
        "model": model, "warnings": [w for w in [external_warning(model.get("starting_weights"), info["source"])] if w],
        "checkpoint": checkpoint_stamp(run_dir), "versions": versions(),
        "ci": {"level": p.ci_level, "n_boot": n_boot, "seed": p.seed,
               "method": "percentile; patient-level (cluster) bootstrap" + (
                   "; VinDr-CXR has no patient identifier, so images are resampled" if info["source"] == "vindr"
                   else "")},
    })


def macro_over(units: pd.DataFrame, findings: list[str], n_boot: int, p) -> dict | None:
    """The external macro AUROC over exactly these findings, with its patient-bootstrap CI."""
    if not findings:
        return None
    y, prob, g = matrices(units, findings)
    summary = metrics.summarize(y, prob, g, n_boot=n_boot, seed=p.seed, ci_level=p.ci_level, findings=findings,
                                min_positives=p.min_positives)
    return {"findings": findings, "auroc": summary["macro"]["auroc"]}



def subgroup_audit(units: pd.DataFrame, frame: pd.DataFrame, thresholds: dict, n_boot: int, p,
                   nothing_found: str = fairness.NOTHING_FOUND) -> list[dict]:
    """evaluation.fairness's audit by sex and age band (cxrlib's bands) where the source gives them."""
    first = frame.groupby("study_id", sort=False)[["sex", "age"]].first()
    sex = units["study_id"].map(first["sex"]).fillna("").replace("", fairness.UNKNOWN)
    ages = units["study_id"].map(first["age"])
    bands = pd.Series(age_band(ages), index=units.index).fillna(fairness.UNKNOWN)
    groups = pd.DataFrame({"sex": sex, "age_band": bands})
    attributes = [a for a in ("sex", "age_band") if (groups[a] != fairness.UNKNOWN).any()]
    if not attributes:
        return []
    table = fairness.audit(units, groups, thresholds, n_boot=n_boot, seed=p.seed, ci_level=p.ci_level,
                           min_group_patients=p.min_group_patients, attributes=attributes,
                           min_cases=p.min_positives, nothing_found=nothing_found)
    return table[table["tier"].astype(str) == "primary"].to_dict("records") + \
        table[table["metric"].isin(["auroc_macro"]) & table["gap"].isna()].to_dict("records")


def write_results(run_dir, source: str, frame: pd.DataFrame, report: dict, folder=None) -> Path:
    """predictions.csv and metrics.json, atomically, metrics.json last (it marks them done), into `folder`:
    external/<source>/ by default (notebook 07 opened by hand); make external's staging folder when it runs it."""
    folder = Path(folder) if folder else external_dir(run_dir, source)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(folder / EXTERNAL_PREDICTIONS, frame, float_format="%.9g")
    atomic_write_json(folder / EXTERNAL_METRICS, report)
    return folder
