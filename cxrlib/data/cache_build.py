"""The cache build's machinery: plan, resumable state in .building/, reuse of an older build, decoding
workers, publishing, and one build per folder at a time. cache.build_cache drives it.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError
from ..fsutil import atomic_write_bytes, atomic_write_csv, atomic_write_json, disk_full, size_text
from ..progress import bar as progress_bar
from ..progress import is_batch
from .decode import RESAMPLE, decode_one, ignore_sigint

CACHE_VERSION = 1
COPY_CHUNK = 512           # rows per copy from an older cache
PENDING, OK, FAILED = 0, 1, 2
REQUIRED_COLUMNS = ("dicom_id", "path", "split")


def make_plan(data_root: Path, cohort: pd.DataFrame) -> pd.DataFrame:
    """One row per image in dicom_id order, with the source file's size and mtime (-1: missing)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in cohort.columns]
    if missing:
        raise UserError(f"the cohort table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)} "
                        "(write it with `python -m cxrlib cohort` or notebook 01).")
    if len(cohort) == 0:
        raise UserError("the cohort table has no images; check the cohort parameters (views, data_root).")
    # An external source's table may carry `bits` (stored bits per pixel, PadChest's 16-bit PNGs): the decoder's.
    plan = cohort[list(REQUIRED_COLUMNS)].astype(str)
    if "bits" in cohort:
        plan["bits"] = pd.to_numeric(cohort["bits"], errors="coerce").fillna(0).astype(np.int64).to_numpy()
    plan = plan.drop_duplicates()
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


def union_plan(old_plan: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    """The rows a shared cache keeps: every image it held, at its row, then this cohort's new images.

    Rows are never evicted or moved, so a run that read the index earlier (another cohort, training now)
    still finds its images at their rows in any later images.npy. This cohort's rows take its current
    path, split and file size and mtime (a changed file is decoded again, at the same row).
    """
    fresh = plan.set_index("dicom_id")
    old = old_plan.set_index("dicom_id")[plan.columns.drop("dicom_id")].copy()
    shared = old.index.intersection(fresh.index)
    old.loc[shared] = fresh.loc[shared, old.columns]
    added = fresh.loc[fresh.index.difference(old.index)].sort_index()
    union = pd.concat([old, added]).rename_axis("dicom_id").reset_index()
    return union.astype({"bytes": np.int64, "mtime_ns": np.int64})


def source_keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """What makes a cached row the decoding of a file: the file (path, size, mtime) and, for an external source's
    16-bit images, the bit depth it was scaled by (a changed depth must decode again)."""
    return ["dicom_id", "path", "bytes", "mtime_ns"] + (["bits"] if "bits" in a and "bits" in b else [])


def same_sources(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return len(a) == len(b) and all((a[c].to_numpy() == b[c].to_numpy()).all() for c in source_keys(a, b))


def read_plan(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"dicom_id": str, "path": str, "split": str})
    except (OSError, ValueError):
        return None


def reserve(path: Path) -> None:
    """Give the memory-mapped image file its blocks now: open_memmap makes it sparse, and writing pixels into
    a sparse file on a full disk kills the process with SIGBUS (no message, a dead kernel). Reserved up front,
    a full disk is one line here, before any decoding."""
    if not hasattr(os, "posix_fallocate"):   # macOS: the free-space check before the build is what there is
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):   # a filesystem that cannot reserve
                return
            full = disk_full(error, path.parent)
            if full is None:
                raise
            raise UserError(f"{path}: the image cache needs {size_text(size)} and {full}; free some space or set "
                            "cache_dir to a larger disk, then rerun (the images decoded so far are kept)") from None


