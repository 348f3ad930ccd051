"""Benchmarks: `python -m cxrlib bench <name> [options]`; each prints one JSON line last.

    decode     cache-build decode path vs the original project's per-epoch path, and the entropy-decode floor
    loader     images/s from the cache vs decoding JPEGs every epoch
    train      ResNet101 training images/s: the original recipe vs ours
    bootstrap  1,000 patient-level bootstrap resamples of 7k x 14
    cohort     cohort selection on tables of real MIMIC-CXR-JPG scale (377k images)
    cache      the cache build with all cores vs the original decode path, on a dataset's JPEGs
    pipeline   training images/s end to end (cache -> workers -> device -> step) vs the model-only rate
    scale      every step after training at 1x, 4x and 16x a base size (16x: the whole release, NIH's size)
    probe      a linear probe from the embedding cache vs freeze: backbone training, same epochs, same images

Ratios are always measured side by side in one run, on the same files.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .. import params
from ..data import cohort
from ..errors import UserError
from ..synthetic import mimic_cxr
from . import pipeline
from .decode import bench_decode


def machine() -> dict:
    import os

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": "cpu"}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def bench_cohort(args) -> dict:

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_root) if args.data_root else Path(tmp)
        if not args.data_root:
            t = time.perf_counter()
            summary = mimic_cxr.generate(root, subjects=args.subjects, seed=args.seed, images=False, progress=False)
            print(f"generated MIMIC-scale tables in {time.perf_counter() - t:.1f} s: {summary}", file=sys.stderr)
        seed = params.validate({"data_root": str(root), "val_fraction": 0.1})
        full = params.validate({"data_root": str(root), "views": ["AP", "PA"], "studies_per_subject": "all",
                                "images_per_study": "all", "split_mode": "official", "val_fraction": 0.0})
        result = {"bench": "cohort"}
        for name, p in (("seed", seed), ("full", full)):
            times = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the synthetic tables' label-less studies, expected
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    frame, report = cohort.build_cohort(root, p)
                    times.append(time.perf_counter() - t)
            result.update({"metadata_rows": report.metadata_rows, f"{name}_cohort_images": len(frame),
                           f"{name}_seconds_best": round(min(times), 3),
                           f"{name}_seconds_all": [round(x, 3) for x in times]})
        return {**result, "goal_seconds": {"seed": 5.0, "full": 3.0}}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cxrlib bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="name", required=True)
    c = sub.add_parser("cohort", help="cohort selection at MIMIC scale")
    c.add_argument("--data-root", help="existing MIMIC-shaped tables (default: generate 65,379 subjects)")
    c.add_argument("--subjects", type=int, default=65379)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--repeats", type=int, default=3)
    for name in ("decode", "loader", "train", "bootstrap", "cache", "pipeline", "scale", "probe"):
        sub.add_parser(name, help=f"options: python -m cxrlib bench {name} --help", add_help=False)
    return ap


def cli(command: str, argv: list[str]) -> int:
    # Each benchmark parses its own options; we only pick which one runs.
    args, rest = _parser().parse_known_args(argv)
    args.rest = rest
    if args.name == "cohort":
        if rest:
            raise UserError(f"bench cohort: unknown options {rest}")
        result = bench_cohort(args)
    elif args.name in ("cache", "pipeline"):
        result = getattr(pipeline, f"bench_{args.name}")(args.rest)
    elif args.name == "decode":
        result = bench_decode(args.rest)
    elif args.name == "loader":
        from .loader import bench_loader  # lazy: keeps torch out of this module's import
        result = bench_loader(args.rest)
    elif args.name == "train":
        from .train import bench_train  # lazy: keeps torch out of this module's import
        result = bench_train(args.rest)
    elif args.name == "bootstrap":
        from .bootstrap import bench_bootstrap  # lazy: keeps scipy, sklearn out of this module's import
        result = bench_bootstrap(args.rest)
    elif args.name == "scale":
        from .scale import bench_scale  # lazy: keeps torch out of this module's import
        result = bench_scale(args.rest)
    elif args.name == "probe":
        from .probe import bench_probe  # lazy: keeps torch out of this module's import
        result = bench_probe(args.rest)
    else:  # argparse already refuses other names
        raise UserError(f"unknown benchmark {args.name}")
    result["machine"] = machine()
    print(json.dumps(result))
    return 0
