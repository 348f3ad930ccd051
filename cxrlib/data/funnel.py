"""The cohort's report: the funnel from metadata to cohort, exclusions, label counts, and the original
project's published figures beside ours."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..labels import BLANK_POLICIES, UNCERTAIN_POLICIES, per_finding
from ..original import COHORT

SPLITS = ("train", "validate", "test")
# The full release has 377,110 metadata rows; a sample or the synthetic stand-in has far fewer.
FULL_RELEASE_MIN_ROWS = 300_000


@dataclass
class CohortReport:
    """The funnel from metadata to cohort, the exclusions, and label counts per split."""
    data_root: str
    settings: dict
    sources: dict
    metadata_rows: int
    images_in_view: int
    studies_in_view: int
    subjects_in_view: int
    subjects_with_labels: int
    images_blank_view: int = 0          # ViewPosition blank: in no view, counted so none is dropped silently
    selected_images: int = 0            # after the studies_per_subject and images_per_study rules
    images_with_labels: int = 0         # of those, in a study with a label row
    excluded_no_labels: list = field(default_factory=list)   # [{subject_id, study_id}]
    excluded_no_split: list = field(default_factory=list)    # official mode: image not in the split table
    split_counts: dict = field(default_factory=dict)
    positives: int = 0          # training targets after the policies
    negatives: int = 0
    ignored: int = 0            # NaN targets (policy "ignore")
    label_cells: int = 0        # positives + negatives
    prevalence: list = field(default_factory=list)  # raw source counts per split and finding
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return sum(self.split_counts.values())

    def funnel_frame(self) -> pd.DataFrame:
        views = ", ".join(self.settings["views"])
        studies = "one study per subject" if self.settings.get("studies_per_subject", "first") == "first" \
            else "every such study"
        images = "one image per study" if self.settings.get("images_per_study", "first") == "first" \
            else f"every [{views}] image of it"
        rows = [
            ("images in metadata", self.metadata_rows),
            ("... with a blank ViewPosition (in no view)", self.images_blank_view),
            (f"images in views [{views}]", self.images_in_view),
            (f"studies with a [{views}] image", self.studies_in_view),
            ("subjects with such an image", self.subjects_in_view),
            (f"selected: {studies}, {images}", self.selected_images),
            (f"... whose study has a {self.settings['label_source']} label row" if "label_set" not in self.settings
             else f"... with a row in label set {self.settings['label_set']['name']}", self.images_with_labels),
        ]
        if self.settings["split_mode"] == "official":
            rows.append(("... whose image is in the official split", self.images_with_labels
                         - len(self.excluded_no_split)))
        rows += [(f"split: {s}", self.split_counts.get(s, 0)) for s in SPLITS]
        return pd.DataFrame(rows, columns=["step", "count"])

    def prevalence_frame(self) -> pd.DataFrame:
        """Rows (split, finding): raw positive / negative / uncertain / blank counts and the positive rate."""
        frame = pd.DataFrame(self.prevalence, columns=["split", "finding", "images", "positive",
                                                       "negative", "uncertain", "blank"])
        frame["positive_rate"] = frame["positive"] / frame["images"].where(frame["images"] > 0)
        return frame

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def uses_original_rules(self) -> bool:
        """AP, NegBio, everything but 1 -> 0, the study_id test split (val_fraction may differ)."""
        s = self.settings
        if "label_set" in s:   # another label set than MIMIC's own 14
            return False
        policies = {**per_finding(s["uncertain_policy"], UNCERTAIN_POLICIES, "uncertain_policy"),
                    **{f"blank {k}": v for k, v in per_finding(s["blank_policy"], BLANK_POLICIES, "blank_policy").items()}}
        one_image = s.get("studies_per_subject", "first") == s.get("images_per_study", "first") == "first"
        return (one_image and list(s["views"]) == ["AP"] and s["label_source"] == "negbio" and s["split_mode"] == "seed"
                and set(policies.values()) == {"zeros"})

    def looks_like_full_release(self) -> bool:
        return self.metadata_rows >= FULL_RELEASE_MIN_ROWS


def compare_with_reference(report: CohortReport, warn: bool = True) -> pd.DataFrame:
    """Our figures beside the original project's on 2.0.0.

    `flag` marks a difference only when it means something: the input looks like the full
    release and the settings are the original's. On a sample or synthetic data every figure
    differs, and that is expected.
    """
    ours = {
        "images": report.images,
        "train + validate": report.split_counts.get("train", 0) + report.split_counts.get("validate", 0),
        "test": report.split_counts.get("test", 0),
        "positives": report.positives,
        "negatives": report.negatives,
        "label cells": report.label_cells,
    }
    frame = pd.DataFrame({"figure": list(COHORT), "ours": [ours[k] for k in COHORT],
                          "reference": list(COHORT.values())})
    frame["difference"] = frame["ours"] - frame["reference"]
    applies = report.looks_like_full_release() and report.uses_original_rules()
    frame["flag"] = applies & (frame["difference"] != 0)
    if warn and frame["flag"].any():
        differing = ", ".join(f"{r.figure} {r.ours:,} vs {r.reference:,}" for r in frame[frame["flag"]].itertuples())
        warnings.warn(f"cohort differs from the original project's on MIMIC-CXR-JPG 2.0.0: {differing}. "
                      "Check that data_root holds the unmodified 2.0.0 CSVs.")
    return frame


def prevalence(frame: pd.DataFrame, raw: pd.DataFrame, findings) -> list[dict]:
    """Raw source counts (positive, negative, uncertain, blank) per split and finding."""
    values, splits = raw.to_numpy(dtype=np.float64), frame["split"].to_numpy(dtype=str)
    rows = []
    for split in ("all", *SPLITS):
        part = values if split == "all" else values[splits == split]
        counts = {"positive": (part == 1).sum(0), "negative": (part == 0).sum(0), "uncertain": (part == -1).sum(0),
                  "blank": np.isnan(part).sum(0)}
        for i, finding in enumerate(findings):
            rows.append({"split": split, "finding": finding, "images": len(part),
                         **{k: int(v[i]) for k, v in counts.items()}})
    return rows
