"""One writer per run folder: a lock file that names its holder, taken by every command that writes a run.

    with runlock.hold(run_dir, "make train"):
        ...   # a second writer is refused with one line naming this process

The lock is `<folder>/.cxrlib.lock`, holding the holder's PID, host, process start time, command and SLURM
job id. Taking and releasing it are serialised by an flock on the folder itself, and the file is written
atomically, so among processes that start at once exactly one holds it, and a half-written lock is never read
as a dead one. A lock whose holder is gone is taken over: on the same host when the PID no longer runs (or now
belongs to another process, by its start time), and on another host when the holder was this same SLURM job
(a requeued job resumes its own run; two processes of one job on one host, as in an `salloc` shell, are
checked by PID like any other). A live holder, or one on another host that cannot be checked, is refused with
its PID, host and what to do.

Child processes inherit the right to write: the folders a process holds are listed in the environment
(CXRLIB_HELD_LOCKS), so the notebook kernels papermill starts, and torchrun's workers, write under their
parent's lock; a notebook opened in JupyterLab only checks that no other live process holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError
from .fsutil import atomic_write_text

LOCK_NAME = ".cxrlib.lock"
HELD_ENV = "CXRLIB_HELD_LOCKS"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused PID apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """Whether the process runs: it exists and is not a zombie (a dead process its parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: alive
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):   # no /proc (macOS): it exists
        return True


def _me(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
            "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def read_holder(folder) -> dict | None:
    path = Path(folder) / LOCK_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):   # half-written by a holder killed mid-write: nobody holds it
        return {}


def is_stale(holder: dict) -> bool:
    """Whether the holder is certainly gone (its lock may be taken over)."""
    if not holder:
        return True
    if holder.get("host") != socket.gethostname():
        # this job, requeued on another node after preemption: the earlier attempt is dead; any other
        # process on another machine cannot be checked
        return bool(holder.get("slurm_job")) and holder["slurm_job"] == os.environ.get("SLURM_JOB_ID")
    pid = int(holder.get("pid", 0))
    if pid <= 0 or not running(pid):
        return True
    return bool(holder.get("start")) and _start_time(pid) not in (None, holder["start"])   # PID reused


def held_here() -> set[str]:
    return {p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p}


def describe(folder, holder: dict) -> str:
    where = "this machine" if holder.get("host") == socket.gethostname() else f"host {holder.get('host')}"
    return (f"{folder} is being written by process {holder.get('pid')} on {where} since {holder.get('since')} "
            f"({holder.get('command')}). One writer at a time: wait for it to finish, or stop it "
            f"(kill {holder.get('pid')})" + ("" if where == "this machine" else
                                              f"; if nothing on {holder.get('host')} writes it any more, "
                                              f"delete {Path(folder) / LOCK_NAME}"))


def check_free(folder) -> None:
    """Refuse when another live process holds the folder (a notebook opened by hand uses this)."""
    folder = Path(folder)
    if str(folder.resolve()) in held_here():
        return
    holder = read_holder(folder)
    if holder is not None and holder.get("pid") != os.getpid() and not is_stale(holder):
        raise UserError(describe(folder, holder))


@contextlib.contextmanager
def _serialised(folder: Path):
    """One process at a time reads, judges and writes a folder's lock: an flock on the folder itself (a directory
    descriptor; no extra file), released when the descriptor closes, also when the process dies."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _acquire(folder: Path, command: str) -> None:
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _serialised(folder):
            holder = read_holder(folder)
            if holder is not None and not is_stale(holder):
                raise UserError(describe(folder, holder))
            atomic_write_text(path, json.dumps(_me(command)))   # whole or absent, never half-written
    except OSError as e:
        raise UserError(f"{folder}: cannot write its lock {LOCK_NAME} ({e.strerror}); a run folder must be "
                        "writable by whoever writes the run: fix its permissions or the disk") from None


@contextlib.contextmanager
def hold(folder, command: str):
    """Hold the folder's lock for the block (nothing to do when an ancestor process holds it)."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in held_here():
        yield
        return
    _acquire(folder, command)
    before = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = os.pathsep.join(sorted(held_here() | {key}))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = before
        with contextlib.suppress(OSError), _serialised(folder):
            holder = read_holder(folder)
            if holder is not None and holder.get("pid") == os.getpid():
                os.unlink(folder / LOCK_NAME)
