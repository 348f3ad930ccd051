"""One writer per run folder (runlock.py): a second writer refused while the first lives, a dead holder's lock
taken over, children writing under their parent's lock, commands refused before they change anything, and
sweep launchers that take their members down with them, so a rerun finds no orphan training."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from cxrlib import params, runfiles, runlock
from cxrlib.errors import UserError
from cxrlib.experiments import grid as grids
from cxrlib.experiments import runs, sweep

PROJECT = Path(__file__).resolve().parent.parent
HOLD = textwrap.dedent("""
    import sys, time
    from cxrlib import runlock
    with runlock.hold(sys.argv[1], "a test holder"):
        print("held", flush=True)
        time.sleep(120)
""")


def holder(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def gone(pid: int, seconds: float = 15) -> bool:
    """Whether the process ended within `seconds` (a zombie nobody reaped yet has ended too)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not runlock.running(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.probe(issue=22, kind="writers")
def test_a_second_writer_is_refused_while_the_first_lives_and_a_dead_ones_lock_is_taken_over(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(UserError, match=f"being written by process {proc.pid} on this machine") as e:
            with runlock.hold(tmp_path, "second"):
                pass
        assert f"kill {proc.pid}" in str(e.value) and "a test holder" in str(e.value)
        with pytest.raises(UserError):
            runlock.check_free(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    with runlock.hold(tmp_path, "after the kill"):   # its holder is dead: taken over, no message
        assert runlock.read_holder(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / runlock.LOCK_NAME).exists()   # released


def test_stale_reused_foreign_and_requeued_locks(tmp_path, monkeypatch):
    lock = tmp_path / runlock.LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": "1", "command": "old", "since": "then"}
    lock.write_text(json.dumps(me))                       # our PID, another start time: a reused PID
    assert runlock.is_stale(runlock.read_holder(tmp_path))
    lock.write_text("{half a lock")                       # killed while writing it: nobody holds it
    assert runlock.is_stale(runlock.read_holder(tmp_path))
    foreign = {**me, "host": "gpu-node-7", "pid": 12345, "slurm_job": "991"}
    lock.write_text(json.dumps(foreign))
    with pytest.raises(UserError, match="host gpu-node-7.*delete"):   # cannot be checked: refused, with the way out
        runlock.check_free(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "991")            # the same SLURM job, requeued on another node
    assert runlock.is_stale(runlock.read_holder(tmp_path))
    with runlock.hold(tmp_path, "requeued"):
        assert runlock.read_holder(tmp_path)["pid"] == os.getpid()


def test_children_write_under_their_parents_lock(tmp_path):
    code = "import sys; from cxrlib import runlock; runlock.check_free(sys.argv[1]); " \
           "exec('with runlock.hold(sys.argv[1], \"child\"): print(runlock.read_holder(sys.argv[1])[\"pid\"])')"
    with runlock.hold(tmp_path, "parent"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=PROJECT,
                             env={**os.environ, "PYTHONPATH": str(PROJECT)})
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == os.getpid()   # the child wrote under the parent's lock, which is still there
    assert not (tmp_path / runlock.LOCK_NAME).exists()


# --------------------------------------------------------------------------- commands
def frozen_run(tmp_path, **values) -> tuple[params.Params, Path]:
    p = params.validate({"name": "r", "runs_dir": str(tmp_path), "device": "cpu", **values})
    runfiles.freeze(p, p.run_dir())
    return p, p.run_dir()


def test_a_run_command_is_refused_while_another_writes_and_changes_nothing(tmp_path, monkeypatch):
    p, run_dir = frozen_run(tmp_path)
    before = (run_dir / "params.yaml").read_bytes()
    monkeypatch.setattr(runs, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    proc = holder(run_dir)
    try:
        with pytest.raises(UserError, match=f"process {proc.pid}"):
            runs.run(params.validate({**p.to_dict(), "bootstrap": 7}), ["03_evaluate"])
    finally:
        proc.kill()
        proc.wait()
    assert (run_dir / "params.yaml").read_bytes() == before


@pytest.mark.probe(issue=22, kind="silent")
def test_a_failed_command_leaves_params_yaml_as_it_was(tmp_path, monkeypatch):
    p, run_dir = frozen_run(tmp_path)
    before = (run_dir / "params.yaml").read_bytes()

    def fails(*a, **k):
        raise UserError("05_fairness.ipynb failed in cell 3: no MIMIC-IV tables there")

    monkeypatch.setattr(runs, "execute", fails)
    with pytest.raises(UserError, match="failed in cell 3"):
        runs.run(params.validate({**p.to_dict(), "mimic_iv_root": "/nowhere", "device": "auto"}), ["05_fairness"])
    assert (run_dir / "params.yaml").read_bytes() == before   # a one-off runtime override did not stick
    with pytest.raises(UserError):
        runs.run(params.validate({**p.to_dict(), "bootstrap": 9}), ["05_fairness"])
    assert runfiles.load_frozen(run_dir).bootstrap == 9          # an evaluate field stays: its notebook may have written


@pytest.mark.probe(issue=22, kind="silent")
def test_make_train_on_an_existing_run_starts_from_its_own_params(tmp_path, monkeypatch, capsys):
    p, run_dir = frozen_run(tmp_path, images_per_study="first", split_mode="seed", val_fraction=0.1)
    seen = []
    monkeypatch.setattr(runs, "run", lambda p, notebooks, **k: seen.append(p))
    monkeypatch.chdir(PROJECT)
    runs.cli("run", ["--params", "params/demo.yaml", "--default-params", "--name", "r", "-p", f"runs_dir={tmp_path}",
                     "--notebooks", "01,02"])   # what `make train RUN=r` runs without PARAMS
    assert seen[0].images_per_study == "first" and seen[0].split_mode == "seed"   # not the demo preset's
    assert f"RUN=r: using {run_dir / 'params.yaml'}" in capsys.readouterr().out


# --------------------------------------------------------------------------- sweeps
MEMBER = textwrap.dedent("""
    import os, sys, time
    from cxrlib import runlock
    with runlock.hold(sys.argv[1], "member"):   # a member trains: it holds its folder and takes long
        open(sys.argv[2], "w").write(str(os.getpid()))
        time.sleep(300)
""")
LAUNCHER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from cxrlib import params
    from cxrlib.experiments import sweep
    sweep_dir, member = Path(sys.argv[1]), sys.argv[2]
    sweep.member_command = lambda d, name: [sys.executable, member, str(d / name), str(d / (name + ".pid"))]
    members = [{"name": n, "dir": sweep_dir / n, "params": params.validate({"device": "cpu"})} for n in ("a", "b")]
    for m in members:
        m["dir"].mkdir(parents=True, exist_ok=True)
    sweep.launch_local(sweep_dir, members, parallel=2)
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.probe(issue=22, kind="writers")
def test_a_killed_launcher_takes_its_members_down_and_a_rerun_finds_no_orphan(tmp_path, how):
    (tmp_path / "member.py").write_text(MEMBER)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), str(tmp_path / "member.py")],
                                cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)}, stdout=subprocess.DEVNULL)
    pids = [tmp_path / "a.pid", tmp_path / "b.pid"]
    end = time.monotonic() + 60
    while not all(f.is_file() and f.read_text() for f in pids) and time.monotonic() < end:
        time.sleep(0.2)
    members = [int(f.read_text()) for f in pids]
    members_dirs = [{"name": n, "dir": tmp_path / n} for n in ("a", "b")]
    with pytest.raises(UserError, match="members still being written"):   # while they train: a rerun is refused
        sweep.check_no_live_writers(members_dirs)
    launcher.send_signal(how)
    launcher.wait(timeout=60)
    assert all(gone(pid) for pid in members), "a member outlived its launcher"
    sweep.check_no_live_writers(members_dirs)   # the rerun finds no live writer (the stale locks are taken over)


