"""One writer per run folder: a lock file that names its holder, taken by every command that writes a run.

    with runlock.hold(run_dir, "make train"):
        ...   # a second writer is refused with one line naming this process

The lock is `<folder>/.cxrlib.lock`, created exclusively (O_EXCL) and holding the holder's PID, host,
process start time, command and SLURM job id. A lock whose holder is gone is taken over: on the same
host when the PID no longer runs (or now belongs to another process, by its start time), and on any
host when the holder was this same SLURM job (a requeued job resumes its own run). A live holder, or one
on another host that cannot be checked, is refused with its PID, host and what to do.

Child processes inherit the right to write: the folders a process holds are listed in the environment
(CXRLIB_HELD_LOCKS), so the notebook kernels papermill starts, and torchrun's workers, write under their
parent's lock; a notebook opened in JupyterLab only checks that no other live process holds it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError

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
    if holder.get("slurm_job") and holder["slurm_job"] == os.environ.get("SLURM_JOB_ID"):
        return True   # this job, requeued after preemption: the earlier attempt is dead
    if holder.get("host") != socket.gethostname():
        return False  # cannot check a process on another machine
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


def _acquire(folder: Path, command: str) -> None:
    path = folder / LOCK_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(folder)
            if holder is None:
                continue   # released between our two calls: try again
            if not is_stale(holder):
                raise UserError(describe(folder, holder)) from None
            with contextlib.suppress(FileNotFoundError):   # a stale lock: take it over
                os.unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_me(command), f)
        return
    raise UserError(f"{path}: could not take the lock (another process keeps taking it); try again")


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
        holder = read_holder(folder)
        if holder is not None and holder.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / LOCK_NAME)
