"""Atomic writes: a temp file in the same folder, fsync, then os.replace.

A reader never sees a half-written file, and a crash leaves the old file (or none).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def out_path(path, flag: str) -> Path:
    """A user-named output, before any work: a regular file or a new path, nothing else (an atomic write would
    rename over a folder's name, a device or a link's target)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{flag} {path}: not a regular file; name a new file or one to replace")
    return path


@contextlib.contextmanager
def writing_out(path, flag: str):
    """Around the write of a user-named output: a failure (a full disk) is one line naming it."""
    try:
        yield
    except OSError as e:
        raise UserError(f"{flag} {path}: could not be written ({e.strerror}); free space there or choose another "
                        "place") from None


def replace_folder(new, final, spare) -> None:
    """`new` becomes `final`, the folder `final` was moved aside to `spare` first and removed last: a reader sees
    the old folder or the new one, whole. A process killed between the two renames leaves `final` absent and the
    old folder at `spare`, which recover_folder puts back."""
    new, final, spare = Path(new), Path(final), Path(spare)
    if spare.exists():
        shutil.rmtree(spare)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        os.replace(final, spare)
    os.replace(new, final)
    shutil.rmtree(spare, ignore_errors=True)


def recover_folder(final, spare) -> None:
    """After a replace_folder killed midway: the old folder back where it was."""
    final, spare = Path(final), Path(spare)
    if spare.is_dir() and not final.exists():
        os.replace(spare, final)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path, frame, **kwargs) -> None:
    """Write a pandas DataFrame atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, **kwargs)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (hashlib drops the GIL, so threads hash in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def disk_full(error: BaseException, folder) -> str | None:
    """A sentence when `error` is the disk filling up under `folder` (ENOSPC, or a writer's short write on a full
    disk, as torch.save reports it), else None."""
    import errno
    import shutil

    if isinstance(error, OSError) and error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    if not isinstance(error, OSError) and not any(s in str(error) for s in ("unexpected pos", "write failed", "No space")):
        return None
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:   # the nearest folder that exists is on that disk
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "the disk is full"
    return f"the disk is full ({free / 1e6:,.0f} MB free under {folder})"


def size_text(n: float) -> str:
    """Bytes for reading: GB from a gigabyte up, else MB (a small cache on a small disk is not '0.0 GB')."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def jsonable(value):
    """NaN, inf and pd.NA -> None; numpy scalars -> Python numbers (json.dumps writes NaN, which is not JSON)."""
    import numpy as np  # here, not at the top: light commands import fsutil without the array libraries
    import pandas as pd

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if value is pd.NA:
        return None
    return value

