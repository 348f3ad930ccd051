"""Decode the cohort's JPEGs once into a resized uint8 cache that training memory-maps.

`python -m cxrlib cache --data-root DIR --cohort FILE --size 256` writes <cache_dir>/<S>_<resize>[_exact]/:
  images.npy     uint8 (rows, S, S); np.load(mmap_mode="r") maps it without reading it
  index.csv      dicom_id, row, path, split, width, height of every image that decoded
  report.csv     dicom_id, path, reason of every image that did not (missing, truncated, not a JPEG)
  stats.json     mean and std of the training images' pixels scaled to [0, 1]
  manifest.json  written last, so it marks a complete cache: S, resize, CACHE_VERSION, created,
                 and each source file's size in bytes and mtime (a changed file is decoded again)

Decoding (fast or exact, the `decode` parameter) is in decode.py; an exact cache lives in
<S>_<resize>_exact/, so the two never mix.

Rows are in dicom_id order, one per cohort image; a row whose image failed stays zero and is
not in the index. A build works in <S>_<resize>/.building/ and records which rows are done, so
an interrupted build continues where it stopped; a changed cohort copies the rows it already has.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..fsutil import disk_full
from ..runfiles import COHORT
from .cache_build import (
    CACHE_VERSION,
    FAILED,
    REQUIRED_COLUMNS,
    Build,
    cohort_stats,
    decode_pending,
    locked,
    make_plan,
    old_state,
    publish,
    reuse,
    same_sources,
    union_plan,
)
from .cohort import read_cohort
from .decode import DECODE_MODES, RESIZE_MODES

FLUSH_EVERY = 256          # images between progress checkpoints: at most this much work is lost to a kill


# --------------------------------------------------------------------------- the cache on disk

@dataclass
class Cache:
    dir: Path
    manifest: dict
    index: pd.DataFrame      # dicom_id, row, path, split, width, height
    failures: pd.DataFrame   # dicom_id, path, reason
    stats: dict              # mean, std (pixels in [0, 1]) of the training images
    counts: dict | None = None  # from build_cache: images decoded, reused and failed by that call
    _images: np.memmap | None = None

    @property
    def images_path(self) -> Path:
        return self.dir / "images.npy"

    @property
    def images(self) -> np.memmap:
        """(rows, S, S) uint8, memory-mapped read-only on first use."""
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def resize(self) -> str:
        return self.manifest["resize"]

    @property
    def decode(self) -> str:
        return self.manifest.get("decode", "fast")   # caches from before decode modes are fast ones

    def rows_for(self, dicom_ids) -> np.ndarray:
        """The cache row of each dicom_id; -1 where it is not in the cache or did not decode."""
        where = pd.Index(self.index["dicom_id"]).get_indexer(pd.Index(np.asarray(dicom_ids, dtype=str)))
        rows = self.index["row"].to_numpy(dtype=np.int64)
        if len(rows) == 0:
            return np.full(len(where), -1, dtype=np.int64)
        return np.where(where >= 0, rows[where], -1)

    def __len__(self) -> int:
        return len(self.index)


def cache_path(cache_dir, size: int, resize: str, decode: str = "fast") -> Path:
    return Path(cache_dir) / (f"{int(size)}_{resize}" + ("" if decode == "fast" else f"_{decode}"))


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("cache_version") == CACHE_VERSION else None


def open_cache(cache_dir, size: int, resize: str = "squash", decode: str = "fast") -> Cache:
    folder = cache_path(cache_dir, size, resize, decode)
    manifest = _read_manifest(folder)
    if manifest is None:
        hint = (f" An interrupted build is in {folder / '.building'}: rerun the same build to finish it."
                if (folder / ".building").exists() else "")
        raise UserError(
            f"no complete image cache in {folder} (size {size}, resize {resize}, decode {decode}).{hint} Build it "
            f"with `python -m cxrlib cache --data-root DIR --cohort COHORT.csv --size {size} --resize {resize} "
            f"--decode {decode}` "
            "or run notebook 01."
        )
    strings = {"dicom_id": str, "path": str, "split": str}
    index = pd.read_csv(folder / "index.csv", dtype=strings)
    failures = pd.read_csv(folder / "report.csv", dtype={**strings, "reason": str})
    stats = json.loads((folder / "stats.json").read_text())
    return Cache(folder, manifest, index, failures, stats)


def cohort_with_rows(cohort: pd.DataFrame, cache: Cache) -> pd.DataFrame:
    """The cohort's images that are in the cache, with their `cache_row`; the rest are dropped."""
    rows = cache.rows_for(cohort["dicom_id"])
    kept = cohort.loc[rows >= 0].copy()
    kept["cache_row"] = rows[rows >= 0]
    dropped = int((rows < 0).sum())
    if dropped:
        warnings.warn(f"{dropped} of {len(cohort)} cohort images are not in the cache {cache.dir} "
                      f"(bad or missing files: see {cache.dir / 'report.csv'}); they are left out.",
                      stacklevel=2)
    return kept.reset_index(drop=True)


