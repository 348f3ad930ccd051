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
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm

from .decode import DECODE_MODES, RESAMPLE, RESIZE_MODES, decode_one, ignore_sigint
from .errors import UserError
from .fsutil import atomic_write_bytes, atomic_write_csv, atomic_write_json

CACHE_VERSION = 1
FLUSH_EVERY = 256          # images between progress checkpoints: at most this much work is lost to a kill
COPY_CHUNK = 512           # rows per copy from an older cache
PENDING, OK, FAILED = 0, 1, 2
REQUIRED_COLUMNS = ("dicom_id", "path", "split")













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


# --------------------------------------------------------------------------- planning a build

def _plan(data_root: Path, cohort: pd.DataFrame) -> pd.DataFrame:
    """One row per image in dicom_id order, with the source file's size and mtime (-1: missing)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in cohort.columns]
    if missing:
        raise UserError(f"the cohort table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)} "
                        "(write it with `python -m cxrlib cohort` or notebook 01).")
    if len(cohort) == 0:
        raise UserError("the cohort table has no images; check the cohort parameters (views, data_root).")
    plan = cohort[list(REQUIRED_COLUMNS)].astype(str).drop_duplicates()
    clash = plan["dicom_id"].duplicated(keep=False)
    if clash.any():
        raise UserError(f"the cohort table gives dicom_id {plan.loc[clash, 'dicom_id'].iloc[0]!r} two different "
                        "paths or splits; each image must appear once.")
    plan = plan.sort_values("dicom_id", kind="stable").reset_index(drop=True)
    sizes, mtimes = [], []
    for rel in plan["path"]:
        try:
            st = os.stat(data_root / rel)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    plan["bytes"] = np.asarray(sizes, dtype=np.int64)
    plan["mtime_ns"] = np.asarray(mtimes, dtype=np.int64)
    return plan


def _same_sources(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    columns = ["dicom_id", "path", "bytes", "mtime_ns"]
    return len(a) == len(b) and all((a[c].to_numpy() == b[c].to_numpy()).all() for c in columns)


def _read_plan(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"dicom_id": str, "path": str, "split": str})
    except (OSError, ValueError):
        return None


class _Build:
    """The state of one build in <final>/.building/: the images file and which rows are done."""

    def __init__(self, folder: Path, plan: pd.DataFrame, size: int, resize: str, decode: str):
        self.dir = folder / ".building"
        self.plan, self.size, self.resize, self.decode = plan, size, resize, decode
        n = len(plan)
        self.status = np.zeros(n, np.int8)
        self.width = np.zeros(n, np.int32)
        self.height = np.zeros(n, np.int32)
        self.reasons: dict[str, str] = {}
        self.images: np.memmap | None = None

    @property
    def images_path(self) -> Path:
        return self.dir / "images.npy"

    def key(self) -> dict:
        return {"cache_version": CACHE_VERSION, "size": self.size, "resize": self.resize, "decode": self.decode}

    def resume(self) -> bool:
        """Continue an interrupted build of the same images; False if there is none that matches."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
            progress = np.load(self.dir / "progress.npz")
            reasons = json.loads((self.dir / "failures.json").read_text())
            images = open_memmap(self.images_path, mode="r+")
        except (OSError, ValueError):
            return False
        old_plan = _read_plan(self.dir / "plan.csv")
        expected = self.key()
        if (any(state.get(k) != v for k, v in expected.items()) or old_plan is None
                or not _same_sources(old_plan, self.plan) or images.shape != (len(self.plan), self.size, self.size)):
            return False
        self.status, self.width, self.height = progress["status"], progress["width"], progress["height"]
        self.reasons, self.images = reasons, images
        return True

    def start(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        shape = (len(self.plan), self.size, self.size)
        need = int(np.prod(shape))
        free = shutil.disk_usage(self.dir).free
        if need > free:
            raise UserError(f"the cache needs {need / 1e9:.1f} GB but {self.dir} has {free / 1e9:.1f} GB free; "
                            "free some space or set cache_dir (--cache-dir) to a larger disk.")
        self.images = open_memmap(self.images_path, mode="w+", dtype=np.uint8, shape=shape)
        atomic_write_csv(self.dir / "plan.csv", self.plan)
        atomic_write_json(self.dir / "state.json", self.key())
        self.save()

    def save(self) -> None:
        """Checkpoint: pixels reach the disk before the rows that hold them are marked done."""
        self.images.flush()
        atomic_write_json(self.dir / "failures.json", self.reasons)
        buffer = io.BytesIO()
        np.savez(buffer, status=self.status, width=self.width, height=self.height)
        atomic_write_bytes(self.dir / "progress.npz", buffer.getvalue())

    def record(self, row: int, pixels, reason, source) -> None:
        if pixels is not None:
            self.images[row] = pixels
            self.status[row] = OK
            self.width[row], self.height[row] = source
        else:
            self.status[row] = FAILED
            self.reasons[self.plan["dicom_id"].iat[row]] = reason


def _old_state(folder: Path, old_plan: pd.DataFrame):
    """Status, width, height and failure reasons of a complete cache, per row of its plan."""
    index = pd.read_csv(folder / "index.csv", dtype={"dicom_id": str, "path": str, "split": str})
    report = pd.read_csv(folder / "report.csv", dtype=str)
    n = len(old_plan)
    status, width, height = np.zeros(n, np.int8), np.zeros(n, np.int32), np.zeros(n, np.int32)
    rows = index["row"].to_numpy(dtype=np.int64)
    status[rows] = OK
    width[rows], height[rows] = index["width"].to_numpy(), index["height"].to_numpy()
    failed = pd.Index(old_plan["dicom_id"]).get_indexer(report["dicom_id"])
    status[failed[failed >= 0]] = FAILED
    return status, width, height, dict(zip(report["dicom_id"], report["reason"]))


def _reuse(build: _Build, folder: Path, old_plan: pd.DataFrame, progress: bool) -> int:
    """Fill pending rows from the last complete cache where the source file did not change."""
    status, width, height, reasons = _old_state(folder, old_plan)
    keys = ["dicom_id", "path", "bytes", "mtime_ns"]
    old = old_plan[keys].assign(old_row=np.arange(len(old_plan)))
    new = build.plan[keys].assign(new_row=np.arange(len(build.plan)))[build.status == PENDING]
    both = new.merge(old, on=keys, how="inner")
    new_rows, old_rows = both["new_row"].to_numpy(), both["old_row"].to_numpy()
    good = status[old_rows] == OK
    old_images = np.load(folder / "images.npy", mmap_mode="r")
    copy_new, copy_old = new_rows[good], old_rows[good]
    for start in tqdm(range(0, len(copy_new), COPY_CHUNK), desc="reusing cached rows", disable=not progress,
                      leave=False):
        chunk = slice(start, start + COPY_CHUNK)
        build.images[copy_new[chunk]] = old_images[copy_old[chunk]]
    build.status[copy_new] = OK
    build.width[copy_new], build.height[copy_new] = width[copy_old], height[copy_old]
    bad_new, bad_old = new_rows[status[old_rows] == FAILED], old_rows[status[old_rows] == FAILED]
    build.status[bad_new] = FAILED
    for dicom_id in old_plan["dicom_id"].to_numpy()[bad_old]:
        build.reasons[dicom_id] = reasons[dicom_id]
    return len(new_rows)


@contextlib.contextmanager
def _mapper(workers: int):
    """`imap(decode_one, tasks)`: in this process for one worker, else a process pool."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.Pool(workers, initializer=ignore_sigint) as pool:
        yield lambda fn, tasks: pool.imap_unordered(fn, tasks, chunksize=4)


def _decode_pending(build: _Build, data_root: Path, workers: int, progress: bool, flush_every: int) -> int:
    pending = np.flatnonzero(build.status == PENDING)
    paths = build.plan["path"].to_numpy()
    tasks = ((int(row), str(data_root / paths[row]), build.size, build.resize, build.decode) for row in pending)
    bar = tqdm(total=len(build.plan), initial=len(build.plan) - len(pending), unit="img", disable=not progress,
               desc=f"decoding into {build.dir.parent.name}")
    done = 0
    try:
        with _mapper(min(workers, max(1, len(pending)))) as imap:
            for result in imap(decode_one, tasks):
                build.record(*result)
                done += 1
                bar.update()
                if done % flush_every == 0:
                    build.save()
    finally:
        build.save()
        bar.close()
    return done


def pixel_stats(images: np.ndarray, rows: np.ndarray) -> dict:
    """Mean and std of the pixels (scaled to [0, 1]) of the given rows, exact via a histogram."""
    histogram = np.zeros(256, np.int64)
    for start in range(0, len(rows), COPY_CHUNK):
        histogram += np.bincount(np.asarray(images[rows[start:start + COPY_CHUNK]]).ravel(), minlength=256)
    count = int(histogram.sum())
    if count == 0:
        return {"mean": None, "std": None, "images": 0, "pixels": 0, "split": "train"}
    values = np.arange(256) / 255.0
    mean = float((histogram * values).sum() / count)
    std = float(np.sqrt((histogram * (values - mean) ** 2).sum() / count))
    return {"mean": mean, "std": std, "images": int(len(rows)), "pixels": count, "split": "train"}


def _publish(folder: Path, key: dict, plan: pd.DataFrame, status, width, height, reasons: dict,
             images: np.ndarray, images_source: Path | None, counts: dict) -> None:
    """Write the final files; manifest.json goes first out and last in, so readers never mix builds."""
    ok = np.flatnonzero(status == OK)
    index = plan.loc[ok, ["dicom_id", "path", "split"]].reset_index(drop=True)
    index.insert(1, "row", ok)
    index["width"], index["height"] = width[ok], height[ok]
    bad = plan.loc[status == FAILED, ["dicom_id", "path"]].reset_index(drop=True)
    bad["reason"] = [reasons.get(d, "unknown") for d in bad["dicom_id"]]
    train = ok[plan["split"].to_numpy()[ok] == "train"]
    stats = pixel_stats(images, train)
    manifest = {
        **key,
        "size": int(key["size"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": int(len(plan)),
        "images": int(len(ok)),
        "failed": int(len(bad)),
        "last_build": counts,
        "decoder": {"pillow": Image.__version__, "draft": key["decode"] == "fast", "resample": RESAMPLE.name.lower()},
        "sources": plan[["dicom_id", "path", "split", "bytes", "mtime_ns"]].to_dict(orient="list"),
    }
    (folder / "manifest.json").unlink(missing_ok=True)
    if images_source is not None:
        # A hard link keeps the build's copy, so a crash before the manifest can finish again on rerun.
        staged = folder / ".images.npy.tmp"
        staged.unlink(missing_ok=True)
        try:
            os.link(images_source, staged)
        except OSError:
            os.replace(images_source, staged)
        os.replace(staged, folder / "images.npy")
    atomic_write_csv(folder / "index.csv", index)
    atomic_write_csv(folder / "report.csv", bad)
    atomic_write_json(folder / "stats.json", stats)
    atomic_write_json(folder / "manifest.json", manifest)


@contextlib.contextmanager
def _locked(folder: Path):
    """One build per cache folder at a time (two notebooks could start the same build)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        try:
            import fcntl
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # e.g. two presets started at once on one machine: the second reuses the first's work
                print(f"another process is building the cache in {folder}; waiting for it...", flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # no fcntl (Windows) or no locks on this filesystem (some NFS): go on unlocked
        yield


def build_cache(data_root, cohort: pd.DataFrame, size: int = 256, resize: str = "squash", cache_dir=None,
                workers: int = 0, progress: bool = True, flush_every: int = FLUSH_EVERY, decode: str = "fast") -> Cache:
    """Decode the cohort's images into <cache_dir>/<size>_<resize>[_exact]/ (only what is not there yet).

    workers: processes for decoding; 0 means one per available core, 1 decodes in this process.
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
    plan = _plan(data_root, cohort)
    with _locked(folder):
        old = _read_manifest(folder)
        old_plan = None
        if old is not None and all(old.get(k, "fast") == v for k, v in key.items()):
            old_plan = pd.DataFrame(old["sources"]).astype({"dicom_id": str, "path": str, "split": str})
        if old_plan is not None and _same_sources(old_plan, plan):
            shutil.rmtree(folder / ".building", ignore_errors=True)  # a stale build of another cohort
            if not (old_plan["split"].to_numpy() == plan["split"].to_numpy()).all():
                # Same pixels, new splits: only the index and the training statistics change.
                status, width, height, reasons = _old_state(folder, old_plan)
                images = np.load(folder / "images.npy", mmap_mode="r")
                counts = {"decoded": 0, "reused": len(plan), "failed": int((status == FAILED).sum())}
                _publish(folder, key, plan, status, width, height, reasons, images, None, counts)
            cache = open_cache(cache_dir, size, resize, decode)
            cache.counts = {"decoded": 0, "reused": len(plan), "failed": len(cache.failures)}
            return _warn_failures(cache)
        build = _Build(folder, plan, size, resize, decode)
        if not build.resume():
            build.start()
        reused = _reuse(build, folder, old_plan, progress) if old_plan is not None else 0
        build.save()
        decoded = _decode_pending(build, data_root, workers, progress, flush_every)
        counts = {"decoded": decoded, "reused": reused, "failed": int((build.status == FAILED).sum())}
        _publish(folder, key, plan, build.status, build.width, build.height, build.reasons, build.images,
                 build.images_path, counts)
        build.images = None
        shutil.rmtree(build.dir, ignore_errors=True)
    cache = open_cache(cache_dir, size, resize, decode)
    cache.counts = counts
    return _warn_failures(cache)


def _warn_failures(cache: Cache) -> Cache:
    if len(cache) == 0:
        reasons = cache.failures["reason"].value_counts().to_dict()
        raise UserError(f"none of the {len(cache.failures)} cohort images could be decoded ({reasons}); is data_root "
                        f"the folder that holds files/? See {cache.dir / 'report.csv'}. Fetch the images with "
                        "`make fetch`, or point data_root at the MIMIC-CXR-JPG root.")
    if len(cache.failures):
        reasons = cache.failures["reason"].value_counts().to_dict()
        warnings.warn(f"{len(cache.failures)} of {cache.manifest['rows']} images could not be decoded and are "
                      f"left out of training and evaluation ({reasons}); see {cache.dir / 'report.csv'}.",
                      stacklevel=3)
    return cache


# --------------------------------------------------------------------------- command line

def cli(command: str, argv: list[str]) -> int:
    from .cohort import read_cohort

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
