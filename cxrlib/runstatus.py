"""What a run folder holds, judged from its files alone (nothing is loaded into torch): its status, dates,
duration and best epoch. The run lister (`make runs`) and the run's index page read it.

Status: new (parameters only), cohort (cohort.csv), training (a checkpoint, training not at its end:
running, or stopped and resumable), trained, evaluated, stale (metrics.json was computed before the last
training step: the run was trained further since, so its figures describe an older model).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd

from . import account
from .runfiles import (
    BEST,
    CHECKPOINTS,
    COHORT,
    LAST,
    METRICS,
    NOTEBOOKS,
    frozen_if_any,
    notebook_path,
    read_history,
    read_json,
    unfinished_notebooks,
)


def training_finished(params: dict, history: pd.DataFrame) -> bool:
    if history.empty:
        return False
    patience = int(params.get("patience", 0) or 0)
    stopped = patience > 0 and int(history["patience_counter"].iloc[-1]) >= patience
    return stopped or len(history) >= int(params.get("epochs", 0) or 0)



def status(run_dir) -> dict:
    """What the run folder holds, judged from its files (nothing is loaded into torch)."""
    run_dir = Path(run_dir)
    params, history, metrics = frozen_if_any(run_dir), read_history(run_dir), read_json(run_dir / METRICS)
    notes = [f"{p.name.split('.')[0]} did not finish (running, or killed)" for p in unfinished_notebooks(run_dir)]
    if metrics:
        sel = metrics.get("selection", {})
        trained_now = (len(history), int(history["best_epoch"].iloc[-1]) if len(history) else 0)
        stale = trained_now != (sel.get("epochs_run"), sel.get("best_epoch"))
        state = "stale" if stale else "evaluated"
        if stale:
            notes.append(f"metrics of {sel.get('epochs_run')} epochs (best {sel.get('best_epoch')}); now "
                         f"{trained_now[0]} (best {trained_now[1]}): make evaluate RUN={run_dir.name}")
    elif training_finished(params, history):
        state = "trained"
    elif len(history) or (run_dir / CHECKPOINTS / LAST).is_file():
        state = "training"
    elif (run_dir / COHORT).is_file():
        state = "cohort"
    else:
        state = "new"
    notes = account.warning_labels(metrics or {}) + notes
    if state in ("evaluated", "stale", "trained") and not (run_dir / CHECKPOINTS / BEST).is_file():
        notes.append("checkpoints removed")
    files = [f for f in run_dir.iterdir() if f.is_file()] if run_dir.is_dir() else []
    seconds = sum(notebook_seconds(notebook_path(run_dir, nb)) for nb in NOTEBOOKS)
    best = history[history["epoch"] == history["best_epoch"].iloc[-1]] if len(history) else history
    return {"status": state, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(max(f.stat().st_mtime for f in files)))
            if files else "", "duration": seconds, "epochs": f"{len(history)}/{params.get('epochs', '?')}",
            "best_epoch": int(best["epoch"].iloc[0]) if len(best) else None,
            "best_val": float(best["val_auroc_macro"].iloc[0]) if len(best) else None,
            "metrics": metrics, "notes": notes}


def notebook_seconds(path: Path) -> float:
    """papermill's duration of an executed notebook; 0 when absent.

    The notebook-level metadata follows every cell (nbformat writes keys in order), and its
    papermill block holds the file's last "duration" key: reading the tail spares parsing a
    notebook whose outputs (images) run to megabytes. The whole file is parsed when the tail holds none.
    """
    if not path.is_file():
        return 0.0
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - 65536, 0))
        found = re.findall(rb'"duration": ([0-9.eE+-]+|null)', f.read())
    if found:   # null: the notebook never finished
        return 0.0 if found[-1] == b"null" else float(found[-1])
    papermill = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
    return float(papermill.get("duration") or 0)
