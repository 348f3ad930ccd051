"""`python -m cxrlib bench bootstrap`: 1,000 patient-level resamples of a 7k x 14 test set.

--official-test sizes it like the release's official test split (5,159 images of 293 patients, in
about 3,100 studies) and also times the study-level path: aggregation, then the same bootstrap.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ..labels import FINDINGS  # the benchmark scores a chexpert14-sized run
from ..stats.levels import study_rows
from ..stats.metrics import summarize

PROB_COLUMNS = [f"p_{f}" for f in FINDINGS]   # runfiles.prob_columns, without importing runfiles


def bench_bootstrap(argv=None) -> dict:
    """Time summarize() (1,000 patient resamples of 7k x 14 by default) on one thread."""
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(prog="python -m cxrlib bench bootstrap")
    ap.add_argument("--images", type=int, default=7000)
    ap.add_argument("--patients", type=int, default=0, help="default: one image per patient")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--studies", type=int, default=0, help="also time study level with this many studies")
    ap.add_argument("--official-test", action="store_true",
                    help="5,159 images, 293 patients, 3,100 studies: the official test split's size")
    args = ap.parse_args(list(argv or []))
    if args.official_test:
        args.images, args.patients, args.studies = 5159, 293, 3100
    rng = np.random.default_rng(args.seed)
    n = args.images
    prevalence = np.geomspace(0.01, 0.4, len(FINDINGS))
    y = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.float64)
    y[rng.random(y.shape) < 0.02] = np.nan  # a few masked labels, as with the 'ignore' policy
    logits = rng.normal(size=y.shape) + 1.5 * np.nan_to_num(y) - 2.0
    p = (1 / (1 + np.exp(-logits))).astype(np.float32).astype(np.float64)  # float32 ties, as in predictions.csv
    groups = rng.integers(0, args.patients, n) if args.patients else np.arange(n)
    times = []
    with threadpool_limits(1):
        for _ in range(args.repeats):
            t = time.perf_counter()
            summary = summarize(y, p, groups, n_boot=args.n_boot, seed=args.seed)
            times.append(time.perf_counter() - t)
    study = _study_level(rng, y, p, groups, args) if args.studies else {}
    return {**study, "bench": "bootstrap", "images": n, "patients": summary["n_patients"], "findings": len(FINDINGS),
            "n_boot": args.n_boot, "threads": 1, "seconds_best": round(min(times), 3),
            "seconds_all": [round(x, 3) for x in times], "goal_seconds": 10.0,
            "statistics": "AUROC, AUPRC per finding + macro + micro, ECE, Brier"}


def _study_level(rng, y, p, groups, args) -> dict:
    """Studies nested in patients: aggregate (levels.study_rows, mean) then bootstrap, timed together."""
    import pandas as pd
    from threadpoolctl import threadpool_limits


    n_patients = int(groups.max()) + 1
    study_of_patient = rng.integers(0, max(args.studies // n_patients, 1), len(y))
    study = [f"{g}-{s}" for g, s in zip(groups, study_of_patient)]
    frame = pd.DataFrame({"dicom_id": np.arange(len(y)).astype(str), "subject_id": groups.astype(str),
                          "study_id": study, "split": "test"})
    frame[PROB_COLUMNS] = p
    labels = pd.DataFrame(y, columns=FINDINGS).groupby(np.array(study)).transform("first")   # per study
    frame[FINDINGS] = labels.to_numpy()
    times = []
    with threadpool_limits(1):
        for _ in range(args.repeats):
            t = time.perf_counter()
            rows = study_rows(frame, "mean")
            summarize(rows[FINDINGS].to_numpy(), rows[PROB_COLUMNS].to_numpy(), rows["subject_id"].to_numpy(),
                      n_boot=args.n_boot, seed=args.seed)
            times.append(time.perf_counter() - t)
    return {"studies": int(len(rows)), "study_level_seconds_best": round(min(times), 3)}

