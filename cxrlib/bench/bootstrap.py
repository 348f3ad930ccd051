"""`python -m cxrlib bench bootstrap`: 1,000 patient-level resamples of a 7k x 14 test set."""
from __future__ import annotations

import argparse
import time

import numpy as np

from ..labels import FINDINGS
from ..metrics import summarize


def bench_bootstrap(argv=None) -> dict:
    """Time summarize() (1,000 patient resamples of 7k x 14 by default) on one thread."""
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(prog="python -m cxrlib bench bootstrap")
    ap.add_argument("--images", type=int, default=7000)
    ap.add_argument("--patients", type=int, default=0, help="default: one image per patient")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(list(argv or []))
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
    return {"bench": "bootstrap", "images": n, "patients": summary["n_patients"], "findings": len(FINDINGS),
            "n_boot": args.n_boot, "threads": 1, "seconds_best": round(min(times), 3),
            "seconds_all": [round(x, 3) for x in times], "goal_seconds": 10.0,
            "statistics": "AUROC, AUPRC per finding + macro + micro, ECE, Brier"}