def usable_cohort(run_dir, p) -> pd.DataFrame:
    """The run's cohort.csv without the images that failed to decode: what training and evaluation use."""

    cohort = read_cohort(Path(run_dir) / COHORT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # notebook 01 reported the failures
        return cohort_with_rows(cohort, open_cache(p.resolved_cache_dir(), p.image_size, p.resize, p.decode))


# --------------------------------------------------------------------------- planning a build


def build_cache(data_root, cohort: pd.DataFrame, size: int = 256, resize: str = "squash", cache_dir=None,
                workers: int = 0, progress: bool = True, flush_every: int = FLUSH_EVERY, decode: str = "fast",
                reader: dict | None = None) -> Cache:
    """Decode the cohort's images into <cache_dir>/<size>_<resize>[_exact]/ (only what is not there yet).

    workers: processes for decoding; 0 means one per available core, 1 decodes in this process.
    reader: an external source's decoding (decode.READERS' keys: formats, equalize); None: MIMIC's JPEGs.
    """
    if resize not in RESIZE_MODES:
        raise UserError(f"resize {resize!r} is not one of {list(RESIZE_MODES)}; set resize (--resize) to squash "
                        "(the original project's Resize((S, S))) or letterbox (keeps the aspect ratio).")
    if decode not in DECODE_MODES:
        raise UserError(f"decode {decode!r} is not one of {list(DECODE_MODES)}; set decode (--decode) to fast "
                        "(draft-mode JPEG decode) or exact (the original project's full decode + resize).")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise UserError(f"image_size (--size) is {size!r}; it must be a whole number of pixels, e.g. 256.")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data_root {data_root} is not a folder; set data_root (--data-root) to the MIMIC-CXR-JPG "
                        "root that holds files/ (`make data` writes the synthetic stand-in to data/demo).")
    cache_dir = Path(cache_dir) if cache_dir else data_root / "cache"
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    folder = cache_path(cache_dir, size, resize, decode)
    key = {"cache_version": CACHE_VERSION, "size": size, "resize": resize, "decode": decode}
    if reader is not None:
        key["reader"] = reader
    plan = make_plan(data_root, cohort)
    with locked(folder):
        old = _read_manifest(folder)
        old_plan = None
        if old is not None and all(old.get(k, "fast") == v for k, v in key.items()):
            old_plan = pd.DataFrame(old["sources"]).astype({"dicom_id": str, "path": str, "split": str})
            if "bits" in plan and "bits" not in old_plan:
                old_plan["bits"] = 0
            plan = union_plan(old_plan, plan)   # another cohort's images stay, at their rows
        if old_plan is not None and same_sources(old_plan, plan):
            shutil.rmtree(folder / ".building", ignore_errors=True)  # a stale build of another cohort
            if not (old_plan["split"].to_numpy() == plan["split"].to_numpy()).all():
                # Same pixels, new splits: only the index and the training statistics change.
                status, width, height, reasons = old_state(folder, old_plan)
                images = np.load(folder / "images.npy", mmap_mode="r")
                counts = {"decoded": 0, "reused": len(plan), "failed": int((status == FAILED).sum())}
                publish(folder, key, plan, status, width, height, reasons, images, None, counts)
            cache = open_cache(cache_dir, size, resize, decode)
            cache.counts = {"decoded": 0, "reused": len(plan), "failed": len(cache.failures)}
            return _for_cohort(cache, cohort)
        build = Build(folder, plan, size, resize, decode, reader)
        try:
            if not build.resume():
                build.start()
            reused = reuse(build, folder, old_plan, progress) if old_plan is not None else 0
            build.save()
            decoded = decode_pending(build, data_root, workers, progress, flush_every)
            counts = {"decoded": decoded, "reused": reused, "failed": int((build.status == FAILED).sum())}
            publish(folder, key, plan, build.status, build.width, build.height, build.reasons, build.images,
                    build.images_path, counts)
        except OSError as error:   # any of the build's writes on a full disk: one line naming the cache
            full = disk_full(error, folder)
            if full is None:
                raise
            raise UserError(f"{folder}: writing the image cache failed, {full}; free some space or set cache_dir "
                            "to a larger disk, then rerun (the images decoded so far are kept)") from None
        build.images = None
        shutil.rmtree(build.dir, ignore_errors=True)
    cache = open_cache(cache_dir, size, resize, decode)
    cache.counts = counts
    return _for_cohort(cache, cohort)


