"""PhysioNet credentials and one file's credentialed, resumable, verified transfer (used by physionet.py).

- Credentials come from PHYSIONET_USERNAME/PHYSIONET_PASSWORD, ~/.netrc ($NETRC) or a prompt, never
  from parameters: papermill writes parameters into the executed notebooks. The password lives in a
  Credentials object whose repr hides it; the Authorization header is built per request.
- A file streams into <file>.part, resumes with an HTTP Range request after a dropped connection,
  is checked against its SHA-256 and only then renamed into place: a file at its final path is a
  verified one. Transient errors are retried with backoff and jitter (Retry-After honoured).
"""
from __future__ import annotations

import base64
import errno
import getpass
import http.client
import logging
import netrc
import os
import random
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path

from ..errors import UserError
from ..fsutil import sha256_file

log = logging.getLogger("cxrlib.data.physionet")


CHUNK = 1 << 20


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


class Failed(Exception):
    """This one file cannot be fetched; the message is the reason shown in the summary."""


class Stopped(Exception):
    """Another worker hit a fatal error: give up quietly, keeping the .part for the next run."""


class DiskFull(Exception):
    pass


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


# Connection failures in a row, across all files and workers, with no answer from the server in between:
# then it is gone (down, or the network is), and waiting out every file's retries would take hours.
SERVER_GONE_AFTER = 4


class ServerGone(Exception):
    pass


class Client:
    """HTTP for one fetch: base URL, credentials, retry policy and a stop flag the workers share."""

    def __init__(self, base_url, credentials, attempts, backoff, timeout):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.credentials = credentials          # a Credentials, or a callable that returns one
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self.stop = threading.Event()
        self.unanswered = 0                     # connection failures in a row, all workers together
        self.lock = threading.Lock()
        self.on_bytes = lambda n: None
        self.opener = urllib.request.build_opener(_SameHostRedirects())

    def answered(self) -> None:
        with self.lock:
            self.unanswered = 0

    def unreachable(self, error: str) -> None:
        """Count a connection that got no answer; at SERVER_GONE_AFTER in a row, stop every worker."""
        with self.lock:
            self.unanswered += 1
            gone = self.unanswered >= SERVER_GONE_AFTER
        if gone:
            self.stop.set()
            raise ServerGone(f"{urllib.parse.urlsplit(self.base_url).netloc} did not answer {SERVER_GONE_AFTER} "
                             f"connections in a row ({error})")

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


PROJECT_NAMES = {"mimic-cxr-jpg": "MIMIC-CXR-JPG", "mimiciv": "MIMIC-IV"}


def project_of(base_url: str) -> tuple[str, str]:
    """(project name, its PhysioNet page) from a .../files/<project>/<version>/ URL."""
    parts = urllib.parse.urlsplit(base_url).path.strip("/").split("/")
    slug = parts[1] if len(parts) > 1 and parts[0] == "files" else "mimic-cxr-jpg"
    return PROJECT_NAMES.get(slug, slug), f"https://physionet.org/content/{slug}/"


def content_range_start(value: str | None) -> int | None:
    try:   # "bytes 100-199/200"
        return int(value.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def stream_into(client: Client, resp, part: Path, offset: int) -> None:
    """Write one response body into part: appended when the server honoured our Range, else from zero."""
    if offset and resp.status == 206 and content_range_start(resp.headers.get("Content-Range")) != offset:
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
                    raise Stopped
                f.write(chunk)
                received += len(chunk)
                client.on_bytes(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            part.unlink(missing_ok=True)
            raise DiskFull from None
        raise
    if length is not None and length.isdigit() and received < int(length):
        # http.client returns b"" when the peer hangs up early; the .part keeps what arrived.
        raise http.client.IncompleteRead(b"", int(length) - received)


def transfer_file(client: Client, rel: str, part: Path) -> None:
    """Fetch rel into part, resuming what is there; transient errors are retried with backoff."""
    failures, last = 0, ""
    while failures < client.attempts:
        if client.stop.is_set():
            raise Stopped
        offset = part.stat().st_size if part.exists() else 0
        retry_after = None
        try:
            with client.open(rel, offset) as resp:
                client.answered()
                stream_into(client, resp, part, offset)
            return
        except urllib.error.HTTPError as e:
            e.close()
            client.answered()
            if e.code in (401, 403):
                client.stop.set()
                name, page = project_of(client.base_url)
                also = (" MIMIC-IV is a separate credentialed project: access to MIMIC-CXR-JPG does not "
                        "include it, so sign its agreement too." if name == "MIMIC-IV" else "")
                raise AuthError(
                    f"PhysioNet refused the credentials for {client.base_url} (HTTP {e.code}): either the user "
                    f"name or password is wrong, or this account has not signed the {name} data use "
                    f"agreement on {page} (credentialed access).{also} Fix "
                    "PHYSIONET_USERNAME/PHYSIONET_PASSWORD or ~/.netrc and rerun") from None
            if e.code == 404:
                raise Failed("not on the server (HTTP 404): check --version and the cohort's paths") from None
            if e.code == 416:
                return      # the .part already holds the whole file; the checksum decides
            if e.code not in (408, 429) and e.code < 500:
                raise Failed(f"HTTP {e.code} {e.reason}") from None
            last, retry_after = f"HTTP {e.code} {e.reason}", parse_retry_after(e.headers.get("Retry-After"))
        except TRANSIENT as e:
            last = f"{type(e).__name__}: {e}"
            if isinstance(e, (urllib.error.URLError, ConnectionRefusedError, TimeoutError)) and not (
                    part.exists() and part.stat().st_size > offset):
                client.unreachable(last)   # no answer at all (not a dropped transfer): maybe the server is gone
        progressed = part.exists() and part.stat().st_size > offset
        failures = 0 if progressed else failures + 1    # resuming a flaky connection is not a failure
        if failures < client.attempts:
            client.stop.wait(retry_delay(failures, client.backoff, retry_after=retry_after))
    raise Failed(f"gave up after {client.attempts} attempts ({last})")


def download(client: Client, root: Path, rel: str, expected: str | None) -> tuple[int, int, str]:
    """One file to its final path, verified; returns (size, mtime_ns, sha256) for the verified state."""
    dest = root / rel
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):      # a checksum mismatch gets one fresh download from zero
        transfer_file(client, rel, part)
        sha = sha256_file(part)
        if expected is None or sha == expected:
            os.replace(part, dest)
            stat = dest.stat()
            return stat.st_size, stat.st_mtime_ns, sha
        part.unlink()
    raise Failed(f"checksum mismatch twice (SHA256SUMS.txt says {expected[:12]}..., got {sha[:12]}...)")
