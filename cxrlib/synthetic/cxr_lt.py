"""Synthetic CXR-LT tables for the synthetic MIMIC-CXR-JPG, in the challenge's layouts (docs/label-sets.md):

    cxr-lt/cxr-lt-2023/{train,development,test}.csv      26 labels; path; study_id as MIMIC's integer
    cxr-lt/cxr-lt-2024/train_labeled.csv, development_labeled_task1.csv, test_labeled_task1.csv
                                                          40 labels (alphabetical); fpath; study_id with an "s"
    cxr-lt/cxr-lt-2024/{development,test}_labeled_task2.csv
                                                          the gold subset: 26 labels, Normal between Mass and Nodule

One row per image, laterals included, labels per study (every image of a study carries its row). The 14 CheXpert
findings come from the synthetic CheXpert table (positive: 1; anything else: 0), so the images show them; the
other labels are drawn per study at long-tailed rates (the 2023 training shares where known, 0.05-2% for 2024's
new ones) and have no image signature: a model cannot learn them, as a stand-in should say. Every image has at
least one positive (No Finding / Normal otherwise), as the 2023 release's do. The organisers' split is drawn by
patient (about 70 / 10 / 20), not the release's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..fsutil import atomic_write_csv
from ..labels import FINDINGS
from ..labelset import load
from .tables import image_path

FOLDER = "cxr-lt"
SPLIT_SHARES = {"train": 0.70, "development": 0.10, "test": 0.20}
# CXR-LT 2023's training shares of its labels that are not among the 14 (positives / 264,849; cxr-lt-facts.md)
SHARES_2023 = {"Calcification of the Aorta": 4361, "Emphysema": 4255, "Fibrosis": 1158, "Hernia": 4049,
               "Infiltration": 10218, "Mass": 5529, "Nodule": 7663, "Pleural Thickening": 3369,
               "Pneumomediastinum": 788, "Pneumoperitoneum": 543, "Subcutaneous Emphysema": 2453,
               "Tortuous Aorta": 3499}
TRAIN_2023 = 264_849
GOLD_SHARE = 0.05   # of the development and test images, at most 406 in all (the real gold standard's size)


def _rates(labels, known: dict, rng) -> dict:
    """Per label not among the 14: the 2023 share where known, else a long-tail rate between 0.05% and 2%."""
    unknown = [f for f in labels if f not in known]
    drawn = dict(zip(unknown, np.geomspace(0.0005, 0.02, max(len(unknown), 1))[rng.permutation(len(unknown))]))
    return {**{f: c / TRAIN_2023 for f, c in known.items()}, **drawn}


def study_labels(chexpert: pd.DataFrame, labels, nothing_found: str, rng) -> pd.DataFrame:
    """One row per study of `chexpert`: the set's labels as 0/1, at least one positive per study."""
    out = pd.DataFrame({"study_id": chexpert["study_id"].to_numpy()})
    rates = _rates([f for f in labels if f not in FINDINGS and f != nothing_found], SHARES_2023, rng)
    for f in labels:
        if f in FINDINGS and f != "No Finding":
            out[f] = (chexpert[f].to_numpy() == 1).astype(int)
        elif f == nothing_found:
            out[f] = 0
        else:
            out[f] = (rng.random(len(out)) < rates[f]).astype(int)
    others = [f for f in labels if f != nothing_found]
    out[nothing_found] = (out[others].sum(axis=1) == 0).astype(int)
    return out


def write(out, metadata: pd.DataFrame, chexpert: pd.DataFrame, seed: int = 0) -> dict:
    """Write both editions' tables under out/cxr-lt/; returns their row counts."""
    rng = np.random.default_rng([seed, 36])
    folder = Path(out) / FOLDER
    patients = np.unique(metadata["subject_id"].to_numpy())
    draw = rng.random(len(patients))
    cut = np.cumsum(list(SPLIT_SHARES.values()))
    split_of = dict(zip(patients, np.array(list(SPLIT_SHARES))[np.searchsorted(cut, draw, side="right").clip(0, 2)]))
    images = metadata[["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning"]].copy()
    images["split"] = images["subject_id"].map(split_of)
    paths = [image_path(s, t, d) for s, t, d in zip(images["subject_id"], images["study_id"], images["dicom_id"])]
    labelled = images["study_id"].isin(chexpert["study_id"])   # a study without a labeler row has no CXR-LT row
    counts = {}
    for edition in ("cxr-lt-2023", "cxr-lt-2024"):
        label_set = load(edition)
        per_study = study_labels(chexpert, label_set.labels, label_set.nothing_found, rng)
        rows = images[labelled].merge(per_study, on="study_id", how="left")
        rows.insert(5, "path" if edition.endswith("2023") else "fpath", np.array(paths)[labelled.to_numpy()])
        if edition.endswith("2024"):
            rows["study_id"] = "s" + rows["study_id"].astype(str)
        for split, name in label_set.tables.items():
            part = rows[rows["split"] == split].drop(columns="split")
            atomic_write_csv(folder / name, part)
            counts[f"{edition}/{split}"] = len(part)
        for split, name in label_set.gold.items():   # the gold subset: a few of the split's images
            part = rows[rows["split"] == split]
            part = part.iloc[np.sort(rng.permutation(len(part))[:min(round(GOLD_SHARE * len(part)), 203)])]
            gold = part[["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning",
                         "fpath"]].copy()
            gold[list(label_set.gold_labels)] = part[list(label_set.gold_labels)].to_numpy()
            atomic_write_csv(folder / name, gold)
            counts[f"{edition}/gold_{split}"] = len(gold)
    return counts
