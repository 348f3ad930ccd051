"""Progress that reaches the person who started the work, in a notebook, a terminal or a log.

Kernel side. `bar(...)` is a tqdm bar in JupyterLab or a terminal. Under papermill (a batch run) it
prints plain progress lines instead, at most one per tenth of the work and one every MIN_SECONDS:

    epoch 3/30: 135/300 batches (45%) | loss 0.4123 | 212.4 img/s | ETA 0:41

Runner side. `Streamer` receives the kernel's stdout as papermill reads it, cell by cell. It prints
every line as it arrives; in a terminal the progress lines drive a live tqdm bar instead.

The progress lines are for the person watching, not for the record: the runner names a side file in
CXRLIB_PROGRESS_FILE, the kernel's LineBar writes there instead of to the cell's output, and the Streamer
reads it (before every line of cell output, so the order holds, and every SIDE_POLL seconds). The saved
notebook keeps the per-epoch lines and none of the batch lines.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

MIN_SECONDS = float(os.environ.get("CXRLIB_PROGRESS_SECONDS", 10))
PROGRESS_FILE = "CXRLIB_PROGRESS_FILE"   # the environment variable naming the runner's side file
SIDE_POLL = 0.2                          # seconds between reads of the side file
LINE = re.compile(r"^(?P<desc>[^:\n]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>[\w/]+) \((?P<pct>\d+)%\)(?P<rest>.*)$")


def is_batch() -> bool:
    """True under papermill (the runner sets PAPERMILL_EXECUTION for its kernels) or CXRLIB_BATCH."""
    return bool(os.environ.get("PAPERMILL_EXECUTION") or os.environ.get("CXRLIB_BATCH"))


def duration(seconds: float) -> str:
    """1:05:09 or 4:09; '?' before there is a rate to estimate from."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LineBar:
    """tqdm's update / set_postfix / close, printed as throttled progress lines (see LINE)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it", stream=None):
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.side = None
        if stream is None and os.environ.get(PROGRESS_FILE):
            try:
                self.side = open(os.environ[PROGRESS_FILE], "a", buffering=1)   # line-buffered: each line lands whole
            except OSError:   # the runner's folder is gone or read-only: the lines go to the output after all
                self.side = None
        self.stream = stream or self.side or sys.stdout
        self.postfix = ""
        self.start_n, self.started = self.n, time.monotonic()
        self.last_print, self.next_fraction = self.started, 0.1 * (int(10 * self.n / max(self.total, 1)) + 1)

    def set_postfix(self, **fields) -> None:
        # tqdm-style keys: img_s is shown as img/s
        self.postfix = " | ".join(f"{k.removesuffix('_s') + '/s' if k.endswith('_s') else k} {v}"
                                  for k, v in fields.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        fraction = self.n / max(self.total, 1)
        if self.n >= self.total or (fraction >= self.next_fraction and now - self.last_print >= MIN_SECONDS):
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        fraction = self.n / max(self.total, 1)
        elapsed = now - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({int(100 * fraction)}%)"]
        if self.postfix:
            parts.append(self.postfix)
        if not self.postfix and rate:
            parts.append(f"{rate:.1f} {self.unit}/s")
        parts.append(f"ETA {duration(eta)}")
        print(" | ".join(p for p in parts if p), file=self.stream, flush=True)
        self.last_print = now
        self.next_fraction = 0.1 * (int(10 * fraction) + 1)

    def close(self) -> None:
        if self.side is not None:
            self.side.close()
            self.side = None


def side_note(text: str) -> None:
    """A line for the person watching and not for the record (an ETA): to the runner's side file when there is
    one (a batch run: it reaches the terminal, never the saved notebook), else to the cell's output."""
    where = os.environ.get(PROGRESS_FILE)
    if where:
        try:
            with open(where, "a", buffering=1) as side:
                side.write(text + "\n")
            return
        except OSError:   # the runner's folder is gone: the cell's output after all
            pass
    print(text, flush=True)


def recent_epoch_seconds(walls: list[float], recent: int = 3) -> float:
    """Seconds per epoch for an ETA: the mean of the last `recent` epochs, leaving out the first when others
    exist (it pays for warm-up: the first reads of the cache, cuDNN's autotuning), not the running mean."""
    kept = walls[1:] if len(walls) > 1 else walls
    kept = kept[-recent:]
    return sum(kept) / len(kept) if kept else float("nan")


def bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True):
    """A tqdm bar in Lab or a terminal; progress lines under papermill; nothing when not enabled."""
    if enabled and is_batch():
        return LineBar(total, initial, desc, unit)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=False,
                dynamic_ncols=True)


class Streamer:
    """A file-like sink for a kernel's stdout (papermill's stdout_file): lines out as they come."""

    def __init__(self, out=None, live: bool | None = None, side: Path | None = None):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live   # a live bar only where a person watches
        self.buffer = ""
        self.bar = None
        self.bar_desc = None
        self.lock = threading.RLock()   # the side file's reader thread and papermill's writes share the bar
        self.side, self.side_buffer, self.stopped = None, "", threading.Event()
        if side is not None:
            self.side = open(side, encoding="utf-8", errors="replace")
            self.reader = threading.Thread(target=self.poll, daemon=True)
            self.reader.start()

    def poll(self) -> None:
        while not self.stopped.wait(SIDE_POLL):
            self.drain()

    def drain(self) -> None:
        """The progress lines the kernel has written to the side file since the last read."""
        with self.lock:
            if self.side is None:
                return
            self.side_buffer += self.side.read()
            *lines, self.side_buffer = self.side_buffer.split("\n")
            for line in lines:
                self.line(line.rstrip("\r"))

    def write(self, text: str) -> int:
        with self.lock:
            self.drain()   # progress written before this output is shown before it
            self.buffer += text
            *lines, self.buffer = self.buffer.split("\n")
            for line in lines:
                self.line(line.rstrip("\r"))
        return len(text)

    def line(self, text: str) -> None:
        match = LINE.match(text) if self.live else None
        if match:
            self.progress(match)
            return
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def progress(self, match: re.Match) -> None:
        desc, n, total = match["desc"], int(match["n"]), int(match["total"])
        if self.bar is None or desc != self.bar_desc:
            self.close()
            self.bar = tqdm(total=total, desc=desc, unit=match["unit"], file=self.out, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit}{postfix}")
            self.bar_desc = desc
        self.bar.n = n
        self.bar.set_postfix_str(match["rest"].lstrip(" |"), refresh=False)
        self.bar.refresh()
        if n >= total:
            self.close()

    def flush(self) -> None:
        self.out.flush()   # a partial line waits for its end: papermill flushes after every chunk

    def finish(self) -> None:
        self.stopped.set()
        with self.lock:
            self.drain()
            if self.side is not None:
                self.side.close()
                self.side = None
            if self.buffer:
                self.line(self.buffer)
                self.buffer = ""
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.bar_desc = None
