"""Sweeps: one grid file becomes many ordinary, frozen run folders, runs/<sweep>/<member>/.

    make sweep GRID=params/grids/seed-ablation.yaml     python -m cxrlib sweep --grid FILE [--dry-run]

A grid file (experiments/grid.py reads and checks it) names a base preset, the overrides every member shares,
what varies, the seeds, and how members are launched (locally, or on Slurm).

Members are named from what they change, e.g. pos_weight-true_seed-1. Each member's parameters are
frozen into its folder when the sweep is planned; a rerun skips finished members (SWEEP_DONE) and
resumes unfinished ones from their last.pt, and refuses a grid edit that would change a member's
finished stages (the run folder owns its configuration). A failed member does not stop the others;
the command lists the failures and exits non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import runfiles, runlock
from ..errors import UserError
from ..fsutil import atomic_write_text
from ..params import STAGES, Params, check_for_training, read_yaml, validate
from ..runfiles import CHECKPOINTS, LAST, METRICS, PARAMS, TRAIN_NOTEBOOK
from . import cluster, ensembles, runs
from .grid import GridError, expand, read_grid, shipped_grids
from .runs import select_notebooks

DONE = "SWEEP_DONE"        # written into a member's folder once all its notebooks ran
FROZEN_GRID = "sweep.yaml"


# --------------------------------------------------------------------------- the members
def member_params(grid: dict, name: str, overrides: dict, runs_dir: str = "runs") -> Params:
    values = read_yaml(grid["base"])
    values.update(grid["set"])
    values.update(overrides)
    values.update(name=name, runs_dir=str(Path(runs_dir) / grid["name"]))
    return validate(values, f"{grid['path']} (member {name})")


def plan(grid: dict, runs_dir: str = "runs", write: bool = True) -> list[dict]:
    """Freeze every member's parameters into its folder (checked against what a folder holds; write=False
    only checks); returns [{name, dir, status: finished | unfinished | new, params}]. Nothing runs."""
    sweep_dir = Path(runs_dir) / grid["name"]
    members = []
    for name, overrides in expand(grid):
        p = member_params(grid, name, overrides, runs_dir)
        folder = p.run_dir()
        frozen = runfiles.frozen_if_any(folder)
        if frozen:
            runfiles.check_change(frozen, p, folder, instead="Give the changed members a new sweep name "
                                    "(name: in the grid file)")
        status = "finished" if (folder / DONE).is_file() else "unfinished" if frozen else "new"
        members.append({"name": name, "dir": folder, "status": status, "params": p})
    check_members(grid, members)
    if grid["ensemble"]:
        check_shared_cohort(grid, members)
    if grid["baseline"] and grid["baseline"] not in {m["name"] for m in members}:
        raise GridError(f"{grid['path']}: baseline {grid['baseline']!r} is not a member; members: "
                        + ", ".join(m["name"] for m in members))
    if not write:
        return members
    sweep_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    atomic_write_text(sweep_dir / FROZEN_GRID, "# The grid this sweep was planned from (written by cxrlib).\n"
                      + yaml.safe_dump({k: v for k, v in grid.items() if k != "path"}, sort_keys=False))
    for m in members:
        runfiles.freeze_if_changed(m["params"], m["dir"])
    return members


def check_members(grid: dict, members: list[dict]) -> None:
    """What would otherwise fail only once a member runs, after the others trained: the notebooks exist, and a
    member that trains and selects on a validation split has one. Checked at --dry-run and before any start."""
    try:
        notebooks = notebooks_of(grid)
    except UserError as e:
        raise GridError(f"{grid['path']}: notebooks: {e}") from None
    if TRAIN_NOTEBOOK in notebooks:
        for m in members:
            check_for_training(m["params"], f"{grid['path']} (member {m['name']})")


def check_shared_cohort(grid: dict, members: list[dict]) -> None:
    """An ensemble averages its members image by image: they must build one cohort (their image sizes may
    differ; the card then lists each member). Checked before anything trains, on the parameters that decide it."""
    fields = STAGES["cohort"]
    first = members[0]
    for m in members[1:]:
        differ = [f for f in fields if getattr(m["params"], f) != getattr(first["params"], f)]
        if differ:
            detail = "; ".join(f"{f}: {getattr(first['params'], f)!r} vs {getattr(m['params'], f)!r}" for f in differ)
            raise GridError(f"{grid['path']}: ensemble: true, but members {first['name']} and {m['name']} would build "
                            f"different cohorts ({detail}); an ensemble averages the same images. Vary training "
                            "settings only, or set ensemble: false")


def notebooks_of(grid: dict) -> list[str]:

    return select_notebooks(",".join(grid["notebooks"]) if grid["notebooks"] else None)


# --------------------------------------------------------------------------- one member
def run_member(sweep_dir, name: str, progress: bool = False) -> str:
    """Run (or resume) one member in this process; the unit every launcher calls. Returns its folder."""

    sweep_dir = Path(sweep_dir)
    grid = read_frozen_grid(sweep_dir)
    folder = sweep_dir / name
    if (folder / DONE).is_file():
        return str(folder)
    p = runfiles.load_frozen(folder)
    if (folder / CHECKPOINTS / LAST).is_file():
        p = validate({**p.to_dict(), "resume": True}, str(folder / PARAMS))
    notebooks = notebooks_of(grid)
    runs.run(p, notebooks, summary=False, progress=progress)
    atomic_write_text(folder / DONE, json.dumps({"notebooks": notebooks, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return str(folder)


def read_frozen_grid(sweep_dir) -> dict:
    import yaml

    path = Path(sweep_dir) / FROZEN_GRID
    if not path.is_file():
        raise GridError(f"{path}: not a sweep folder (plan it with python -m cxrlib sweep --grid FILE)")
    return {**yaml.safe_load(path.read_text()), "path": str(path)}


# --------------------------------------------------------------------------- launchers
def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def member_command(sweep_dir: Path, name: str) -> list[str]:
    """The command that runs one member in its own process (the parallel launcher's unit)."""
    return [sys.executable, "-m", "cxrlib", "sweep", "--sweep-dir", str(sweep_dir), "--only", name]


def _die_with_parent() -> None:
    """In a member process, before it runs: the kernel sends SIGTERM when the launcher dies, however it dies
    (SIGKILL included), so a killed launcher leaves no member training on its own (Linux; elsewhere the
    members' locks still refuse a second writer)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def check_no_live_writers(members: list[dict]) -> None:
    """Refuse before launching when a member folder is still written by a live process (a member of a killed
    launcher, or another sweep): two trainers in one folder would overwrite each other's checkpoints."""
    busy = []
    for m in members:
        holder = runlock.read_holder(m["dir"])
        if holder and not runlock.is_stale(holder):
            busy.append(f"{m['name']}: process {holder.get('pid')} on {holder.get('host')} ({holder.get('command')})")
    if busy:
        raise UserError("members still being written by another process; stop them (kill PID) or wait, then rerun "
                        "this command:\n  " + "\n  ".join(busy))


def launch_local(sweep_dir: Path, members: list[dict], parallel: int, progress: bool = True) -> dict[str, str]:
    """Members one after another in this process, or `parallel` at once as subprocesses, each with its own
    GPU(s) through CUDA_VISIBLE_DEVICES. Returns {member: error} for the members that failed. The
    subprocesses die with the launcher: on SIGTERM it stops them, and the kernel stops them if it is killed."""
    failed = {}
    if parallel == 1:
        for m in members:
            print(f"[sweep] {m['name']}: {m['status']}", flush=True)
            try:
                run_member(sweep_dir, m["name"], progress=progress)
            except Exception as e:   # the next member still runs; the summary names this one
                failed[m["name"]] = f"{type(e).__name__}: {e}"
                print(f"[sweep] {m['name']} failed: {failed[m['name']]}", flush=True)
        return failed
    pool = visible_gpus()
    on_gpu = any(m["params"].device != "cpu" for m in members)
    need = max(m["params"].gpus for m in members) * parallel if on_gpu else 0
    if on_gpu and len(pool) < need:
        raise UserError(f"parallel: {parallel} needs {need} GPUs ({parallel} members x gpus), but "
                        f"{len(pool)} are visible; lower parallel: in the grid file")
    free = [pool[i * (need // parallel):(i + 1) * (need // parallel)] for i in range(parallel)] if on_gpu else \
        [[] for _ in range(parallel)]
    waiting, running = list(members), {}

    def stop_members(signum, frame):
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop_members)
    try:
        _launch(sweep_dir, waiting, running, free, failed)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failed


def _launch(sweep_dir: Path, waiting: list, running: dict, free: list, failed: dict) -> None:
    while waiting or running:
        while waiting and free:
            m, devices = waiting.pop(0), free.pop(0)
            log = open(m["dir"] / "sweep.log", "a")
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(devices), CXRLIB_BATCH="1")
            print(f"[sweep] {m['name']}: started (GPUs {','.join(devices) or 'none'}; log {m['dir'] / 'sweep.log'})",
                  flush=True)
            proc = subprocess.Popen(member_command(sweep_dir, m["name"]), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_die_with_parent)
            running[m["name"]] = (proc, devices, log)
        time.sleep(1)
        for name, (proc, devices, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                free.append(devices)
                del running[name]
                if proc.returncode:
                    failed[name] = f"exit status {proc.returncode} (see {sweep_dir / name / 'sweep.log'})"
                print(f"[sweep] {name}: " + ("failed" if proc.returncode else "finished"), flush=True)


# --------------------------------------------------------------------------- CLI
def sweep(grid_path, runs_dir: str = "runs", dry_run: bool = False, executor: str | None = None,
          wait: bool = False, progress: bool = True) -> dict:
    """Plan, then launch the members not yet finished; then the ensemble and the comparison (local, or
    slurm with wait). Returns {members, failed, jobs}."""
    grid = read_grid(grid_path)
    members = plan(grid, runs_dir, write=not dry_run)
    sweep_dir = Path(runs_dir) / grid["name"]
    todo = [m for m in members if m["status"] != "finished"]
    print(f"[sweep] {grid['name']}: {len(members)} members in {sweep_dir}/, {len(members) - len(todo)} finished, "
          f"{sum(m['status'] == 'unfinished' for m in todo)} to resume, {sum(m['status'] == 'new' for m in todo)} new",
          flush=True)
    for m in members:
        print(f"  {m['name']:<40} {m['status']}", flush=True)
    if dry_run:
        return {"members": members, "failed": {}, "jobs": []}
    with runlock.hold(sweep_dir, f"cxrlib sweep --grid {grid['path']}"):   # one launcher per sweep
        check_no_live_writers(todo)
        return _run_sweep(grid, members, todo, sweep_dir, executor, wait, progress)


def _run_sweep(grid, members, todo, sweep_dir: Path, executor, wait: bool, progress: bool) -> dict:
    jobs, failed = [], {}
    if todo and (grid["launcher"] == "slurm" or executor):

        jobs = cluster.submit(sweep_dir.resolve(), todo, grid["slurm"], run_member, executor)   # jobs start elsewhere
        if not wait:
            print(cluster.real_cluster_command(grid["path"]), flush=True)
            return {"members": members, "failed": {}, "jobs": jobs}
        for m, job in zip(todo, jobs):
            try:
                job.result()
            except Exception as e:   # submitit re-raises the member's failure with its traceback
                failed[m["name"]] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    elif todo:
        failed = launch_local(sweep_dir, todo, grid["parallel"], progress=progress)
    if grid["ensemble"] and not failed and (todo or not (sweep_dir / "ensemble" / METRICS).is_file()):

        ensembles.build_and_evaluate(sweep_dir, [m["name"] for m in members], progress=progress)
    if failed:
        print("[sweep] failed members (rerun the same command to retry them; finished ones are skipped):\n"
              + "\n".join(f"  {k}: {v}" for k, v in failed.items()), flush=True)
    return {"members": members, "failed": failed, "jobs": jobs}


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m cxrlib {command}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", help="grid file, e.g. params/grids/seed-ablation.yaml")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--dry-run", action="store_true", help="plan and list the members; run nothing")
    ap.add_argument("--wait", action="store_true", help="launcher: slurm: wait for the jobs, then compare")
    ap.add_argument("--cluster", choices=["slurm", "local"], help=argparse.SUPPRESS)   # submitit's local executor
    ap.add_argument("--sweep-dir", help=argparse.SUPPRESS)   # with --only: one member (parallel launcher)
    ap.add_argument("--only", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only:
        def interrupted(signum, frame):   # the launcher stops us: end like Ctrl-C (notebook kept, lock released)
            raise KeyboardInterrupt(f"stopped by signal {signum}; rerun the sweep to resume this member")

        signal.signal(signal.SIGTERM, interrupted)
        run_member(args.sweep_dir, args.only, progress=False)
        return 0
    if not args.grid:
        raise UserError("give a grid file: make sweep GRID=params/grids/NAME.yaml (grids: "
                        + shipped_grids() + ")")
    result = sweep(args.grid, args.runs_dir, args.dry_run, args.cluster, args.wait)
    return 1 if result["failed"] else 0
