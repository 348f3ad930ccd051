"""The two kinds of run that evaluation scores, and the one place that tells them apart.

Evaluation asks every run four things: its predictions on some splits, how its model was selected, what
shaped the model, and Grad-CAM maps for some images. A trained run answers from its best checkpoint
(trained.TrainedRun); an ensemble from its members (ensemble.Ensemble). Nothing else in evaluation asks
which kind it holds.
"""
from __future__ import annotations

from ..runfiles import is_ensemble
from .ensemble import Ensemble
from .trained import TrainedRun


def open_run(run_dir) -> TrainedRun | Ensemble:
    return Ensemble(run_dir, member=TrainedRun) if is_ensemble(run_dir) else TrainedRun(run_dir)
