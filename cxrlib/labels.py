"""The 14 findings in MIMIC-CXR-JPG's column order, and the label policies.

Source tables hold 1.0 (positive), 0.0 (negative), -1.0 (uncertain) and blank
(not mentioned). A policy maps uncertain and blank values to 0 or 1, or to NaN
("ignore"), which the loss and the metrics then mask out.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]

UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
BLANK_POLICIES = ("zeros", "ignore")
_POLICY_VALUE = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}


def per_finding(policy, allowed, what: str, findings=None) -> dict[str, str]:
    """Expand a policy given globally ("zeros") or per finding ({"Edema": "ones"}).

    A per-finding mapping may hold a "default" key for the findings it does not name;
    without one, unnamed findings get "zeros", the original project's choice.
    """
    if isinstance(policy, str):
        policy = {"default": policy}
    if not isinstance(policy, dict):
        raise ValueError(f"{what} must be one of {list(allowed)} or a mapping finding -> policy, got {policy!r}")
    findings = list(findings or FINDINGS)
    unknown = sorted(set(policy) - set(findings) - {"default"})
    if unknown:
        raise ValueError(f"{what} names unknown findings {unknown}; valid names: {findings}")
    for finding, value in policy.items():
        if value not in allowed:
            raise ValueError(f"{what}[{finding!r}] = {value!r}; choose one of {list(allowed)}")
    default = policy.get("default", "zeros")
    return {f: policy.get(f, default) for f in findings}


def apply_policies(raw: pd.DataFrame, uncertain="zeros", blank="zeros", findings=None) -> pd.DataFrame:
    """Map raw source values (1, 0, -1, NaN) of the findings (the 14 unless `findings` names the set's) to
    training targets.

    Returns float32 columns holding 0, 1 or NaN (NaN = masked out).
    """
    findings = list(findings or FINDINGS)
    unc = per_finding(uncertain, UNCERTAIN_POLICIES, "uncertain_policy", findings)
    blk = per_finding(blank, BLANK_POLICIES, "blank_policy", findings)
    out = {}
    for f in findings:
        col = raw[f].to_numpy(dtype=np.float64)
        target = np.where(col == 1.0, 1.0, 0.0)
        target = np.where(col == -1.0, _POLICY_VALUE[unc[f]], target)
        target = np.where(np.isnan(col), _POLICY_VALUE[blk[f]], target)
        out[f] = target.astype(np.float32)
    return pd.DataFrame(out, index=raw.index)


# A cohort table's identity columns; every column after them is a label of the run's set, in output order.
COHORT_IDENTITY = ("subject_id", "study_id", "dicom_id", "view", "path", "split")


def cohort_labels(cohort: pd.DataFrame) -> list[str]:
    """The label columns of a cohort table (data.cohort.read_cohort's): the run's labels, in output order."""
    return [c for c in cohort.columns if c not in COHORT_IDENTITY and c != "cache_row"]


def label_matrix(df: pd.DataFrame, findings=None) -> np.ndarray:
    """The label columns (`findings`, else the cohort's own) as an (N, K) float32 array; NaN marks a masked label."""
    return df[list(findings or cohort_labels(df))].to_numpy(dtype=np.float32)


def positive_weights(labels, names=None) -> np.ndarray:
    """neg/pos per finding over training labels (NaN = masked, not counted); 1 where a finding has no positive.
    Plain arithmetic, here so that what shows it (notebook 02's table) needs no torch."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = (labels == 1).sum(axis=0).astype(np.float64)   # NaN equals neither
    neg = (labels == 0).sum(axis=0).astype(np.float64)
    if (pos == 0).any():
        names = list(names or range(labels.shape[1]))
        warnings.warn(f"pos_weight: no positive training label for {[names[j] for j in np.flatnonzero(pos == 0)]}; "
                      "their pos_weight is 1", stacklevel=3)
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
