"""Download just the cohort's files of MIMIC-CXR-JPG from PhysioNet: credentialed, resumable, verified.

PhysioNet serves the release over HTTP basic auth at https://physionet.org/files/mimic-cxr-jpg/<version>/.
We fetch SHA256SUMS.txt and the four tables, then only the images a cohort needs (33,501 of 377,110
for the original project's), into MIMIC's own layout under the data root.

- Credentials come from PHYSIONET_USERNAME/PHYSIONET_PASSWORD, ~/.netrc ($NETRC) or a prompt, never
  from parameters: papermill writes parameters into the executed notebooks. The password lives in a
  Credentials object whose repr hides it; the Authorization header is built per request.
- Each file streams into <file>.part, resumes with an HTTP Range request after a dropped connection,
  is checked against SHA256SUMS.txt and only then renamed into place: a file at its final path is a
  verified one. DIR/.cxrlib-verified.json remembers size+mtime+sha of verified files, so a rerun over
  30k files does not re-hash 50 GB.
"""
from __future__ import annotations

import argparse
import base64
import csv
import errno
import functools
import getpass
import http.client
import json
import logging
import netrc
import os
import random
import shlex
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .errors import UserError
from .fsutil import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://physionet.org/files/mimic-cxr-jpg/{version}/"
PROJECT_PAGE = "https://physionet.org/content/mimic-cxr-jpg/{version}/"
SUMS = "SHA256SUMS.txt"
# 2.1.0 kept the 2.0.0 table names; only its new test-set labels carry the new number.
TABLES = tuple(f"mimic-cxr-2.0.0-{kind}.csv.gz" for kind in ("metadata", "negbio", "chexpert", "split"))
STATE = ".cxrlib-verified.json"
CHUNK = 1 << 20
TYPICAL_IMAGE_BYTES = 1_500_000   # the release's average; sizes the ETA until real sizes are known
MAX_RETRY_AFTER_S = 300.0
TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


class Credentials:
    """A PhysioNet login. repr/str never show the password, and it refuses to be pickled."""
    __slots__ = ("username", "_secret")

    def __init__(self, username: str, password: str):
        self.username = username
        self._secret = password  # only ever read by authorization()

    def authorization(self) -> str:
        token = base64.b64encode(f"{self.username}:{self._secret}".encode()).decode()
        return "Basic " + token

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__

    def __reduce_ex__(self, protocol):
        raise TypeError("Credentials are never serialised")


def get_credentials(host: str = "physionet.org") -> Credentials:
    """PHYSIONET_USERNAME + PHYSIONET_PASSWORD, else the netrc entry for host, else a prompt on a TTY."""
    user, password = os.environ.get("PHYSIONET_USERNAME"), os.environ.get("PHYSIONET_PASSWORD")
    if user and password:
        return Credentials(user, password)
    netrc_file = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if netrc_file.is_file():
        try:
            entries = netrc.netrc(str(netrc_file))
        except (netrc.NetrcParseError, OSError) as e:
            # The parser's own message can quote a token (the password itself), so name only file and line.
            line = getattr(e, "lineno", None)
            raise UserError(f"{netrc_file}{f' line {line}' if line else ''}: not a readable netrc file. "
                            "Write 'machine physionet.org login USER password PASS' and chmod 600 it") from None
        entry = entries.authenticators(host) or entries.authenticators("physionet.org")
        if entry and entry[0] and entry[2]:
            return Credentials(entry[0], entry[2])
    if sys.stdin is not None and sys.stdin.isatty():
        user = user or input("PhysioNet username: ").strip()
        return Credentials(user, getpass.getpass(f"PhysioNet password for {user}: "))
    raise UserError("no PhysioNet credentials. Either set PHYSIONET_USERNAME and PHYSIONET_PASSWORD in the "
                    f"environment, or add 'machine physionet.org login USER password PASS' to {netrc_file} "
                    "(chmod 600), or run the command in a terminal to be asked. Never put them in parameters.")


class AuthError(UserError):
    """401/403: wrong credentials or the data use agreement is not signed."""


class DiskFullError(UserError):
    """No space left while writing a file."""


class _Failed(Exception):
    """This one file cannot be fetched; the message is the reason shown in the summary."""


class _Stopped(Exception):
    """Another worker hit a fatal error: give up quietly, keeping the .part for the next run."""


class _DiskFull(Exception):
    pass


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


