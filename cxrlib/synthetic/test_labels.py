"""The synthetic 2.1.0 additions: radiologist labels for official test studies, IMAGE_FILENAMES, RECORDS.

The radiologists' table starts from the labels the images are drawn from (the CheXpert table) and
disagrees with them at the rates below, more on uncertain and rare findings, as published comparisons
of NLP labels with radiologists find. NegBio, itself a little off the drawn labels, disagrees a
little more. `GOLD_FRACTION` of the official test studies that have a label row are labelled (the
real file: 687 studies); the demo needs enough of them in its test split for intervals to exist.

Per cell of a labelled study, from the drawn (CheXpert) value:
  1     -> 0 with probability POSITIVE_MISSED (RARE_POSITIVE_MISSED for a rare finding), else 1;
  0     -> 1 with probability NEGATIVE_CALLED (RARE_NEGATIVE_CALLED), else 0;
  -1    -> 1 or 0 with probability UNCERTAIN_RESOLVED each, else left -1;
  blank -> 0 with probability BLANK_NEGATIVE, 1 with BLANK_POSITIVE (RARE_BLANK_POSITIVE), else blank.
No Finding is then 1 when no pathology is 1 or -1, else 0 (the radiologists read every finding).
A rare finding is one whose positive rate in the public statistics is under RARE_RATE.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..labels import FINDINGS
from .label_draw import RATES
from .tables import image_path

GOLD_FILE = "mimic-cxr-2.1.0-test-set-labeled.csv"
IMAGE_FILENAMES = "IMAGE_FILENAMES"
RECORDS = "RECORDS"
GOLD_COLUMNS = ["study_id", *["Airspace Opacity" if f == "Lung Opacity" else f for f in FINDINGS]]
GOLD_FRACTION = 0.6
RARE_RATE = 0.05
POSITIVE_MISSED, RARE_POSITIVE_MISSED = 0.06, 0.20
NEGATIVE_CALLED, RARE_NEGATIVE_CALLED = 0.04, 0.08
UNCERTAIN_RESOLVED = 0.45
BLANK_NEGATIVE, BLANK_POSITIVE, RARE_BLANK_POSITIVE = 0.85, 0.03, 0.08


def rare_findings() -> list[str]:

    return [f for f in FINDINGS if f != "No Finding" and RATES[f][0] < RARE_RATE]


def radiologist_values(drawn: np.ndarray, rng) -> np.ndarray:
    """(studies, 14) drawn labels (1 / 0 / -1 / NaN, FINDINGS order) -> the radiologists' labels."""
    rare = np.isin(FINDINGS, rare_findings())
    missed = np.where(rare, RARE_POSITIVE_MISSED, POSITIVE_MISSED)
    called = np.where(rare, RARE_NEGATIVE_CALLED, NEGATIVE_CALLED)
    blank_positive = np.where(rare, RARE_BLANK_POSITIVE, BLANK_POSITIVE)
    u = rng.random(drawn.shape)
    out = np.full(drawn.shape, np.nan)
    out = np.where(drawn == 1, np.where(u < missed, 0.0, 1.0), out)
    out = np.where(drawn == 0, np.where(u < called, 1.0, 0.0), out)
    uncertain = np.where(u < UNCERTAIN_RESOLVED, 1.0, np.where(u < 2 * UNCERTAIN_RESOLVED, 0.0, -1.0))
    out = np.where(drawn == -1, uncertain, out)
    blank = np.where(u < BLANK_NEGATIVE, 0.0, np.where(u < BLANK_NEGATIVE + blank_positive, 1.0, np.nan))
    out = np.where(np.isnan(drawn), blank, out)
    pathology = [j for j, f in enumerate(FINDINGS) if f not in ("No Finding", "Support Devices")]
    mentioned = np.isin(out[:, pathology], (1.0, -1.0)).any(1)
    out[:, FINDINGS.index("No Finding")] = np.where(mentioned, 0.0, 1.0)
    return out


def gold_table(chexpert: pd.DataFrame, split: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The test-set-labeled table: GOLD_FRACTION of the official test studies with a label row."""
    rng = np.random.default_rng([seed, 21])   # its own stream: the 2.0.0 tables stay as they were
    test_studies = np.unique(split.loc[split["split"] == "test", "study_id"].to_numpy())
    labelled = chexpert[chexpert["study_id"].isin(test_studies)].sort_values("study_id")
    chosen = labelled[rng.random(len(labelled)) < GOLD_FRACTION]
    values = radiologist_values(chosen[FINDINGS].to_numpy(dtype=np.float64), rng)
    table = pd.DataFrame(values, columns=GOLD_COLUMNS[1:])
    table.insert(0, "study_id", chosen["study_id"].to_numpy())
    return table


def listing_files(metadata: pd.DataFrame) -> dict[str, str]:
    """IMAGE_FILENAMES (one image path per line) and RECORDS (one study folder per line)."""

    paths = [image_path(*ids) for ids in zip(metadata["subject_id"], metadata["study_id"], metadata["dicom_id"])]
    folders = list(dict.fromkeys(p.rsplit("/", 1)[0] + "/" for p in paths))
    return {IMAGE_FILENAMES: "".join(f"{p}\n" for p in paths), RECORDS: "".join(f"{f}\n" for f in folders)}