@pytest.mark.probe(issue=22, kind="writers")
def test_two_sweeps_on_one_grid_at_once_the_second_is_refused(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": str(PROJECT / "params" / "demo.yaml"), "name": "s",
                                    "set": {"epochs": 1}}))
    runs_dir = tmp_path / "runs"
    sweep.plan(grids.read_grid(grid), str(runs_dir))
    proc = holder(runs_dir / "s")   # the first launcher
    try:
        with pytest.raises(UserError, match=f"process {proc.pid}"):
            sweep.sweep(grid, str(runs_dir), progress=False)
    finally:
        proc.kill()
        proc.wait()


def _contend(folder: str, barrier, results) -> None:
    """One of the processes that start at once: take the lock, and while holding it check that nobody else is
    inside (an O_EXCL marker), then let go."""
    barrier.wait()
    try:
        with runlock.hold(folder, "contender"):
            marker = os.open(os.path.join(folder, "inside"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            time.sleep(0.05)
            os.close(marker)
            os.unlink(os.path.join(folder, "inside"))
            results.put("held")
    except UserError:
        results.put("refused")
    except FileExistsError:
        results.put("TWO HOLDERS")


@pytest.mark.parametrize("start", ["fresh", "stale"])
@pytest.mark.probe(issue=32, kind="writers")
def test_processes_starting_at_once_never_hold_the_lock_together(tmp_path, start):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "start": "1", "command": "killed", "since": "then"}
    outcomes = []
    for trial in range(50):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        if start == "stale":
            (folder / runlock.LOCK_NAME).write_text(json.dumps(stale))
        barrier, results = context.Barrier(8), context.Queue()
        procs = [context.Process(target=_contend, args=(str(folder), barrier, results)) for _ in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        got = [results.get(timeout=5) for _ in procs]
        outcomes.append(got)
        assert "TWO HOLDERS" not in got, (trial, got)
        assert got.count("held") >= 1, (trial, got)   # someone always gets it; later ones may, once it is free
    assert sum(o.count("refused") for o in outcomes) > 0   # they did contend


@pytest.mark.probe(issue=32, kind="writers")
def test_two_processes_of_one_slurm_job_on_one_host_do_not_both_write(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")   # an salloc shell: everything runs under one job id
    proc = holder(tmp_path)
    try:
        assert runlock.read_holder(tmp_path)["slurm_job"] == "777"
        with pytest.raises(UserError, match=f"being written by process {proc.pid} on this machine"):
            with runlock.hold(tmp_path, "second, same job"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with runlock.hold(tmp_path, "after it died"):   # dead on this host: taken over
        assert runlock.read_holder(tmp_path)["pid"] == os.getpid()


@pytest.mark.probe(issue=32, kind="traceback")
def test_a_read_only_run_folder_is_one_line(tmp_path, monkeypatch):
    import errno

    def read_only(path, text):   # what a read-only mount answers (root ignores permission bits, so it is simulated)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(runlock, "atomic_write_text", read_only)
    with pytest.raises(UserError, match=r"cannot write its lock \.cxrlib\.lock \(Read-only file system\)"):
        with runlock.hold(tmp_path, "x"):
            pass
