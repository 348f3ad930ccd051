"""Benchmarks of the whole input pipeline, on a dataset's own JPEGs (`tools/gpu-check` runs both).

    cache     the cache build with all cores against the original project's decode path
              (full decode + Resize((S, S)) + ToTensor + Normalize) on the same files, same processes
    pipeline  training images/s end to end (cache -> DataLoader workers -> device -> BatchTransform
              -> train_one_epoch) against the model-only step rate (a batch already on the device),
              same model and recipe, in one process: the loader must not be the bottleneck
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import build_cache
from ..errors import UserError
from .decode import original_decode, original_path


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def jpeg_table(data_root, limit: int = 0) -> pd.DataFrame:
    """Every JPEG under data_root/files as a cache plan (dicom_id, path, split); all "train"."""
    root = Path(data_root)
    files = sorted((root / "files").glob("p*/p*/s*/*.jpg"))
    if limit:
        files = files[:limit]
    if not files:
        raise UserError(f"no JPEGs under {root / 'files'}; write some with "
                        f"`python -m cxrlib demo-data --out {root} --image-size full`")
    return pd.DataFrame({"dicom_id": [f.stem for f in files], "path": [str(f.relative_to(root)) for f in files],
                         "split": "train"})


def _original_one(task) -> int:

    path, size = task
    original_decode(path, original_path(size))
    return 1


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)   # as in DataLoader workers, which the original decodes in


def bench_cache(argv=None) -> dict:

    ap = argparse.ArgumentParser(prog="python -m cxrlib bench cache", description=bench_cache.__doc__)
    ap.add_argument("--data-root", required=True, help="a MIMIC-CXR-JPG-shaped folder with files/")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="processes for both paths (0: one per core)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many files (0: all)")
    args = ap.parse_args([a for a in argv or [] if a != "--"])
    workers = args.workers or _cores()
    plan = jpeg_table(args.data_root, args.limit)
    paths = [str(Path(args.data_root) / p) for p in plan["path"]]
    total_bytes = sum(len(Path(p).read_bytes()) for p in paths)   # both paths then read from the page cache
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = build_cache(args.data_root, plan, args.size, "squash", cache_dir=tmp, workers=workers,
                            progress=False)
        ours = time.perf_counter() - started
        built = len(cache)
    from torchvision import transforms  # noqa: F401  imported before the fork, as in DataLoader workers

    with multiprocessing.Pool(workers, initializer=_one_thread) as pool:
        pool.map(_original_one, [(p, args.size) for p in paths[:workers]])   # workers up and warm
        started = time.perf_counter()
        pool.map(_original_one, [(p, args.size) for p in paths], chunksize=4)
        original = time.perf_counter() - started
    return {"bench": "cache", "images": len(paths), "cached": built, "size": args.size, "workers": workers,
            "mean_file_mb": round(total_bytes / len(paths) / 1e6, 2),
            "ours_img_per_s": round(len(paths) / ours, 1), "original_img_per_s": round(len(paths) / original, 1),
            "ours_img_per_s_per_core": round(len(paths) / ours / workers, 1),
            "ours_over_original": round(original / ours, 2), "goal_img_per_s_16_cores": 1000,
            "goal_img_per_s_per_core": 62.5}


def _tiled_dataset(cache, batches: int, batch: int):
    """A CacheDataset of batches * batch items cycling through the cache's rows (zero labels)."""
    from ..training.loader import CacheDataset  # lazy: keeps torch out of this module's import

    rows = np.resize(np.arange(len(cache)), batches * batch)
    return CacheDataset(cache.images_path, rows, np.zeros((len(rows), 14), np.float32))


def _rate(loader, run_epoch, warmup: int) -> float:
    """images/s between the first progress point at or after `warmup` batches and the last one."""
    import torch

    marks = []

    def after_step(position):
        marks.append((position["batch"], position["images"], time.perf_counter()))

    position = run_epoch(loader, after_step)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    marks = [m for m in marks if m[0] >= warmup] or marks
    first, last = marks[0], marks[-1]
    if last[2] <= first[2]:
        raise UserError("bench pipeline: too few steps to time; raise --steps")
    return (last[1] - first[1]) / (last[2] - first[2]), position


def bench_pipeline(argv=None) -> dict:
    import torch

    from ..training import steps  # lazy: keeps torch out of this module's import
    from ..training.loader import BatchTransform, EpochSampler, make_loader  # lazy: keeps torch out of this module's import
    from ..training.model import build  # lazy: keeps torch, torchvision out of this module's import
    from ..training.runtime import set_tf32  # lazy: keeps torch out of this module's import

    ap = argparse.ArgumentParser(prog="python -m cxrlib bench pipeline", description=bench_pipeline.__doc__)
    ap.add_argument("--data-root", required=True, help="a MIMIC-CXR-JPG-shaped folder with files/")
    ap.add_argument("--cache-dir", default="", help="default: <data-root>/cache (built if missing)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--arch", default="resnet101")
    ap.add_argument("--head", default="avgpool", choices=["flatten", "avgpool"])
    ap.add_argument("--amp", default="bf16", choices=["bf16", "off"])
    ap.add_argument("--no-augment", action="store_true")
    args = ap.parse_args([a for a in argv or [] if a != "--"])
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
        set_tf32(args.amp != "off")
    amp = torch.bfloat16 if gpu and args.amp == "bf16" else None
    cache = build_cache(args.data_root, jpeg_table(args.data_root), args.size, "squash",
                        cache_dir=args.cache_dir or None, progress=False)
    batches = args.warmup + args.steps
    dataset = _tiled_dataset(cache, batches, args.batch)
    transform = BatchTransform(0.5, 0.25, augment=not args.no_augment)
    torch.manual_seed(0)
    model = build(args.arch, args.head, 14, args.size, "none").to(device)
    channels_last = gpu
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=False)

    def run_epoch(loader, after_step):
        return steps.train_one_epoch(model, loader, transform, optimizer, scheduler, scaler, device,
                                     steps.new_position(), steps=batches, amp=amp, channels_last=channels_last,
                                     after_step=after_step, progress=False)

    # model only: one batch already on the device (pixels), labels copied per step as in training
    images, targets, mask, index = next(iter(make_loader(dataset, args.batch, False, 0, seed=0)))
    resident = [(images.to(device), targets, mask, index)] * batches
    model_only, _ = _rate(resident, run_epoch, args.warmup)
    # end to end: the real loader (pinned memory on a GPU, persistent workers)
    sampler = EpochSampler(len(dataset), seed=0, batch_size=args.batch)
    loader = make_loader(dataset, args.batch, True, args.workers, seed=0, sampler=sampler)
    end_to_end, _ = _rate(loader, run_epoch, args.warmup)
    started = time.perf_counter()
    seen = sum(len(b[0]) for b in loader)
    loader_only = seen / (time.perf_counter() - started)
    return {"bench": "pipeline", "arch": args.arch, "head": args.head, "size": args.size, "batch": args.batch,
            "workers": args.workers, "steps": args.steps, "warmup": args.warmup, "amp": args.amp if gpu else "off",
            "augment": not args.no_augment, "channels_last": channels_last, "cache_rows": len(cache),
            "model_only_img_per_s": round(model_only, 1), "end_to_end_img_per_s": round(end_to_end, 1),
            "loader_only_img_per_s": round(loader_only, 1),
            "end_to_end_over_model_only": round(end_to_end / model_only, 3), "goal_ratio": 0.9}
