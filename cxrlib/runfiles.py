"""The run folder's contract: every file name of runs/<name>/, the prediction columns, and the readers.

    runs/<name>/
      params.yaml, cohort.csv, cohort_report.json     the frozen parameters; the cohort and its funnel
      checkpoints/last.pt, best.pt, history.csv       training (resume; evaluation; one row per epoch)
      predictions.csv, metrics.json                   notebook 03
      demographics.csv, fairness.csv, fairness.json   notebook 05
      export/model.<onnx|pt> (+ .json), MODEL_CARD.md/.html, ensemble.json (an ensemble), tracking.json

Torch-free and light: the run lister (`make runs`) reads run folders through it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .errors import UserError
from .labels import FINDINGS

PARAMS = "params.yaml"
COHORT = "cohort.csv"
COHORT_REPORT = "cohort_report.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
DEMOGRAPHICS = "demographics.csv"
FAIRNESS_CSV = "fairness.csv"
FAIRNESS_JSON = "fairness.json"
EXPORT = "export"
CARD_MD = "MODEL_CARD.md"
CARD_HTML = "MODEL_CARD.html"
ENSEMBLE = "ensemble.json"
TRACKING = "tracking.json"

ID_COLUMNS = ["dicom_id", "subject_id", "study_id", "split"]
PROB_COLUMNS = [f"p_{f}" for f in FINDINGS]


def prob_column(finding: str) -> str:
    return f"p_{finding}"


def checkpoint_path(run_dir, which: str = "best") -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{which}.pt"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_history(run_dir) -> pd.DataFrame:
    path = Path(run_dir) / HISTORY
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def read_predictions(run_dir) -> pd.DataFrame:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise UserError(f"{path}: no predictions; run notebook 03 for this run first "
                        f"(make evaluate RUN={Path(run_dir).name})")
    # float32 as written: %.9g round-trips, so tied scores stay tied and rereading changes nothing.
    frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS} | {c: "float32" for c in PROB_COLUMNS + FINDINGS})
    missing = [c for c in ID_COLUMNS + PROB_COLUMNS + FINDINGS if c not in frame]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing[:5]}; rerun notebook 03 to rewrite it")
    return frame


def read_metrics(run_dir) -> dict:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{path}: no metrics; run notebook 03 for this run first (make evaluate RUN={Path(run_dir).name})")
    return json.loads(path.read_text())
