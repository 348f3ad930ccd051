"""Building an ensemble pseudo-run from a sweep's members (make sweep with ensemble: true), then evaluating it.

What an ensemble is, and how it is scored, is evaluation.ensemble's; this module writes its folder and runs
notebooks 03-05 on it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import runfiles, runlock
from ..errors import UserError
from ..evaluation.ensemble import best_member
from ..fsutil import atomic_path, atomic_write_json, sha256_file
from ..params import Params, validate
from ..runfiles import COHORT, ENSEMBLE, PREDICTIONS, notebook_path
from . import runs


def build(sweep_dir, members: list[str], name: str = "ensemble") -> Params:
    """Write the pseudo-run folder runs/<sweep>/<name>/; returns its parameters."""
    sweep_dir = Path(sweep_dir)
    dirs = [sweep_dir / m for m in members]
    missing = [d.name for d in dirs if not (d / PREDICTIONS).is_file()]
    if missing:
        raise UserError(f"{sweep_dir}: member(s) {missing} have no predictions.csv; run them first (make sweep)")
    cohorts = {sha256_file(d / COHORT) for d in dirs}
    if len(cohorts) > 1:
        raise UserError(f"{sweep_dir}: the members' cohort.csv differ; an ensemble needs one cohort (vary training "
                        "settings, not cohort ones, in a sweep you want to ensemble)")
    best = best_member(dirs)
    base = runfiles.load_frozen(best).to_dict()
    p = validate({**base, "name": name, "runs_dir": str(sweep_dir), "compare_with": best.name},
                            f"{sweep_dir}/{name}")
    folder = p.run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / COHORT) as tmp:
        shutil.copyfile(dirs[0] / COHORT, tmp)
    atomic_write_json(folder / ENSEMBLE, {"members": members, "rule": "mean of the members' probabilities",
                                               "best_member_on_validation": best.name})
    frozen = runfiles.frozen_if_any(folder)
    if frozen:
        runfiles.check_change(frozen, p, folder, instead="Delete the ensemble folder to rebuild it")
    runfiles.freeze_if_changed(p, folder, frozen)
    return p


def build_and_evaluate(sweep_dir, members: list[str], name: str = "ensemble", progress: bool = True) -> Path:
    """Build the pseudo-run, then run notebooks 03-05 on it (those the members ran), holding its folder's lock."""
    with runlock.hold(Path(sweep_dir) / name, "cxrlib sweep (ensemble)"):
        p = build(sweep_dir, members, name)
        ran = [nb for nb in runfiles.SCORING_NOTEBOOKS if notebook_path(Path(sweep_dir) / members[0], nb).is_file()]
        print(f"[sweep] {name}: the mean of {len(members)} members; compared with {p.compare_with} (best on "
              "validation)", flush=True)
        return runs.run(p, ran, summary=False, progress=progress)