def retry_delay(attempt: int, backoff: float, cap: float = 60.0, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins, within reason."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
    return random.uniform(0.0, min(cap, backoff * 2 ** attempt))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the Authorization header to another host or to plain http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        old, target = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new is not None and (old.scheme, old.netloc) != (target.scheme, target.netloc):
            new.headers.pop("Authorization", None)
        return new


class _Client:
    """HTTP for one fetch: base URL, credentials, retry policy and a stop flag the workers share."""

    def __init__(self, base_url, credentials, attempts, backoff, timeout):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.credentials = credentials          # a Credentials, or a callable that returns one
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self.stop = threading.Event()
        self.on_bytes = lambda n: None
        self.opener = urllib.request.build_opener(_SameHostRedirects())

    def login(self) -> None:
        """Resolve the credentials in the main thread, before any worker needs them (a prompt may ask)."""
        if not isinstance(self.credentials, Credentials):
            host = urllib.parse.urlsplit(self.base_url).hostname or "physionet.org"
            self.credentials = self.credentials() if callable(self.credentials) else get_credentials(host)

    def open(self, rel: str, offset: int):
        req = urllib.request.Request(self.base_url + urllib.parse.quote(rel),
                                     headers={"User-Agent": "cxrlib-fetch (python urllib)"})
        req.add_header("Authorization", self.credentials.authorization())
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        return self.opener.open(req, timeout=self.timeout)


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


def read_checksums(path) -> dict[str, str]:
    """SHA256SUMS.txt lines `<sha256> <path>` (one or two spaces, maybe a '*' for binary mode)."""
    path, sums = Path(path), {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise UserError(f"{path} line {number}: expected '<sha256> <relative path>'. "
                            "Delete the file and rerun fetch to download it again")
        sums[str(PurePosixPath(parts[1].lstrip("*")))] = parts[0].lower()
    return sums


def _content_range_start(value: str | None) -> int | None:
    try:   # "bytes 100-199/200"
        return int(value.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _stream(client: _Client, resp, part: Path, offset: int) -> None:
    """Write one response body into part: appended when the server honoured our Range, else from zero."""
    if offset and resp.status == 206 and _content_range_start(resp.headers.get("Content-Range")) != offset:
        part.unlink(missing_ok=True)
        raise http.client.HTTPException("the server sent a different byte range than asked; restarting")
    if resp.status != 206:
        offset = 0      # a 200 to a Range request is the whole file again
    length = resp.headers.get("Content-Length")
    received = 0
    try:
        with open(part, "ab" if offset else "wb") as f:
            while chunk := resp.read(CHUNK):
                if client.stop.is_set():
                    raise _Stopped
                f.write(chunk)
                received += len(chunk)
                client.on_bytes(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            part.unlink(missing_ok=True)
            raise _DiskFull from None
        raise
    if length is not None and length.isdigit() and received < int(length):
        # http.client returns b"" when the peer hangs up early; the .part keeps what arrived.
        raise http.client.IncompleteRead(b"", int(length) - received)


def _transfer(client: _Client, rel: str, part: Path) -> None:
    """Fetch rel into part, resuming what is there; transient errors are retried with backoff."""
    failures, last = 0, ""
    while failures < client.attempts:
        if client.stop.is_set():
            raise _Stopped
        offset = part.stat().st_size if part.exists() else 0
        retry_after = None
        try:
            with client.open(rel, offset) as resp:
                _stream(client, resp, part, offset)
            return
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in (401, 403):
                client.stop.set()
                raise AuthError(
                    f"PhysioNet refused the credentials for {client.base_url} (HTTP {e.code}): either the user "
                    "name or password is wrong, or this account has not signed the MIMIC-CXR-JPG data use "
                    "agreement on https://physionet.org/content/mimic-cxr-jpg/ (credentialed access). Fix "
                    "PHYSIONET_USERNAME/PHYSIONET_PASSWORD or ~/.netrc and rerun") from None
            if e.code == 404:
                raise _Failed("not on the server (HTTP 404): check --version and the cohort's paths") from None
            if e.code == 416:
                return      # the .part already holds the whole file; the checksum decides
            if e.code not in (408, 429) and e.code < 500:
                raise _Failed(f"HTTP {e.code} {e.reason}") from None
            last, retry_after = f"HTTP {e.code} {e.reason}", parse_retry_after(e.headers.get("Retry-After"))
        except TRANSIENT as e:
            last = f"{type(e).__name__}: {e}"
        progressed = part.exists() and part.stat().st_size > offset
        failures = 0 if progressed else failures + 1    # resuming a flaky connection is not a failure
        if failures < client.attempts:
            client.stop.wait(retry_delay(failures, client.backoff, retry_after=retry_after))
    raise _Failed(f"gave up after {client.attempts} attempts ({last})")


def _download(client: _Client, root: Path, rel: str, expected: str | None) -> tuple[int, int, str]:
    """One file to its final path, verified; returns (size, mtime_ns, sha256) for the verified state."""
    dest = root / rel
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):      # a checksum mismatch gets one fresh download from zero
        _transfer(client, rel, part)
        sha = sha256_file(part)
        if expected is None or sha == expected:
            os.replace(part, dest)
            stat = dest.stat()
            return stat.st_size, stat.st_mtime_ns, sha
        part.unlink()
    raise _Failed(f"checksum mismatch twice (SHA256SUMS.txt says {expected[:12]}..., got {sha[:12]}...)")


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
            return rel, _download(client, root, rel, sums.get(rel)), None
        except _Failed as e:
            return rel, None, str(e)
        except _Stopped:    # the worker that set the flag raises the real error
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
    except _DiskFull:
        mean = sum(sizes) / len(sizes) if sizes else TYPICAL_IMAGE_BYTES
        raise _disk_full(root, len(pending) - len(summary.downloaded), mean) from None
    finally:
        client.stop.set()   # wakes sleeping retries; running transfers stop at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def fetch(data_root, paths, version: str = "2.0.0", base_url: str | None = None, workers: int = 8,
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
    client = _Client(_check_base_url(base_url or DEFAULT_BASE_URL.format(version=version)),
                     credentials, attempts, backoff, timeout)
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--data-root {root}: cannot create it ({e.strerror}); choose a writable folder") from None
    if not (root / SUMS).is_file():
        client.login()
        try:
            _download(client, root, SUMS, None)
        except _Failed as e:
            raise UserError(f"could not download {client.base_url}{SUMS}: {e}. Check --base-url/--version "
                            "and your connection, then rerun") from None
        except _DiskFull:
            raise _disk_full(root, len(rels) + 1, TYPICAL_IMAGE_BYTES) from None
    sums = read_checksums(root / SUMS)
    unknown = [rel for rel in rels if rel not in sums]
    if unknown:
        log.warning("%d of %d files are not listed in %s (e.g. %s): they are downloaded but not verified",
                    len(unknown), len(rels), root / SUMS, unknown[0])
    state = _load_state(root)
    summary = FetchSummary()
    try:
        summary.skipped, pending = _scan(root, rels, sums, state, workers, progress)
        if pending:
            client.login()
            _download_all(client, root, pending, sums, state, summary, workers, progress, desc)
    finally:
        _save_state(root, state)
        summary.seconds = time.monotonic() - started
    return summary


def fetch_release_tables(data_root, version: str = "2.0.0", base_url: str | None = None, workers: int = 4,
                         credentials=None, progress: bool = True, **kwargs) -> FetchSummary:
    """SHA256SUMS.txt and the four tables; a table already unzipped to .csv counts as present."""
    root = Path(data_root)
    wanted = [t for t in TABLES if not (root / t[:-3]).is_file() or (root / t).is_file()]
    return fetch(root, wanted, version, base_url, workers, credentials, progress, desc="tables", **kwargs)


def gsutil_script(data_root, paths, version: str = "2.0.0") -> str:
    """A bash script that copies the tables and `paths` from PhysioNet's Google Cloud bucket."""
    dest = shlex.quote(str(data_root).rstrip("/") or ".")
    lines = [
        "#!/usr/bin/env bash",
        f"# MIMIC-CXR-JPG {version} from PhysioNet's Google Cloud bucket, keeping the release's layout.",
        f"# 1. Request cloud access on {PROJECT_PAGE.format(version=version)} and copy the bucket name shown",
        "#    there. The bucket is 'requester pays': your Google Cloud project is billed for the transfer.",
        "# 2. Replace the two placeholders below, then run this script (needs gsutil from the Google Cloud SDK).",
        "set -euo pipefail",
        "PROJECT='<your-gcp-project>'",
        "BUCKET='gs://<bucket-from-physionet-page>'",
        "case \"$PROJECT$BUCKET\" in *'<'*) echo 'edit PROJECT and BUCKET at the top of this script' >&2; exit 1;; esac",
        f"mkdir -p {dest}",
        f"gsutil -u \"$PROJECT\" -m cp \"$BUCKET/{SUMS}\" "
        + " ".join(f"\"$BUCKET/{t}\"" for t in TABLES) + f" {dest}/",
    ]
    if paths:
        lines += [
            f"# The cohort's {len(paths)} images, 8 at a time; gsutil cp would flatten folders, so one copy per file.",
            "xargs -P 8 -n 1 sh -c 'mkdir -p \"$(dirname \"$3/$4\")\" && "
            f"gsutil -q -u \"$1\" cp \"$2/$4\" \"$3/$4\"' sh \"$PROJECT\" \"$BUCKET\" {dest} <<'EOF'",
            *paths,
            "EOF",
        ]
    else:
        lines.append("# The tables are enough to build the cohort: run the same fetch --print-gsutil again for "
                     "the image list.")
    lines.append(f"# 3. Verify everything against {SUMS} (and fetch what is missing): "
                 f"python -m cxrlib fetch --data-root {dest} ...")
    return "\n".join(lines)


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
    parser.add_argument("--version", default="2.0.0", help="release version (default 2.0.0)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--base-url", help="mirror URL (default https://physionet.org/files/mimic-cxr-jpg/<version>/)")
    parser.add_argument("--print-gsutil", action="store_true",
                        help="print the equivalent Google Cloud bucket commands and exit (no network)")
    args = parser.parse_args(argv)

    params = None
    if args.params:
        from .params import load, parse_override
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
        from .cohort import build_cohort
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
