"""Head, medium and tail: a label set's findings grouped by how often the training images carry them (the rule its
YAML records, labelset.bucket_of), and each group's macro AUROC and AUPRC (the mean average precision CXR-LT ranks
by) on the test split, with patient-bootstrap CIs over the group's estimable findings (min_positives)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import labelset
from ..runfiles import prob_columns
from ..stats import metrics

GROUPS = ("head", "medium", "tail")


def train_prevalence(cohort: pd.DataFrame, findings) -> dict[str, float]:
    """Per finding, the share of the training images labelled positive (after the run's label policies)."""
    train = cohort[cohort["split"] == "train"]
    return {f: float((train[f] == 1).mean()) if len(train) else float("nan") for f in findings}


def buckets_section(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, cohort: pd.DataFrame, p,
                    label_set: labelset.LabelSet, findings: list) -> dict:
    """metrics.json's `buckets`: the rule, each finding's bucket and training share, and per bucket the macro
    figures of its findings on the test units (y, prob, groups, whose columns are `findings`, the model's
    outputs); a set whose labels are not the model's is refused."""
    if list(label_set.labels) != list(findings):
        raise labelset.LabelSetError(f"{label_set.path}: its labels are not the {len(findings)} the run predicts "
                                     f"(label set {label_set.name} changed after training?); restore it")
    prevalence = train_prevalence(cohort, findings)
    bucket = labelset.bucket_of(label_set, prevalence)
    out = {"label_set": label_set.name, "rule": label_set.buckets, "train_prevalence": prevalence, "bucket": bucket,
           "groups": {}}
    for name in GROUPS:
        members = [f for f in findings if bucket[f] == name]
        if not members:
            out["groups"][name] = {"findings": [], "macro_findings": [], "auroc": None, "auprc": None}
            continue
        columns = [findings.index(f) for f in members]
        summary = metrics.summarize(y[:, columns], prob[:, columns], groups, n_boot=p.bootstrap, seed=p.seed,
                                    ci_level=p.ci_level, findings=members, min_positives=p.min_positives)
        out["groups"][name] = {"findings": members, "macro_findings": summary["macro_findings"],
                               "auroc": summary["macro"]["auroc"], "auprc": summary["macro"]["auprc"]}
    return out


def set_gold_section(predictions: pd.DataFrame, p, label_set: labelset.LabelSet) -> dict | None:
    """metrics.json's `set_gold`: the run's test images that the label set's gold table (CXR-LT 2024's task 2,
    radiologists' labels of a subset) labels, scored against those labels on the gold labels the run predicts, per
    image, with patient-bootstrap CIs; its own split, never used to choose anything. None: the set has none."""
    if "test" not in label_set.gold:
        return None
    try:
        gold = labelset.read_table(label_set, p.data_root, "gold_test")
    except labelset.LabelSetError as e:   # the gold table is a separate download: its absence is said, not fatal
        return {"table": label_set.gold["test"], "reason": str(e)}
    names = [f for f in label_set.gold_labels if f in label_set.labels]
    test = predictions[predictions["split"] == "test"]
    scored = test.merge(gold[["dicom_id", *names]].rename(columns={f: f"gold_{f}" for f in names}), on="dicom_id")
    section = {"table": label_set.gold["test"], "level": "image", "rows_in_table": int(len(gold)),
               "images_scored": int(len(scored)), "labels": names}
    if scored.empty:
        return {**section, "reason": "none of the gold table's images is among this run's test images"}
    summary = metrics.summarize(scored[[f"gold_{f}" for f in names]].to_numpy(np.float64),
                                scored[prob_columns(names)].to_numpy(np.float64),
                                scored["subject_id"].to_numpy(str), n_boot=p.bootstrap, seed=p.seed,
                                ci_level=p.ci_level, findings=names, min_positives=p.min_positives)
    return {**section, "patients_scored": int(scored["subject_id"].nunique()),
            "macro_findings": summary["macro_findings"], "auroc": summary["macro"]["auroc"],
            "auprc": summary["macro"]["auprc"]}
