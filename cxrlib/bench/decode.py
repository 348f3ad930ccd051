"""`python -m cxrlib bench decode`: the cache's decode (fast and exact) against the original project's path.

Per image on one core, the same files interleaved: ours (draft mode + bilinear), exact (full decode +
bilinear, pixel for pixel the original's), the original's Resize + ToTensor + Normalize, and the
entropy-decode floor (a 1/8 draft decode). Then the fast build's throughput on 1 and 2 processes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.decode import RESAMPLE, decode_image, decode_one
from ..errors import UserError


def synthetic_jpeg(path, seed: int, width: int = 2544, height: int = 3056) -> None:
    """A MIMIC-sized grayscale JPEG (q95, about 1.35 MB like the real average of 1.5 MB):
    smooth structure plus fine grain; decoding time follows the compressed size."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(height // 64 + 2, width // 64 + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = field * 25 + 128 + 40 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    field += rng.normal(scale=1.5, size=(height, width)).astype(np.float32)
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(path, quality=95)


def synthetic_jpegs(folder, n: int, data_root: str = "") -> list[Path]:
    """n full-size JPEGs: the first n under data_root/files if given, else generated into folder."""
    if data_root:
        files = sorted(Path(data_root).glob("files/**/*.jpg"))[:n]
        if not files:
            raise UserError(f"no JPEGs under {Path(data_root) / 'files'}; generate full-size ones with "
                            "`python -m cxrlib demo-data --out DIR --image-size full` or leave --data-root out.")
        return files
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"synthetic_{i}.jpg" for i in range(n)]
    for i, path in enumerate(files):
        synthetic_jpeg(path, seed=i)
    return files


def original_path(size: int):
    """The original project's per-epoch transform (its Dataset: Image.open(p).convert("L"))."""
    from torchvision import transforms
    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                               transforms.Normalize([0.4691], [0.3046])])


def _draft_decode(path, size: int | None = None) -> None:
    """Decode only, at the DCT scale the cache uses for size; None: 1/8, the entropy-decode floor
    (libjpeg must still read every coefficient)."""
    with Image.open(path) as img:
        img.draft("L", (size, size) if size else (img.size[0] // 8, img.size[1] // 8))
        img.load()


def original_decode(path, transform) -> None:
    with Image.open(path) as img:
        transform(img.convert("L"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def bench_decode(argv=None) -> dict:
    """`python -m cxrlib bench decode`: per-image decode time of the cache build vs the original path."""
    import tempfile

    import torch

    ap = argparse.ArgumentParser(prog="python -m cxrlib bench decode")
    ap.add_argument("--images", type=int, default=8, help="full-size JPEGs, each timed --repeats times")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--processes", default="1,2", help="process counts for the build's throughput")
    ap.add_argument("--data-root", default="", help="time these JPEGs (data_root/files/**) instead of synthetic ones")
    args = ap.parse_args([a for a in argv or [] if a != "--"])  # `bench decode -- --opt` passes the "--"
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        files = synthetic_jpegs(tmp, args.images, args.data_root)
        mean_bytes = float(np.mean([len(Path(f).read_bytes()) for f in files]))  # also warms the page cache
        methods = {"floor": _draft_decode}
        for size in sizes:
            methods[f"ours_{size}"] = lambda p, s=size: decode_image(p, s, "squash")
            methods[f"exact_{size}"] = lambda p, s=size: decode_image(p, s, "squash", "exact")
            methods[f"original_{size}"] = lambda p, t=original_path(size): original_decode(p, t)
            methods[f"draft_only_{size}"] = lambda p, s=size: _draft_decode(p, s)
        times = {name: [] for name in methods}
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        threads = torch.get_num_threads()
        try:
            if cores:
                os.sched_setaffinity(0, {min(cores)})  # one core, the same files, methods interleaved
            torch.set_num_threads(1)
            for _ in range(args.repeats):
                for path in files:
                    for name, method in methods.items():
                        start = time.perf_counter()
                        method(path)
                        times[name].append(time.perf_counter() - start)
        finally:
            if cores:
                os.sched_setaffinity(0, cores)
            torch.set_num_threads(threads)
        ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
        result = {"bench": "decode", "images": len(files), "repeats": args.repeats,
                  "mean_file_mb": round(mean_bytes / 1e6, 2), "resample": RESAMPLE.name.lower(),
                  "floor_ms": round(ms["floor"], 2)}
        for size in sizes:
            ours, original = ms[f"ours_{size}"], ms[f"original_{size}"]
            with Image.open(files[0]) as img:
                reference = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
            result.update({
                f"ours_ms_{size}": round(ours, 2),
                f"original_ms_{size}": round(original, 2),
                f"original_over_ours_{size}": round(original / ours, 2),
                f"ours_over_floor_{size}": round(ours / ms["floor"], 2),
                f"draft_only_ms_{size}": round(ms[f"draft_only_{size}"], 2),  # the rest of ours is the resize
                f"psnr_vs_original_db_{size}": round(_psnr(decode_image(files[0], size)[0], reference), 1),
                f"exact_ms_{size}": round(ms[f"exact_{size}"], 2),
                f"exact_max_abs_diff_vs_original_{size}": int(np.abs(
                    decode_image(files[0], size, "squash", "exact")[0].astype(int) - reference.astype(int)).max()),
            })
        tasks = [(i, str(files[i % len(files)]), sizes[0], "squash", "fast", None, 0) for i in range(4 * len(files))]
        for count in [int(p) for p in args.processes.split(",")]:
            with multiprocessing.Pool(count) as pool:
                pool.map(decode_one, tasks[:count])  # start-up is not part of the rate
                start = time.perf_counter()
                pool.map(decode_one, tasks, chunksize=2)
                result[f"ours_img_per_s_{sizes[0]}_{count}proc"] = round(len(tasks) / (time.perf_counter() - start), 1)
    result["goal_original_over_ours"] = 1.5
    result["goal_ours_over_floor"] = 1.3
    return result
