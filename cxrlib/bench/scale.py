"""`python -m cxrlib bench scale`: every step after training, rehearsed at MIMIC-CXR-JPG's scale on this machine.

No image and no training: synthetic MIMIC-CXR-JPG and MIMIC-IV tables at 1x, 4x and 16x a base size (16x, with the
default base, is the whole release: 65,379 patients, a test split of 5,159 images and a validate split of 2,991
on its official split; NIH ChestX-ray14's 112,120 images for external validation), two run folders whose
predictions are drawn with a signal per finding, and a stand-in best.pt of a ResNet101's size that holds the
model's record. Then each step runs in a process of its own, timed (its modules imported first), with the peak
resident memory of that process (VmHWM, imports included; `baseline` is a process that only imports them all):

    evaluate   notebook 03's statistics (evaluate_run: every split's bootstrap, thresholds, recalibration,
               both levels, the radiologist labels), written to metrics.json
    errors     notebook 04's tables, images aside (the uncertain labels, the breakdowns by size, orientation
               and view with their bootstraps, false negatives by co-occurring finding)
    audit      notebook 05: MIMIC-IV demographics for the cohort, the audit, fairness.json
    compare    notebook 03's paired comparison with the second run (paired bootstrap, DeLong)
    external   notebook 07's statistics on an NIH-size source (the source table, external_report), images aside
    card       MODEL_CARD.md and .html
    index      the run's index.html

The JSON line (last) holds, per size, the counts and each step's seconds and peak MB, and per step the growth of
its seconds and memory from the smallest size to the largest beside the growth of the work.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.cohort import build_cohort, load_raw_labels, read_cohort, write_cohort, write_report
from ..data.sources import NIH_ENTRIES, frontal, read_source
from ..errors import UserError
from ..evaluation import analysis, audit, evaluate, external_validation, paired
from ..fsutil import atomic_write_csv, atomic_write_text
from ..handoff import card, index_page
from ..labels import FINDINGS  # the rehearsal is a chexpert14 run at MIMIC's scale
from ..params import PRESETS, read_yaml, validate
from ..runfiles import (
    BEST,
    CHECKPOINTS,
    COHORT,
    COHORT_REPORT,
    FAIRNESS_JSON,
    HISTORY,
    ID_COLUMNS,
    PREDICTIONS,
    freeze,
    load_frozen,
    prob_columns,
    read_metrics,
    read_predictions,
)
from ..synthetic import mimic_cxr
from ..training.checkpoint import MODEL_FIELDS

FULL = {"subjects": 65_379, "test_images": 5_159, "validate_images": 2_991, "nih_images": 112_120}
STEPS = ("evaluate", "errors", "audit", "compare", "external", "card", "index")
RESNET101_MB = 170   # a ResNet101 checkpoint's weights: what the card and the index hash
# Per finding, how far apart positives' and negatives' logits sit (AUROCs from about 0.70 to 0.92), as a
# trained model's differ: rare and subtle findings lower, large ones higher.
SEPARATION = dict(zip(FINDINGS, (1.0, 1.6, 0.9, 1.5, 0.8, 0.8, 1.0, 1.2, 1.8, 1.9, 1.0, 0.9, 1.4, 2.0)))


def draw_scores(labels: np.ndarray, rng, shift: float = 0.0) -> np.ndarray:
    """float32 probabilities for (N, 14) labels (NaN = masked): each finding's logit separates positives from
    negatives by SEPARATION, with unit noise; masked cells get a negative's score."""
    separation = np.array([SEPARATION[f] for f in FINDINGS]) + shift
    logits = -2.0 + separation * np.nan_to_num(labels) + rng.normal(size=labels.shape)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def pick_patients(frame: pd.DataFrame, split: str, target: int, rng) -> set:
    """Patients of the release's `split`, in random order, until their images reach `target`."""
    counts = frame[frame["split"] == split].groupby("subject_id").size()
    order = counts.index.to_numpy()[rng.permutation(len(counts))]
    reached = int(np.searchsorted(counts.loc[order].cumsum().to_numpy(), target)) + 1
    return set(order[:reached])


