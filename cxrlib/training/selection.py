"""Model selection (the original project's rule, on the split named by select_on) and a training result.

    keep, stop = update_selection(selection, score, epoch, patience)
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..runfiles import BEST, CHECKPOINTS, HISTORY, LAST, read_history


def new_selection() -> dict:
    # best starts at 0 as in the original (best_acc = 0): AUROC and accuracy are never below it.
    return {"best_score": 0.0, "best_epoch": 0, "counter": 0}


def update_selection(selection: dict, score: float, epoch: int, patience: int) -> tuple[bool, bool]:
    """(keep this epoch?, stop now?) with the original's rule; epoch is 1-based. patience <= 0: never stop."""
    selection["counter"] += 1
    keep = bool(score > selection["best_score"])   # strict; NaN never wins
    if keep:
        selection.update(best_score=float(score), best_epoch=int(epoch), counter=0)
    return keep, patience > 0 and selection["counter"] >= patience


def fit_result(params, run_dir: Path, selection: dict, history: list, stopped: bool) -> dict:
    return {"best_epoch": selection["best_epoch"], "best_score": selection["best_score"],
            "select_on": params.select_on, "select_metric": params.select_metric,
            "epochs_run": len(history), "stopped_early": bool(stopped),
            "selected_on_test": params.select_on == "test",
            "best": str(run_dir / CHECKPOINTS / BEST), "last": str(run_dir / CHECKPOINTS / LAST),
            "history": str(run_dir / HISTORY)}


def result_from_history(params, run_dir) -> dict:
    """fit's result, rebuilt from history.csv (after a torchrun subprocess)."""
    history = read_history(run_dir)
    if history.empty:
        raise UserError(f"{Path(run_dir) / HISTORY} has no epoch yet; training did not finish an epoch")
    best = history[history["selected"]].iloc[-1] if history["selected"].any() else None
    last = history.iloc[-1]
    selection = {"best_epoch": int(best["epoch"]) if best is not None else 0,
                 "best_score": float(best["val_auroc_macro" if params.select_metric == "auroc" else "val_accuracy"])
                 if best is not None else 0.0}
    stopped = params.patience > 0 and int(last["patience_counter"]) >= params.patience
    return fit_result(params, Path(run_dir), selection, history.to_dict("records"), stopped)
