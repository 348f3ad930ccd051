"""A loopback stand-in for PhysioNet's file server: basic auth, Range requests and injected faults.

`faults[rel]` is a list of faults, one consumed per request for that file; `always[rel]` applies to
every request; `redirects[rel]` answers 302 to another URL (after the auth check). Faults: "500",
"503", "429" (with Retry-After: 0), "drop" (send half the body, then hang up), "corrupt" (one byte
flipped), "ignore-range" (answer 200 with the whole file), "404".
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFIX = "/files/mimic-cxr-jpg/2.1.0/"
TABLES = ("metadata", "negbio", "chexpert", "split")


@dataclass
class Request:
    rel: str
    range: str | None
    status: int
    authorized: bool = True


class FakePhysioNet:
    def __init__(self, release: Path, username: str, password: str, prefix: str = PREFIX):
        self.release = Path(release)
        self.prefix = prefix
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.prefix}"

    def start(self) -> "FakePhysioNet":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_for(self, suffix: str = "") -> list[Request]:
        return [r for r in self.requests if r.rel.endswith(suffix)]

    def _next_fault(self, rel: str) -> str | None:
        with self.lock:
            queue = self.faults.get(rel)
            return queue.pop(0) if queue else self.always.get(rel)

    def _handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # quiet; tests read fake.requests instead
                pass

            def reply(self, status, body=b"", headers=()):
                rel = (urllib.parse.unquote(self.path[len(fake.prefix):]) if self.path.startswith(fake.prefix)
                       else self.path)
                with fake.lock:
                    fake.requests.append(Request(rel, self.headers.get("Range"), status,
                                                 "Authorization" in self.headers))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self):
                if self.headers.get("Authorization") != fake.auth:
                    return self.reply(401, b"Unauthorized", [("WWW-Authenticate", 'Basic realm="PhysioNet"')])
                rel = urllib.parse.unquote(self.path[len(fake.prefix):])
                if rel in fake.redirects:
                    return self.reply(302, b"", [("Location", fake.redirects[rel])])
                file = fake.release / rel
                fault = fake._next_fault(rel)
                if not self.path.startswith(fake.prefix) or not file.is_file() or fault == "404":
                    return self.reply(404, b"Not Found")
                if fault in ("500", "503", "429"):
                    return self.reply(int(fault), b"try later", [("Retry-After", "0")])
                data = file.read_bytes()
                if fault == "corrupt":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if fault == "mangle-path":   # a damaged transfer of a list: one path's byte is garbage
                    data = data.replace(b"files/p1", b"files/p\xff", 1)
                start = 0
                wanted = self.headers.get("Range")
                if wanted and fault != "ignore-range":
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        return self.reply(416, b"", [("Content-Range", f"bytes */{len(data)}")])
                if fault == "drop":     # promise the whole body, send half, hang up
                    with fake.lock:
                        fake.requests.append(Request(rel, wanted, 200))
                    body = data[start:]
                    self.send_response(206 if start else 200)
                    if start:
                        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if start:
                    return self.reply(206, data[start:], [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")])
                return self.reply(200, data)

        return Handler


def make_release(root: Path, n_images: int = 6, seed: int = 0) -> list[str]:
    """A tiny fake 2.1.0 release: four gzipped tables, the radiologist labels, random-bytes .jpg files and SHA256SUMS.txt."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n_images):
        subject, study = 10000032 + i * 1000037, 50414267 + i * 17
        dicom = "-".join(f"{rng.integers(0, 2**32):08x}" for _ in range(5))
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.integers(0, 256, int(rng.integers(20_000, 90_000)), dtype=np.uint8).tobytes())
        images.append(rel)
    tables = [f"mimic-cxr-2.0.0-{kind}.csv.gz" for kind in TABLES]
    for name in tables:
        (root / name).write_bytes(gzip.compress(f"{name}\nsubject_id,study_id\n1,2\n".encode(), mtime=0))
    tables.append("mimic-cxr-2.1.0-test-set-labeled.csv")   # 2.1.0's radiologist labels
    (root / tables[-1]).write_text("study_id,Airspace Opacity\n50414267,1.0\n")
    lines = []
    for n, rel in enumerate(tables + images):   # both of sha256sum's separators: text and binary mode
        sha = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        lines.append(f"{sha}  {rel}" if n % 2 else f"{sha} *{rel}")
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")
    return images
