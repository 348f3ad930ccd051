"""`python -m cxrlib bench loader`: images/s from the cache against decoding JPEGs every epoch (the original)."""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..training.loader import BatchTransform, CacheDataset, make_loader
from .decode import synthetic_jpegs


class JpegDataset(Dataset):
    """The original project's input path, decoding and resizing every JPEG every epoch.

    Kept as the baseline of `bench loader`: Image.open(p).convert("L") then
    Compose([Resize((S, S)), ToTensor(), Normalize([0.4691], [0.3046])]).
    """

    def __init__(self, paths, labels, size: int, mean: float = 0.4691, std: float = 0.3046):
        from torchvision import transforms
        labels = np.asarray(labels, dtype=np.float32)
        self.paths = [str(p) for p in paths]
        self.mask = (~np.isnan(labels)).astype(np.float32)
        self.labels = np.nan_to_num(labels, nan=0.0)
        self.transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                             transforms.Normalize([mean], [std])])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.paths[i]) as img:
            image = self.transform(img.convert("L"))
        return image, torch.from_numpy(self.labels[i]), torch.from_numpy(self.mask[i]), i


def _rss_mb(pid: int) -> dict:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields


def _images_per_second(loader: DataLoader, epochs: int = 2) -> tuple[float, list]:
    """Throughput of the last of `epochs` epochs (the first warms workers and the page cache)."""
    rate, workers = 0.0, []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        iterator = iter(loader)
        start, seen = time.perf_counter(), 0
        for images, *_ in iterator:
            seen += len(images)
        rate = seen / (time.perf_counter() - start)
        workers = [w.pid for w in getattr(iterator, "_workers", [])]
    return rate, workers


def bench_loader(argv=None) -> dict:
    """`python -m cxrlib bench loader`: images/s from the cache vs decoding JPEGs every epoch."""

    ap = argparse.ArgumentParser(prog="python -m cxrlib bench loader")
    ap.add_argument("--cache-images", type=int, default=4096, help="rows of the synthetic cache")
    ap.add_argument("--jpeg-images", type=int, default=128, help="items per epoch of the JPEG path (2 batches)")
    ap.add_argument("--jpeg-files", type=int, default=8, help="distinct full-size JPEGs they cycle through")
    ap.add_argument("--sizes", default="256,384")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-root", default="", help="take full-size JPEGs from here instead of generating them")
    args = ap.parse_args([a for a in argv or [] if a != "--"])  # `bench loader -- --opt` passes the "--"
    sizes = [int(s) for s in args.sizes.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    rng = np.random.default_rng(0)
    result = {"bench": "loader", "batch_size": args.batch_size, "cache_images": args.cache_images,
              "jpeg_images": args.jpeg_images}
    with tempfile.TemporaryDirectory() as tmp:
        files = synthetic_jpegs(Path(tmp) / "jpeg", args.jpeg_files, args.data_root)
        jpeg_paths = [files[i % len(files)] for i in range(args.jpeg_images)]
        jpeg_labels = rng.random((args.jpeg_images, 14)).astype(np.float32)
        cache_labels = np.where(rng.random((args.cache_images, 14)) < 0.1, np.nan, 1.0).astype(np.float32)
        for size in sizes:
            path = Path(tmp) / f"images_{size}.npy"
            images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.cache_images, size, size))
            for start in range(0, args.cache_images, 256):
                images[start:start + 256] = rng.integers(0, 256, (min(256, args.cache_images - start), size, size),
                                                         dtype=np.uint8)
            images.flush()
            del images
            cached = CacheDataset(path, np.arange(args.cache_images), cache_labels)
            decoding = JpegDataset(jpeg_paths, jpeg_labels, size)
            for workers in worker_counts:
                loader = make_loader(cached, args.batch_size, True, workers, seed=0, pin_memory=False)
                fast, pids = _images_per_second(loader)
                if pids:
                    rss = [_rss_mb(pid) for pid in pids]
                    result[f"worker_rss_anon_mb_{size}"] = round(max(r.get("RssAnon", 0) for r in rss), 1)
                    result[f"worker_rss_file_mb_{size}"] = round(max(r.get("RssFile", 0) for r in rss), 1)
                del loader
                slow, _ = _images_per_second(make_loader(decoding, args.batch_size, True, workers, seed=0,
                                                         pin_memory=False))
                result[f"cache_img_per_s_{size}_w{workers}"] = round(fast, 1)
                if workers:
                    result[f"cache_img_per_s_per_worker_{size}_w{workers}"] = round(fast / workers, 1)
                result[f"jpeg_img_per_s_{size}_w{workers}"] = round(slow, 2)
                result[f"speedup_{size}_w{workers}"] = round(fast / slow, 1)
            result[f"cache_mb_{size}"] = round(path.stat().st_size / 2**20, 1)
            result[f"augment_img_per_s_cpu_{size}"] = round(augment_rate(size, args.batch_size), 1)
        result["dataset_pickle_bytes"] = len(pickle.dumps(cached))
        result["main_rss_anon_mb"] = round(_rss_mb(os.getpid()).get("RssAnon", 0), 1)
    result["min_speedup"] = min(v for k, v in result.items() if k.startswith("speedup_"))
    result["goal_speedup"] = 100
    result["goal_img_per_s_per_worker_256"] = 250   # 4,000 images/s from 16 workers
    return result


def augment_rate(size: int, batch_size: int, batches: int = 4) -> float:
    """images/s of the training transform (BatchTransform: uint8 -> float, random affine and jitter, normalise)
    on this CPU, one thread. Training runs it on the device, on whole batches: this is its cost where no GPU is."""
    transform = BatchTransform(0.5, 0.25, augment=True).train()
    batch = torch.randint(0, 256, (batch_size, 1, size, size), dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transform(batch, epoch=0, step=0)   # warm
        started = time.perf_counter()
        for step in range(batches):
            transform(batch, epoch=0, step=step + 1)
        return batches * batch_size / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
