"""Faults end in one line and a rerun that works: a full disk under the image cache, a checkpoint or a notebook;
a tracking store that cannot be written. The disk cases use a small tmpfs where this machine lets the tests
mount one (root on Linux); elsewhere they are skipped and say so."""
from __future__ import annotations

import errno
import subprocess
import uuid

import pytest
import torch

from cxrlib import params, tracking
from cxrlib.data import cache_build
from cxrlib.errors import UserError
from cxrlib.experiments import runs
from cxrlib.training import checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs at tmp_path/disk (skipped where mounting is not allowed)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not allowed'}): "
                    "the disk-full cases are covered on machines that allow it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.probe(issue=22, kind="traceback")
def test_the_image_cache_reserves_its_space_and_a_full_disk_is_one_line(small_disk):
    images = small_disk / "images.npy"
    with open(images, "wb") as f:
        f.truncate(4_000_000)   # what open_memmap leaves: a sparse file larger than the disk
    with pytest.raises(UserError, match=r"images.npy: the image cache needs 4.0 MB and the disk is full .*cache_dir"):
        cache_build.reserve(images)
    fits = small_disk / "small.npy"
    with open(fits, "wb") as f:
        f.truncate(100_000)
    cache_build.reserve(fits)
    assert fits.stat().st_blocks * 512 >= 100_000   # the blocks are the file's now: no SIGBUS when written


@pytest.mark.probe(issue=22, kind="traceback")
def test_a_checkpoint_that_does_not_fit_is_one_line_and_the_previous_stays(small_disk):
    path = small_disk / "last.pt"
    checkpoint.save_checkpoint(path, {"step": 1})
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"last.pt: not saved: the disk is full .*previous checkpoint is intact.*RESUME=1"):
        checkpoint.save_checkpoint(path, {"weights": torch.zeros(1_000_000)})   # 4 MB on a 1 MB disk
    assert path.read_bytes() == before
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"]   # no temp file left behind


@pytest.mark.probe(issue=22, kind="traceback")
def test_a_notebook_that_cannot_be_saved_is_one_line(tmp_path, monkeypatch):
    import papermill

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", full)
    p = params.validate({"name": "r", "runs_dir": str(tmp_path), "device": "cpu"})
    with pytest.raises(UserError, match=r"03_evaluate: the disk is full .*could not be saved.*rerun the same command"):
        runs.execute("03_evaluate", p, runs.project_root(), tmp_path / "r")


@pytest.mark.probe(issue=22, kind="traceback")
def test_a_tracking_store_that_fails_stops_tracking_once_and_the_work_goes_on(tmp_path, monkeypatch, capsys):
    class Broken(tracking.Tracker):
        def epoch(self, epoch, values):
            raise OSError(errno.EROFS, "Read-only file system")

    guarded = tracking.Guarded(Broken, "TensorBoard's runs/x/tb")
    guarded.epoch(1, {"val_auroc_macro": 0.7})
    said = capsys.readouterr().err
    assert said.startswith("warning: tracking stopped: TensorBoard's runs/x/tb could not be written") \
        and "Read-only" in said and said.count("\n") == 1   # one line, no source path before it
    guarded.epoch(2, {"val_auroc_macro": 0.8})   # now a no-op: no second warning, no error
    guarded.close()
    assert capsys.readouterr().err == ""

    def unopenable():
        raise PermissionError(errno.EACCES, "Permission denied", "mlruns")

    quiet = tracking.Guarded(unopenable, "MLflow's store mlruns")
    assert "warning: tracking stopped: MLflow's store" in capsys.readouterr().err
    quiet.final(tmp_path, None)
    with pytest.raises(UserError, match="needs the tensorboard package"):
        tracking.Guarded(lambda: (_ for _ in ()).throw(UserError("tracker: tensorboard needs the tensorboard "
                                                                  "package")), "x")