def _for_cohort(cache: Cache, cohort: pd.DataFrame) -> Cache:
    """The cache as this cohort sees it: its own failures, and the statistics of its training images
    (a shared cache holds other cohorts' images too)."""
    ids = set(cohort["dicom_id"].astype(str))
    cache.failures = cache.failures[cache.failures["dicom_id"].isin(ids)].reset_index(drop=True)
    if not (cache.rows_for(cohort["dicom_id"]) >= 0).any():
        reasons = cache.failures["reason"].value_counts().to_dict()
        raise UserError(f"none of the {len(cohort)} cohort images could be decoded ({reasons}); is data_root "
                        f"the folder that holds files/? See {cache.dir / 'report.csv'}. Fetch the images with "
                        "`make fetch`, or point data_root at the MIMIC-CXR-JPG root.")
    cache.stats = cohort_stats(cache, cohort)
    if len(cache.failures):
        reasons = cache.failures["reason"].value_counts().to_dict()
        warnings.warn(f"{len(cache.failures)} of {len(cohort)} images could not be decoded and are "
                      f"left out of training and evaluation ({reasons}); see {cache.dir / 'report.csv'}.",
                      stacklevel=3)
    return cache


# --------------------------------------------------------------------------- command line

def cli(command: str, argv: list[str]) -> int:

    ap = argparse.ArgumentParser(prog="python -m cxrlib cache",
                                 description="Decode the cohort's JPEGs once into a resized uint8 cache.")
    ap.add_argument("--data-root", default="data/demo", help="MIMIC-CXR-JPG root holding files/")
    ap.add_argument("--cohort", required=True, help="cohort CSV (dicom_id, path, split, ...)")
    ap.add_argument("--size", "--image-size", dest="size", type=int, default=256, help="S of the S x S images")
    ap.add_argument("--resize", choices=RESIZE_MODES, default="squash")
    ap.add_argument("--decode", choices=DECODE_MODES, default="fast", help="fast (draft mode) or exact (the original's)")
    ap.add_argument("--cache-dir", default="", help="default: <data-root>/cache")
    ap.add_argument("--workers", "--cache-workers", dest="workers", type=int, default=0,
                    help="decoding processes (0: one per core)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary below says the same in one line
        cache = build_cache(args.data_root, read_cohort(args.cohort, REQUIRED_COLUMNS), args.size, args.resize,
                            args.cache_dir or None, args.workers, progress=not args.quiet, decode=args.decode)
    counts = cache.counts
    print(f"cache {cache.dir}: {len(cache)} images ({counts['decoded']} files decoded now, {counts['reused']} reused), "
          f"mean {cache.stats['mean']}, std {cache.stats['std']}")
    if len(cache.failures):
        print(f"{len(cache.failures)} image(s) could not be decoded and are left out; see {cache.dir / 'report.csv'}",
              file=sys.stderr)
    return 0