def stand_in_checkpoint(path: Path, p, model_mb: int) -> None:
    """best.pt with the model's record (params, model_config) and a payload of a trained model's size."""


    config = {**{k: getattr(p, k) for k in MODEL_FIELDS}, "mean": 0.5, "std": 0.25}
    weights = {"weights": torch.zeros(model_mb * 2**20 // 4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": p.to_dict(), "model_config": config, "model": weights, "epoch": 3}, path)


def make_run(folder: Path, name: str, data: Path, cohort: pd.DataFrame, report, n_boot: int, model_mb: int,
             seed: int, shift: float):
    """A run folder as notebooks 01-02 leave it (params, cohort, history, best.pt) and predictions.csv, as
    notebook 03's first cell leaves it, drawn instead of predicted."""
    values = {**read_yaml(PRESETS / "full-official.yaml"), "name": name, "runs_dir": str(folder / "runs"),
              "data_root": str(data), "device": "cpu", "weights": "none", "tracker": "none", "bootstrap": n_boot,
              "num_workers": 0, "seed": seed}
    p = validate(values, "bench scale")
    run_dir = p.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    freeze(p, run_dir)
    write_cohort(cohort, run_dir / COHORT)
    write_report(report, run_dir / COHORT_REPORT)
    history = pd.DataFrame({"epoch": [1, 2, 3], "best_epoch": [1, 2, 2], "selected": [True, True, False],
                            "val_auroc_macro": [0.70, 0.74, 0.73], "val_auroc_micro": [0.80, 0.83, 0.82],
                            "val_loss": [0.40, 0.37, 0.38], "val_accuracy": [0.85, 0.86, 0.86],
                            "patience_counter": [0, 0, 1], "select_level": "study", "eval_split": "validate"})
    atomic_write_csv(run_dir / CHECKPOINTS / HISTORY, history)
    stand_in_checkpoint(run_dir / CHECKPOINTS / BEST, p, model_mb)
    scored = cohort[cohort["split"].isin(["validate", "test"])].reset_index(drop=True)
    predictions = scored[ID_COLUMNS].copy()
    labels = scored[FINDINGS].to_numpy(np.float64)
    predictions[prob_columns(FINDINGS)] = draw_scores(labels, np.random.default_rng([seed, 1]), shift)
    predictions[FINDINGS] = labels.astype(np.float32)
    atomic_write_csv(run_dir / PREDICTIONS, predictions, float_format="%.9g")
    return run_dir


def nih_table(root: Path, images: int, seed: int) -> None:
    """NIH ChestX-ray14's Data_Entry table and test list at `images` rows (about 3.6 images a patient, as the
    release has), labels at its prevalences; no image files."""
    rng = np.random.default_rng([seed, 2])
    labels = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia", "Pneumothorax",
              "Nodule", "Mass", "Infiltration", "Pleural_Thickening")
    rates = np.array([0.10, 0.025, 0.04, 0.02, 0.12, 0.013, 0.047, 0.056, 0.051, 0.18, 0.03])
    hits = rng.random((images, len(labels))) < rates
    findings = ["|".join(np.array(labels)[row]) or "No Finding" for row in hits]
    patients = np.sort(rng.integers(1, max(2, images // 3.6), images))
    follow = pd.Series(patients).groupby(patients).cumcount().to_numpy()
    names = [f"{pt:08d}_{f:03d}.png" for pt, f in zip(patients, follow)]
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(root / NIH_ENTRIES[0], pd.DataFrame({
        "Image Index": names, "Finding Labels": findings, "Follow-up #": follow, "Patient ID": patients,
        "Patient Age": rng.integers(18, 90, images), "Patient Gender": rng.choice(["F", "M"], images),
        "View Position": rng.choice(["AP", "PA"], images, p=[0.4, 0.6]), "OriginalImage[Width": 2500,
        "Height]": 2048, "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143}))
    atomic_write_text(root / "test_list.txt", "".join(f"{n}\n" for n in names))
    atomic_write_text(root / "train_val_list.txt", "")


def build(folder: Path, share: float, n_boot: int, model_mb: int, seed: int = 0) -> dict:
    """The rehearsal at `share` of the full release: tables, two runs (a and b), an NIH-size table."""
    data = folder / "data"
    started = time.perf_counter()
    mimic_cxr.generate(data, subjects=max(200, round(FULL["subjects"] * share)), seed=seed, images=False,
                       progress=False)
    p = validate({**read_yaml(PRESETS / "full-official.yaml"), "data_root": str(data)}, "bench scale")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the synthetic tables' label-less studies, expected
        cohort, report = build_cohort(data, p)
    # The release's official test and validate splits are small (5,159 and 2,991 images): ours are carved
    # from the synthetic split's own test and validate patients to those sizes (times share).
    rng = np.random.default_rng([seed, 3])
    test = pick_patients(cohort, "test", round(FULL["test_images"] * share), rng)
    validate_ = pick_patients(cohort, "validate", round(FULL["validate_images"] * share), rng)
    cohort["split"] = np.where(cohort["subject_id"].isin(test), "test",
                               np.where(cohort["subject_id"].isin(validate_), "validate", "train"))
    for name, shift in (("a", 0.0), ("b", -0.1)):
        make_run(folder, name, data, cohort, report, n_boot, model_mb, seed, shift)
    nih_table(folder / "nih", max(100, round(FULL["nih_images"] * share)), seed)
    split = cohort["split"].value_counts()
    return {"share": share, "cohort_images": int(len(cohort)), "test_images": int(split.get("test", 0)),
            "validate_images": int(split.get("validate", 0)),
            "test_patients": int(cohort.loc[cohort["split"] == "test", "subject_id"].nunique()),
            "nih_images": max(100, round(FULL["nih_images"] * share)), "build_seconds": round(time.perf_counter() - started, 1)}


# --------------------------------------------------------------------------- the steps, each in its own process
def run_step(step: str, folder: Path) -> int:
    """One step on the rehearsal in `folder`; returns the units it scored (its work)."""

    run_dir = folder / "runs" / "a"
    p = load_frozen(run_dir) if step != "baseline" else None
    if step == "baseline":   # the imports every step pays (this module's), and nothing else
        return 0
    if step == "evaluate":

        return evaluate.evaluate_run(run_dir, p)["level"]["units_per_split"]["test"]
    if step == "errors":
        return error_tables(run_dir, p)
    if step == "audit":

        return audit.audit_run(run_dir, p)["test_units"]
    if step == "compare":

        return paired.compare_runs(run_dir, folder / "runs" / "b", p).attrs["shared_images"]
    if step == "external":
        return external(run_dir, p, folder / "nih")
    if step == "card":

        card.write_card(run_dir)
        return int(len(read_cohort(run_dir / COHORT)))
    if step == "index":

        index_page.write_index(run_dir)
        return int(len(read_cohort(run_dir / COHORT)))
    raise UserError(f"bench scale: no step {step!r}; steps: {', '.join(STEPS)}")


def error_tables(run_dir: Path, p) -> int:
    """Notebook 04's tables, in its order, images aside."""

    predictions, report = read_predictions(run_dir), read_metrics(run_dir)
    test = analysis.test_rows(predictions)
    thresholds, _ = analysis.thresholds_from_report(report, level="image")
    analysis.top_errors(predictions, 4)
    raw = load_raw_labels(p.data_root, p.label_source, test["study_id"])
    analysis.uncertainty_table(test, raw, thresholds, p.uncertain_policy)
    properties = analysis.with_image_properties(test, analysis.read_metadata_columns(p.data_root))
    for by in ("size", "orientation", "ViewPosition"):
        analysis.breakdown(properties, by, thresholds, p.bootstrap, p.seed, p.ci_level)
    analysis.fn_by_cooccurrence(test, thresholds, min_n=5)
    return int(len(test))


def external(run_dir: Path, p, root: Path) -> int:
    """Notebook 07 on an NIH-size source, its images' scores drawn instead of predicted: the source table,
    the selection, then external_report and its files, as score_source hands them on."""

    found = read_source("nih", root, "test")
    table = frontal(found.table)
    frame = pd.DataFrame({"dicom_id": table["image_id"], "subject_id": table["patient_id"],
                          "study_id": table["study_id"], "split": "external", "view": table["view"],
                          "sex": table["sex"], "age": table["age"]})
    labels = table[FINDINGS].to_numpy(np.float64)
    frame[prob_columns(FINDINGS)] = draw_scores(labels, np.random.default_rng(p.seed), -0.3)
    frame[FINDINGS] = labels.astype(np.float32)
    info = {"source": "nih", "data_root": str(root), "views": "frontal", "equalize": False, "allow_missing": False,
            **external_validation.table_info(found, len(table), len(table), frame, 0),
            "failures": [], "file_modes": {"L": len(frame)},
            "preprocessing": {"image_size": 256, "resize": "squash", "decode": "fast", "bit_depth": "8"},
            "intensity": {"internal": [], "external": []}}
    report = external_validation.external_report(run_dir, p, frame, info)
    external_validation.write_results(run_dir, "nih", frame, report)
    return int(report["counts"]["units"])


def peak_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, its own address space's high-water mark (ru_maxrss
    would count the parent's, which a child started by fork and exec inherits on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(step: str, folder: Path) -> dict:
    """Run one step in a fresh process: its seconds (the step alone: importing this module imported every step's
    modules), units, and the process's peak resident MB (peak_mb, read as it ends: imports included)."""
    code = ("import json, sys, time; from pathlib import Path; from cxrlib.bench.scale import run_step, peak_mb\n"
            "t = time.perf_counter(); units = run_step(sys.argv[1], Path(sys.argv[2])); t = time.perf_counter() - t\n"
            "print(json.dumps({'seconds': t, 'units': units, 'peak_mb': peak_mb()}))")
    done = subprocess.run([sys.executable, "-c", code, step, str(folder)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        raise UserError(f"bench scale: step {step} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": round(result["seconds"], 2), "units": result["units"], "peak_mb": round(result["peak_mb"])}


def growth(sizes: list[dict], steps) -> dict:
    """Per step, from the first of `sizes` to the last, as ratios: its seconds, its process's peak memory, and
    its work (the units it scored, or the cohort's images for the card and the index)."""
    first, last = sizes[0]["steps"], sizes[-1]["steps"]
    return {step: {"seconds": round(last[step]["seconds"] / max(first[step]["seconds"], 0.01), 1),
                   "peak_mb": round(last[step]["peak_mb"] / max(first[step]["peak_mb"], 1), 2),
                   "work": round(last[step]["units"] / max(first[step]["units"], 1), 1)} for step in steps}


def bench_scale(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m cxrlib bench scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=float, default=1 / 16, help="the 1x size as a share of the full release "
                    "(default 1/16, so that 16x is the whole release and NIH's 112,120 images)")
    ap.add_argument("--sizes", default="1,4,16", help="multiples of the base size (default 1,4,16)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of every CI (default 1000, the runs')")
    ap.add_argument("--model-mb", type=int, default=RESNET101_MB, help="the stand-in best.pt's size")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"a subset of {', '.join(STEPS)}")
    ap.add_argument("--keep", help="build the rehearsal in this folder and keep it (default: a temporary one)")
    args = ap.parse_args(list(argv or []))
    try:
        multiples = [float(x) for x in args.sizes.split(",")]
    except ValueError:
        raise UserError(f"--sizes {args.sizes!r}: give multiples of the base size, e.g. 1,4,16") from None
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not multiples or min(multiples) <= 0 or not 0 < args.base * max(multiples) <= 1:
        raise UserError(f"bench scale: steps {unknown} unknown (steps: {', '.join(STEPS)})" if unknown else
                        f"--base {args.base} x --sizes {args.sizes}: each size must be a share of the release in (0, 1]")
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for multiple in multiples:
            folder = Path(args.keep or tmp) / f"x{multiple:g}"
            counts = build(folder, args.base * multiple, args.bootstrap, args.model_mb)
            timed = {"baseline": measure("baseline", folder)}
            for step in steps:
                timed[step] = measure(step, folder)
                print(f"[bench scale] x{multiple:g} {step}: {timed[step]['seconds']} s, {timed[step]['peak_mb']} MB "
                      f"({timed[step]['units']} units)", file=sys.stderr, flush=True)
            if "audit" in steps:   # the audit's work grows with the groups big enough to report, too
                audited = json.loads((folder / "runs" / "a" / FAIRNESS_JSON).read_text())
                counts["audit_figures"] = len(audited["rows"])
            sizes.append({"multiple": multiple, **counts, "steps": timed})
    result = {"bench": "scale", "bootstrap": args.bootstrap, "sizes": sizes}
    if len(sizes) > 1:
        result["growth"] = growth(sizes, steps)
    if len(sizes) > 2:   # the audit's groups pass min_group_patients as the test split grows: compare like with like
        result["growth_last_two"] = growth(sizes[-2:], steps)
    return result
