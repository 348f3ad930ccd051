"""`python -m cxrlib bench probe`: a linear probe trained from the embedding cache against `freeze: backbone`
training on the images, the same epochs on the same images, side by side in one run.

Both are the real fit (training/train.py) on a synthetic stand-in's cohort and cache, from one random-weight
ResNet18 file, with the same head, loss, optimizer, schedule, batches and selection; `train_from: embeddings` runs
the frozen backbone once per image (the first probe, which fills the cache) and then never (every later probe:
another seed or label fraction). Reports seconds and the ratios, and the largest difference between the two
models' validation-split probabilities.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

from .. import params, runfiles
from ..data.cache import build_cache
from ..data.cohort import build_cohort, write_cohort
from ..evaluation import evaluate
from ..runfiles import labels_of, prob_columns
from ..synthetic import mimic_cxr
from ..training.train import fit


def _validation_probabilities(run_dir: Path, p) -> np.ndarray:
    predictions = evaluate.predict_run(run_dir, p, splits=("validate",), write=False)
    return predictions[prob_columns(labels_of(predictions))].to_numpy()


def bench_probe(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cxrlib bench probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=5000, help="synthetic patients (5000: the demo's data)")
    parser.add_argument("--size", type=int, default=64, help="image_size (the demo's: 64)")
    parser.add_argument("--epochs", type=int, default=10, help="(10: the demo's)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50", "resnet101"])
    parser.add_argument("--data-root", help="an existing MIMIC-shaped dataset (default: generate one)")
    args = parser.parse_args([a for a in argv or [] if a != "--"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.data_root) if args.data_root else tmp / "data"
        if not args.data_root:
            mimic_cxr.generate(root, subjects=args.subjects, seed=0, image_size="small", progress=False,
                               max_studies=3)
        torch.manual_seed(0)
        weights = tmp / f"{args.arch}-random.pth"
        torch.save(getattr(torchvision.models, args.arch)().state_dict(), weights)
        base = params.validate({
            "data_root": str(root), "runs_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"), "name": "images",
            "split_mode": "official", "val_fraction": 0.0, "views": ["AP"], "image_size": args.size,
            "resize": "squash", "arch": args.arch, "head": "avgpool", "weights": str(weights), "freeze": "backbone",
            "augment": False, "dropout": 0.0, "epochs": args.epochs, "patience": args.epochs + 1,
            "batch_size": args.batch, "lr": 0.01, "optimizer": "adamw", "num_workers": 0, "device": "cpu",
            "tracker": "none", "checkpoint_minutes": 0, "cpu_amp": False, "select_metric": "auroc"},
            "bench probe")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the synthetic tables' label-less studies, expected
            cohort, _ = build_cohort(root, base)
        build_cache(root, cohort, base.image_size, base.resize, base.resolved_cache_dir(), progress=False)
        seconds, folders = {}, {}
        for name, changes in (("images", {}), ("probe_first", {"train_from": "embeddings"}),
                              ("probe_cached", {"train_from": "embeddings", "seed": 1})):
            p = dataclasses.replace(base, name=name, **changes)
            folder = p.run_dir()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_cohort(cohort, folder / runfiles.COHORT)
            started = time.perf_counter()
            fit(p, folder, progress=False)
            seconds[name] = time.perf_counter() - started
            folders[name] = (folder, p)
        difference = np.abs(_validation_probabilities(*folders["images"])
                            - _validation_probabilities(*folders["probe_first"])).max()
        train_images = int((cohort["split"] == "train").sum())
    return {"bench": "probe", "arch": args.arch, "image_size": args.size, "epochs": args.epochs, "batch": args.batch,
            "train_images": train_images, "threads": torch.get_num_threads(),
            "freeze_backbone_seconds": round(seconds["images"], 2),
            "probe_first_seconds": round(seconds["probe_first"], 2),
            "probe_cached_seconds": round(seconds["probe_cached"], 2),
            "speedup_cached": round(seconds["images"] / seconds["probe_cached"], 1),
            "speedup_first": round(seconds["images"] / seconds["probe_first"], 1),
            "max_abs_probability_difference": float(difference)}