class Build:
    """The state of one build in <final>/.building/: the images file and which rows are done."""

    def __init__(self, folder: Path, plan: pd.DataFrame, size: int, resize: str, decode: str,
                 reader: dict | None = None):
        self.dir = folder / ".building"
        self.plan, self.size, self.resize, self.decode = plan, size, resize, decode
        self.reader = reader     # an external source's: formats, equalize (None: MIMIC's JPEGs)
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
        key = {"cache_version": CACHE_VERSION, "size": self.size, "resize": self.resize, "decode": self.decode}
        return key if self.reader is None else {**key, "reader": self.reader}

    def resume(self) -> bool:
        """Continue an interrupted build of the same images; False if there is none that matches."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
            progress = np.load(self.dir / "progress.npz")
            reasons = json.loads((self.dir / "failures.json").read_text())
            images = open_memmap(self.images_path, mode="r+")
        except (OSError, ValueError):
            return False
        old_plan = read_plan(self.dir / "plan.csv")
        expected = self.key()
        if (any(state.get(k) != v for k, v in expected.items()) or old_plan is None
                or not same_sources(old_plan, self.plan) or images.shape != (len(self.plan), self.size, self.size)):
            return False
        self.status, self.width, self.height = progress["status"], progress["width"], progress["height"]
        self.reasons, self.images = reasons, images
        reserve(self.images_path)   # a build from before reservations, or a file left sparse
        return True

    def start(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        shape = (len(self.plan), self.size, self.size)
        need = int(np.prod(shape))
        free = shutil.disk_usage(self.dir).free
        if need > free:
            raise UserError(f"the cache needs {size_text(need)} but {self.dir} has {size_text(free)} free; "
                            "free some space or set cache_dir (--cache-dir) to a larger disk.")
        self.images = open_memmap(self.images_path, mode="w+", dtype=np.uint8, shape=shape)
        reserve(self.images_path)
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


def old_state(folder: Path, old_plan: pd.DataFrame):
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


def reuse(build: Build, folder: Path, old_plan: pd.DataFrame, progress: bool) -> int:
    """Fill pending rows from the last complete cache where the source file did not change."""
    status, width, height, reasons = old_state(folder, old_plan)
    keys = source_keys(old_plan, build.plan)
    old = old_plan[keys].assign(old_row=np.arange(len(old_plan)))
    new = build.plan[keys].assign(new_row=np.arange(len(build.plan)))[build.status == PENDING]
    both = new.merge(old, on=keys, how="inner")
    new_rows, old_rows = both["new_row"].to_numpy(), both["old_row"].to_numpy()
    good = status[old_rows] == OK
    old_images = np.load(folder / "images.npy", mmap_mode="r")
    copy_new, copy_old = new_rows[good], old_rows[good]
    for start in tqdm(range(0, len(copy_new), COPY_CHUNK), desc="reusing cached rows",
                      disable=not progress or is_batch(), leave=False):
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
def mapper(workers: int):
    """`imap(decode_one, tasks)`: in this process for one worker, else a process pool."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.Pool(workers, initializer=ignore_sigint) as pool:
        yield lambda fn, tasks: pool.imap_unordered(fn, tasks, chunksize=4)


def decode_pending(build: Build, data_root: Path, workers: int, progress: bool, flush_every: int) -> int:
    pending = np.flatnonzero(build.status == PENDING)
    paths = build.plan["path"].to_numpy()
    bits = build.plan["bits"].to_numpy() if "bits" in build.plan else np.zeros(len(paths), np.int64)
    tasks = ((int(row), str(data_root / paths[row]), build.size, build.resize, build.decode, build.reader,
              int(bits[row])) for row in pending)
    bar = progress_bar(len(build.plan), f"cache {build.dir.parent.name}", "images",
                       initial=len(build.plan) - len(pending), enabled=progress)
    done = 0
    try:
        with mapper(min(workers, max(1, len(pending)))) as imap:
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


def cohort_stats(cache, cohort: pd.DataFrame) -> dict:
    """Pixel mean and std of this cohort's training images: a shared cache also holds other cohorts'."""
    rows = cache.rows_for(cohort.loc[cohort["split"].astype(str) == "train", "dicom_id"])
    images = np.load(cache.images_path, mmap_mode="r")
    return pixel_stats(images, np.sort(rows[rows >= 0]))


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


def publish(folder: Path, key: dict, plan: pd.DataFrame, status, width, height, reasons: dict,
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
        "sources": plan.to_dict(orient="list"),
    }
    # The old manifest stays until the new one replaces it: rows only grow (union_plan), so a reader that
    # meets the new images.npy with the old index finds every one of its rows where they were.
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
def locked(folder: Path):
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
