"""What one scored unit is: an image, or a study whose frontal images are aggregated.

Labels belong to studies (every image of a study carries its study's label row), so scoring each
image counts a study with three frontal images three times and weighs its patient by the number of
views taken. At study level each study's image probabilities become one (their mean or max) and
every figure, threshold and CI is computed over studies; the bootstrap still draws patients.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

LEVELS = ("image", "study")
AGGREGATES = ("mean", "max")
PROB_PREFIX = "p_"   # runfiles.PROB_PREFIX: the stats layer stays below runfiles


def plural(level: str) -> str:
    """'images' or 'studies': the unit a figure counts, as a sentence names it."""
    return {"image": "images", "study": "studies"}.get(level, f"{level}s")


def several_images_per_study(predictions: pd.DataFrame) -> bool:
    """Whether any study has more than one scored image (otherwise both levels give the same figures)."""
    return bool(predictions["study_id"].duplicated().any())


def study_rows(predictions: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
    """One row per (split, study): the study's images' probabilities aggregated by `how`.

    Columns: dicom_id (the study's first image, to name it), subject_id, study_id, split, n_images,
    p_<label> (float64) and <label> (the study's targets) per label. Studies keep their first
    appearance's order. Raises if a study's images carry different labels (a cohort bug).
    """
    if how not in AGGREGATES:
        raise ValueError(f"study_aggregate must be one of {AGGREGATES}, got {how!r}")
    keys = ["split", "study_id"]
    prob_columns = [c for c in predictions.columns if c.startswith(PROB_PREFIX)]
    names = [c[len(PROB_PREFIX):] for c in prob_columns]
    grouped = predictions.groupby(keys, sort=False)
    probs = grouped[prob_columns].agg(how).astype(np.float64)
    labels = grouped[names].first()
    widest = grouped[names].nunique(dropna=False)
    if (widest > 1).to_numpy().any():
        study = widest.index[(widest > 1).to_numpy().any(axis=1)][0]
        raise RuntimeError(f"study {study[1]} ({study[0]}) has images with different labels; "
                           "labels are per study, so the cohort table is inconsistent")
    first = grouped[["dicom_id", "subject_id"]].first()
    first["n_images"] = grouped.size()
    out = pd.concat([first, probs, labels], axis=1).reset_index()
    return out[["dicom_id", "subject_id", "study_id", "split", "n_images", *prob_columns, *names]]


def rows_at(predictions: pd.DataFrame, level: str, how: str = "mean") -> pd.DataFrame:
    """The scored units of `level`: the predictions themselves (image) or study_rows (study)."""
    if level not in LEVELS:
        raise ValueError(f"eval_level must be one of {LEVELS}, got {level!r}")
    if level == "image":
        return predictions
    return study_rows(predictions, how)


def units_per_split(rows: pd.DataFrame) -> dict:
    return {s: int(n) for s, n in rows["split"].value_counts().sort_index().items()}
