"""SLURM through submitit: one job per sweep member, as job arrays, requeued on preemption.

    launcher: slurm                      # in the grid file
    slurm: {partition: gpu, time_min: 720, cpus_per_task: 8, mem_gb: 64, array_parallelism: 8}

On the cluster's login node, `make sweep GRID=params/grids/NAME.yaml` submits and returns; each job
runs `sweep.run_member` (passed in, pickled by reference) inside its allocation. Members that ask for
the same number of GPUs go into one job array. A member with gpus: N > 1 gets N GPUs on one node and
trains under torchrun inside the allocation (train.launch). When SLURM preempts or times a job out,
submitit calls MemberJob.checkpoint, which requeues the same member: the rerun finds checkpoints/last.pt
and resumes from it (what was trained since the last save, at most checkpoint_minutes, is done again).
Job logs: runs/<sweep>/slurm/. Tests use submitit's local executor (executor="local"), which runs the
same jobs as local processes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError

DEFAULTS = {"time_min": 720, "cpus_per_task": 8, "mem_gb": 64, "array_parallelism": 16, "signal_delay_s": 120}


class MemberJob:
    """The callable submitit pickles: runs one member with `run` (sweep.run_member, pickled by reference, so
    this module needs no import of the sweep that calls it), and asks to be requeued when preempted."""

    def __init__(self, run):
        self.run = run

    def __call__(self, sweep_dir: str, name: str) -> str:
        return self.run(sweep_dir, name)

    def checkpoint(self, sweep_dir: str, name: str):
        import submitit

        return submitit.helpers.DelayedSubmission(MemberJob(self.run), sweep_dir, name)   # resumes from last.pt


def executor(sweep_dir: Path, settings: dict, gpus: int, cluster: str | None = None):
    """A submitit executor for members with `gpus` GPUs each: SLURM (cluster=None), or submitit's "local"
    executor (the tests), which runs the same jobs as processes here."""
    try:
        import submitit
    except ImportError:
        raise UserError("launcher: slurm needs submitit: .venv/bin/pip install submitit (it is in the dev extras)") from None
    s = {**DEFAULTS, **settings}
    if cluster is None:   # submitit would fall back to local processes without a word
        if shutil.which("sbatch") is None:
            raise UserError("launcher: slurm, but there is no sbatch on PATH: run the sweep from the cluster's "
                            "login node, or set launcher: local in the grid file")
        cluster = "slurm"
    ex = submitit.AutoExecutor(folder=str(Path(sweep_dir) / "slurm" / "%j"), cluster=cluster)
    ex.update_parameters(name=f"cxrlib-{Path(sweep_dir).name}", timeout_min=int(s["time_min"]), nodes=1,
                         tasks_per_node=1, gpus_per_node=gpus, cpus_per_task=int(s["cpus_per_task"]),
                         mem_gb=s["mem_gb"], slurm_array_parallelism=int(s["array_parallelism"]),
                         slurm_signal_delay_s=int(s["signal_delay_s"]),
                         **{f"slurm_{k}": s[k] for k in ("partition", "account", "qos", "constraint") if s.get(k)})
    return ex


def submit(sweep_dir: Path, members: list[dict], settings: dict, run, cluster: str | None = None) -> list:
    """Submit the members (one array per GPU count); returns the submitit jobs."""
    jobs = []
    by_gpus: dict[int, list[dict]] = {}
    for m in members:
        gpus = 0 if m["params"].device == "cpu" else m["params"].gpus
        by_gpus.setdefault(gpus, []).append(m)
    for gpus, group in sorted(by_gpus.items()):
        ex = executor(sweep_dir, settings, gpus, cluster)
        names = [m["name"] for m in group]
        jobs += ex.map_array(MemberJob(run), [str(sweep_dir)] * len(names), names)
        for m, job in zip(group, jobs[-len(group):]):
            print(f"[sweep] {m['name']}: submitted as job {job.job_id} ({gpus} GPU(s))", flush=True)
    return jobs


def real_cluster_command(grid_path: str) -> str:
    return (f"on the login node: make sweep GRID={grid_path}   (squeue --me to follow; the same command later "
            "skips finished members and resubmits the rest)")
