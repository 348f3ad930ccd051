"""Download just the cohort's files of MIMIC-CXR-JPG from PhysioNet: credentialed, resumable, verified.

PhysioNet serves the release over HTTP basic auth at https://physionet.org/files/mimic-cxr-jpg/<version>/.
We fetch SHA256SUMS.txt and the four tables, then only the images a cohort needs (33,501 of 377,110
for the original project's), into MIMIC's own layout under the data root. transfer.py moves one file
(credentials, Range resume, SHA-256, retries); this module plans, runs workers, and remembers:
DIR/.cxrlib-verified.json keeps size+mtime+sha of verified files, so a rerun over 30k files does not
re-hash 50 GB.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..errors import UserError
from ..fsutil import atomic_write_json, sha256_file
from ..params import load, parse_override
from .checksums import download_list, server_gone, verified_checksums
from .cohort import build_cohort
from .release import DEFAULT_BASE_URL, DEFAULT_VERSION, GOLD_TABLE, SUMS, TABLES, gsutil_script, has_gold_labels
from .transfer import (
    Client,
    DiskFull,
    DiskFullError,
    Failed,
    ServerGone,
    Stopped,
    download,
    get_credentials,
)

log = logging.getLogger(__name__)

STATE = ".cxrlib-verified.json"
TYPICAL_IMAGE_BYTES = 1_500_000   # the release's average; sizes the ETA until real sizes are known
















@dataclass
class FetchSummary:
    downloaded: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)      # path -> reason
    bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self, what: str = "files", limit: int = 50) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines = [f"{what}: {len(self.downloaded)} downloaded ({self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s, "
                 f"{rate:.2f} MB/s), {len(self.skipped)} already complete, {len(self.failed)} failed"]
        lines += [f"  FAILED {path}: {reason}" for path, reason in list(self.failed.items())[:limit]]
        if len(self.failed) > limit:
            lines.append(f"  ... and {len(self.failed) - limit} more")
        return "\n".join(lines)










def _check_base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        raise UserError("--base-url must not contain a user name or password; use PHYSIONET_USERNAME and "
                        "PHYSIONET_PASSWORD, ~/.netrc or the prompt")
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise UserError(f"--base-url {url}: use an https:// URL (basic auth over plain http would expose "
                        "the password); plain http is accepted only for localhost")
    return url


def _clean_paths(paths, where: str) -> list[str]:
    """Release-relative posix paths, deduplicated; nothing may point outside the data root."""
    clean = {}
    for raw in paths:
        rel = PurePosixPath(str(raw).strip())
        if not str(raw).strip() or rel.is_absolute() or ".." in rel.parts or "\\" in str(raw):
            raise UserError(f"{where}: path {str(raw)!r} must be relative to the data root, like "
                            "files/p10/p10000032/s50414267/<dicom_id>.jpg")
        clean[str(rel)] = None
    return list(clean)


def _load_state(root: Path) -> dict:
    try:
        files = json.loads((root / STATE).read_text())["files"]
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}   # lost or damaged: files are simply hashed again


def _save_state(root: Path, state: dict) -> None:
    try:
        atomic_write_json(root / STATE, {"version": 1, "files": state})
    except OSError as e:
        log.warning("could not save %s (%s); the next run re-hashes existing files", root / STATE, e)


def _scan(root: Path, rels: list[str], sums: dict, state: dict, workers: int, progress: bool):
    """Split rels into complete files (skipped) and files to download; a corrupt file is deleted."""
    skipped, pending, to_hash = [], [], []
    for rel in rels:
        try:
            stat = (root / rel).stat()
        except FileNotFoundError:
            pending.append(rel)
            continue
        expected = sums.get(rel)
        if expected is None or state.get(rel) == [stat.st_size, stat.st_mtime_ns, expected]:
            skipped.append(rel)
        else:
            to_hash.append(rel)
    with ThreadPoolExecutor(workers) as pool:
        hashes = pool.map(sha256_file, [root / rel for rel in to_hash])
        for rel, sha in tqdm(zip(to_hash, hashes), total=len(to_hash), desc="verifying existing files",
                             unit="file", disable=not progress or not to_hash):
            if sha == sums[rel]:
                stat = (root / rel).stat()
                state[rel] = [stat.st_size, stat.st_mtime_ns, sha]
                skipped.append(rel)
            else:
                log.warning("%s does not match SHA256SUMS.txt: deleted, downloading it again", root / rel)
                (root / rel).unlink()
                state.pop(rel, None)
                pending.append(rel)
    return skipped, pending


def _disk_full(root: Path, remaining: int, mean_size: float) -> DiskFullError:
    free = shutil.disk_usage(root).free / 1e9
    need = remaining * mean_size / 1e9
    return DiskFullError(f"no space left on device under {root} ({free:.1f} GB free); free about {need:.1f} GB "
                         f"for the {remaining} files still to fetch (or use another --data-root), then rerun "
                         "the same command: it continues where it stopped")


def _download_all(client, root, pending, sums, state, summary, workers, progress, desc):
    lock = threading.Lock()
    sizes = []
    bar = tqdm(total=len(pending) * TYPICAL_IMAGE_BYTES, desc=desc, unit="B", unit_scale=True,
               unit_divisor=1024, disable=not progress)

    def count_bytes(n):
        with lock:
            bar.update(n)
            summary.bytes += n
    client.on_bytes = count_bytes

    def one(rel):
        try:
            return rel, download(client, root, rel, sums.get(rel)), None
        except Failed as e:
            return rel, None, str(e)
        except Stopped:    # the worker that set the flag raises the real error
            return rel, None, "stopped before it finished"

    def record(rel, result, reason):
        if reason:
            summary.failed[rel] = reason
        else:
            summary.downloaded.append(rel)
            state[rel] = list(result)
            sizes.append(result[0])
        done = len(summary.downloaded) + len(summary.failed)
        mean = sum(sizes) / len(sizes) if sizes else TYPICAL_IMAGE_BYTES
        failed = f", {len(summary.failed)} failed" if summary.failed else ""
        with lock:     # sizes are unknown up front: the byte total is re-estimated as files land
            bar.total = max(bar.n, int(bar.n + (len(pending) - done) * mean))
            bar.set_postfix_str(f"files {done}/{len(pending)}{failed}")

    pool = ThreadPoolExecutor(workers)
    try:
        # The first file alone checks the credentials before `workers` connections are opened.
        record(*one(pending[0]))
        futures = [pool.submit(one, rel) for rel in pending[1:]]
        for future in as_completed(futures):
            record(*future.result())
    except DiskFull:
        mean = sum(sizes) / len(sizes) if sizes else TYPICAL_IMAGE_BYTES
        raise _disk_full(root, len(pending) - len(summary.downloaded), mean) from None
    except ServerGone as e:
        raise server_gone(e, len(summary.downloaded), len(pending)) from None
    finally:
        client.stop.set()   # wakes sleeping retries; running transfers stop at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def fetch(data_root, paths, version: str = DEFAULT_VERSION, base_url: str | None = None, workers: int = 8,
          credentials=None, progress: bool = True, *, attempts: int = 6, backoff: float = 1.0,
          timeout: float = 60.0, desc: str = "images") -> FetchSummary:
    """Make every release-relative path in `paths` a complete, verified file under data_root.

    credentials: a Credentials, a callable returning one, or None to ask get_credentials() only
    when something must be downloaded. Fatal problems (401/403, a full disk) raise UserError;
    per-file problems (404, checksum mismatch twice, retries exhausted) land in summary.failed.
    """
    root = Path(data_root)
    if not 1 <= workers <= 64:
        raise UserError(f"--workers {workers}: use 1 to 64 parallel downloads (8 is a good start)")
    rels = _clean_paths(paths, "cohort")
    client = Client(_check_base_url(base_url or DEFAULT_BASE_URL.format(version=version)),
                     credentials, attempts, backoff, timeout)
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--data-root {root}: cannot create it ({e.strerror}); choose a writable folder") from None
    if not (root / SUMS).is_file():
        try:
            download_list(client, root, "Check --base-url/--version and your connection, then rerun")
        except DiskFull:
            raise _disk_full(root, len(rels) + 1, TYPICAL_IMAGE_BYTES) from None
    sums, unknown = verified_checksums(client, root, rels)
    state = _load_state(root)
    summary = FetchSummary()
    for rel in unknown:   # never kept unverified
        summary.failed[rel] = f"not listed in {SUMS} (fetched twice): cannot be verified, not downloaded"
    try:
        summary.skipped, pending = _scan(root, [r for r in rels if r in sums], sums, state, workers, progress)
        if pending:
            client.login()
            _download_all(client, root, pending, sums, state, summary, workers, progress, desc)
    finally:
        _save_state(root, state)
        summary.seconds = time.monotonic() - started
    return summary


def fetch_release_tables(data_root, version: str = DEFAULT_VERSION, base_url: str | None = None, workers: int = 4,
                         credentials=None, progress: bool = True, **kwargs) -> FetchSummary:
    """SHA256SUMS.txt, the four tables and, from 2.1.0 on, the radiologist labels.

    A table already unzipped to .csv counts as present.
    """
    root = Path(data_root)
    wanted = [t for t in TABLES if not (root / t[:-3]).is_file() or (root / t).is_file()]
    if has_gold_labels(version):
        wanted.append(GOLD_TABLE)
    return fetch(root, wanted, version, base_url, workers, credentials, progress, desc="tables", **kwargs)




def _cohort_paths(file) -> list[str]:
    path = Path(file)
    if not path.is_file():
        raise UserError(f"--cohort {path}: no such file. Give a CSV with a 'path' column, e.g. a run's cohort.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise UserError(f"--cohort {path}: no 'path' column (found {reader.fieldnames}); it should hold "
                            "paths like files/p10/p10000032/s50414267/<dicom_id>.jpg")
        return _clean_paths([row["path"] for row in reader], f"--cohort {path}")


def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxrlib fetch",
        description="Download MIMIC-CXR-JPG's tables, then only the cohort's images, resumably and verified "
                    "against SHA256SUMS.txt. Credentials: PHYSIONET_USERNAME/PHYSIONET_PASSWORD, ~/.netrc "
                    "(machine physionet.org) or a prompt.")
    parser.add_argument("--data-root", help="release root to fill (default with --params: its data_root)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--params", help="parameter file: the cohort is built from it once the tables are here")
    source.add_argument("--cohort", help="CSV with a 'path' column relative to the data root")
    parser.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of --params")
    parser.add_argument("--version", default=DEFAULT_VERSION,
                        help=f"release version (default {DEFAULT_VERSION}; 2.0.0 has no radiologist labels)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--base-url", help="mirror URL (default https://physionet.org/files/mimic-cxr-jpg/<version>/)")
    parser.add_argument("--print-gsutil", action="store_true",
                        help="print the equivalent Google Cloud bucket commands and exit (no network)")
    args = parser.parse_args(argv)

    params = None
    if args.params:
        params = load(args.params, dict(parse_override(o) for o in args.overrides))
    elif args.overrides:
        raise UserError("-p KEY=VALUE overrides need --params FILE")
    if not (args.data_root or params):
        raise UserError("fetch: give --data-root DIR (or --params FILE, whose data_root is used)")
    data_root = Path(args.data_root or params.data_root)

    given = _cohort_paths(args.cohort) if args.cohort else None   # bad input fails before any network use

    def cohort_paths() -> list[str]:
        if given is not None:
            return given
        if params is None:
            return []
        frame, _ = build_cohort(str(data_root), params)
        return _clean_paths(frame["path"].tolist(), f"cohort of {args.params}")

    if args.print_gsutil:
        have_tables = all((data_root / t).is_file() or (data_root / t[:-3]).is_file() for t in TABLES)
        print(gsutil_script(data_root, cohort_paths() if args.cohort or have_tables else [], args.version))
        return 0

    # One prompt at most, and only once something has to be downloaded.
    host = urllib.parse.urlsplit(args.base_url or DEFAULT_BASE_URL).hostname or "physionet.org"
    credentials = functools.cache(lambda: get_credentials(host))
    common = dict(version=args.version, base_url=args.base_url, credentials=credentials)

    tables = fetch_release_tables(data_root, workers=min(args.workers, 4), **common)
    print(tables.text("tables"))
    if GOLD_TABLE in tables.failed:   # only scores the model: the cohort does not need it
        print(f"warning: {GOLD_TABLE} could not be fetched ({tables.failed.pop(GOLD_TABLE)}); notebook 03 "
              "skips the radiologist-label section until a rerun fetches it", file=sys.stderr)
    if not tables.ok:
        print("the cohort needs these tables: fix the failures above and rerun", file=sys.stderr)
        return 1
    paths = cohort_paths()
    if not paths:
        print("no cohort given (--params or --cohort): fetched the tables only")
        return 0
    images = fetch(data_root, paths, workers=args.workers, **common)
    print(images.text("images"))
    if not images.ok:
        print(f"{len(images.failed)} file(s) failed (listed above); rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0
