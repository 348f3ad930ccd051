"""The 2.1.0 test-set labels (one annotator, reports): the model scored against them, and the NLP labels too.

    gold = read_gold(data_root)                          # None when the release has no such file
    section = gold_section(predictions, gold, p)         # -> metrics.json "gold"

`mimic-cxr-2.1.0-test-set-labeled.csv` holds radiologists' labels for 687 studies of the official
test split: a `study_id` column, no `subject_id`, `Airspace Opacity` for what the NLP tables call
`Lung Opacity`, values 1 / 0 / -1 / blank. Both label sets go through the run's uncertain and blank
policies, so a cell masked by the policy is left out on either side.

The radiologist labels only ever score: training, model selection and thresholds never see them
(the thresholds below are the validation split's, applied unchanged). Everything is at study level
(public code that uses the file does the same), with CIs from patient resamples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cohort import load_raw_labels
from ..errors import UserError
from ..labels import FINDINGS, apply_policies
from ..runfiles import labels_of, prob_columns
from ..stats import levels, metrics
from ..stats.thresholds import threshold_metrics
from . import tables
from .tables import with_ci

GOLD_FILE = "mimic-cxr-2.1.0-test-set-labeled.csv"
RENAMED = {"Airspace Opacity": "Lung Opacity"}   # the file's name -> the NLP tables' name
SOURCES = ("negbio", "chexpert")


def gold_path(data_root) -> Path:
    return Path(data_root) / GOLD_FILE


def read_gold(data_root) -> pd.DataFrame | None:
    """study_id (str) + the 14 findings in FINDINGS order, raw 1 / 0 / -1 / NaN; None if the file is absent."""
    path = gold_path(data_root)
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"study_id": str})
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: could not be read as a CSV ({e}); re-download it with `make fetch`") from None
    frame = frame.rename(columns=RENAMED)
    present = [f for f in FINDINGS if f in frame]
    if "study_id" not in frame or not present:
        raise UserError(f"{path}: expected a study_id column and the findings (Airspace Opacity for Lung Opacity), "
                        f"found {list(frame.columns)}. Re-download it with `make fetch`")
    for finding in FINDINGS:   # a finding the radiologists did not label is masked, never guessed
        if finding not in frame:
            frame[finding] = np.nan
    frame["study_id"] = frame["study_id"].str.strip().str.lstrip("s")
    if frame["study_id"].isna().any() or frame["study_id"].duplicated().any():
        raise UserError(f"{path}: every row needs its own study_id (blank or repeated ones found); "
                        "re-download it with `make fetch`")
    try:
        values = frame[FINDINGS].apply(pd.to_numeric, errors="raise").astype(np.float64)
    except ValueError as e:
        raise UserError(f"{path}: a label is not a number ({e}); labels must be 1, 0, -1 or blank") from None
    bad = ~(values.isna() | values.isin([1.0, 0.0, -1.0]))
    if bad.to_numpy().any():
        column = bad.any()[bad.any()].index[0]
        raise UserError(f"{path}: column {column!r} holds {sorted(set(values[column][bad[column]]))[:5]}; "
                        "labels must be 1, 0, -1 or blank")
    return pd.concat([frame[["study_id"]], values], axis=1).reset_index(drop=True)


def targets(raw: pd.DataFrame, p) -> pd.DataFrame:
    """The run's uncertain and blank policies applied to raw labels: 0, 1 or NaN (masked)."""
    return apply_policies(raw, p.uncertain_policy, p.blank_policy).astype(np.float64)


# --------------------------------------------------------------------------- agreement
def _rates(a: np.ndarray, g: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and Cohen's kappa of labels a against gold g, for each weight column of w."""
    both = w.T @ (a * g)
    a_only = w.T @ (a * (1 - g))
    g_only = w.T @ ((1 - a) * g)
    neither = w.T @ ((1 - a) * (1 - g))
    n = both + a_only + g_only + neither
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (both + neither) / n
        pa, pg = (both + a_only) / n, (both + g_only) / n
        chance = pa * pg + (1 - pa) * (1 - pg)
        kappa = np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)
        return {"sensitivity": both / (both + g_only), "specificity": neither / (neither + a_only),
                "kappa": kappa, "agreement": observed}


def agreement(nlp: pd.DataFrame, gold: pd.DataFrame, subject_ids, n_boot: int = 1000, seed: int = 0,
              ci_level: float = 0.95, source: str = "nlp") -> pd.DataFrame:
    """Per finding: the NLP targets against the radiologists' (both 0 / 1 / NaN, rows aligned).

    Columns: source, finding, n (studies labelled on both sides), gold_pos, nlp_pos, then
    sensitivity, specificity, kappa, agreement, each with lo and hi from patient resamples.
    """
    a_all, g_all = nlp[FINDINGS].to_numpy(np.float64), gold[FINDINGS].to_numpy(np.float64)
    groups = np.asarray(subject_ids, dtype=str)
    stats = ("sensitivity", "specificity", "kappa", "agreement")
    rows = []
    for j, finding in enumerate(FINDINGS):
        known = ~np.isnan(a_all[:, j]) & ~np.isnan(g_all[:, j])
        a, g = a_all[known, j], g_all[known, j]
        point = {k: float(v[0]) for k, v in _rates(a, g, np.ones((len(a), 1))).items()}
        samples = {k: [] for k in stats}
        if n_boot and len(a):
            for w in metrics.patient_weights(groups[known], len(a), n_boot, seed, chunk=256):
                for k, v in _rates(a, g, w).items():
                    samples[k].append(v)
        row = {"source": source, "finding": finding, "n": int(known.sum()), "gold_pos": int(g.sum()),
               "nlp_pos": int(a.sum())}
        tail = 100 * (1 - ci_level) / 2
        for k in stats:
            row[k] = point[k]
            drawn = np.concatenate(samples[k]) if samples[k] else np.array([])
            drawn = drawn[~np.isnan(drawn)]
            lo, hi = np.percentile(drawn, [tail, 100 - tail]) if drawn.size else (np.nan, np.nan)
            row[f"{k}_lo"], row[f"{k}_hi"] = float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_table(data_root, gold: pd.DataFrame, p) -> pd.DataFrame:
    """NegBio and CheXpert against the radiologists on every labelled study of the release."""

    by_source = []
    for source in SOURCES:
        try:
            raw = load_raw_labels(data_root, source, gold["study_id"])
        except UserError:   # a partial copy of the release: the other labeler's table is still compared
            continue
        has_row = raw["subject_id"].notna().to_numpy()
        by_source.append(agreement(targets(raw[has_row], p), targets(gold[has_row], p),
                                raw.loc[has_row, "subject_id"], p.bootstrap, p.seed, p.ci_level, source))
    return pd.concat(by_source, ignore_index=True) if by_source else pd.DataFrame(columns=["source", "finding"])


# --------------------------------------------------------------------------- the model
def scored_studies(study_test: pd.DataFrame, gold: pd.DataFrame, p) -> pd.DataFrame:
    """The run's test studies (levels.study_rows) that the radiologists labelled, with gold_<finding> columns."""
    gold_targets = targets(gold, p).add_prefix("gold_")
    gold_targets["study_id"] = gold["study_id"].to_numpy()
    return study_test.merge(gold_targets, on="study_id", how="inner")


def gold_section(predictions: pd.DataFrame, gold: pd.DataFrame | None, p, thresholds: dict | None = None,
                 data_root=None) -> dict:
    """metrics.json's `gold`: the model against the radiologists and against the NLP labels of the same studies.

    predictions: the run's predictions (image rows); thresholds: the validation-chosen rules
    ({finding: {rule: value}}), applied unchanged.
    """

    if gold is None:
        return {"available": False, "reason": f"{GOLD_FILE} is not in the data root (MIMIC-CXR-JPG 2.1.0 ships it; "
                                              "`make fetch` downloads it)"}
    if labels_of(predictions) != FINDINGS:   # the file labels MIMIC's 14 CheXpert findings, nothing else
        return {"available": False, "reason": f"{GOLD_FILE} labels the 14 CheXpert findings (label set chexpert14); "
                                              f"this run predicts label set {p.label_set}'s"}
    data_root = p.data_root if data_root is None else data_root
    section = {"available": True, "file": GOLD_FILE, "studies_in_file": int(len(gold)),
               "level": "study", "aggregate": p.study_aggregate, "label_source": p.label_source,
               "policies": {"uncertain": p.uncertain_policy, "blank": p.blank_policy},
               "agreement": agreement_table(data_root, gold, p).to_dict("records")}
    missing = [s for s in SOURCES if s not in {row["source"] for row in section["agreement"]}]
    if missing:
        section["agreement_missing"] = f"no {' or '.join(missing)} table in {data_root}: not compared"
    test = predictions[predictions["split"] == "test"]
    studies = scored_studies(levels.study_rows(test, p.study_aggregate), gold, p)
    section["studies_scored"] = int(len(studies))
    section["patients_scored"] = int(studies["subject_id"].nunique())
    if studies.empty:
        section["reason"] = ("none of the labelled studies is in this run's test split (they are official test "
                             "studies: use split_mode: official to score on them)")
        return section
    prob = studies[prob_columns(FINDINGS)].to_numpy(np.float64)
    groups = studies["subject_id"].to_numpy(str)
    y_gold = studies[[f"gold_{f}" for f in FINDINGS]].to_numpy(np.float64)
    y_nlp = studies[FINDINGS].to_numpy(np.float64)
    common = dict(groups=groups, n_boot=p.bootstrap, seed=p.seed, ci_level=p.ci_level,
                  min_positives=p.min_positives)
    section["model_vs_gold"] = metrics.summarize(y_gold, prob, **common)
    section["model_vs_nlp"] = metrics.summarize(y_nlp, prob, **common)   # same resamples: same patients, seed
    section["like_for_like"] = like_for_like(section, y_gold, y_nlp, prob, common)
    if thresholds:
        section["thresholds_vs_gold"] = threshold_metrics(y_gold, prob, thresholds).to_dict("records")
    return section


def like_for_like(section: dict, y_gold, y_nlp, prob, common: dict) -> dict | None:
    """The two macro AUROCs over the same findings: those both label sets can estimate. Each label set's own
    macro covers the findings it alone can estimate (13 against 7 in the demo), so set side by side they would
    compare different findings."""
    both = [f for f in section["model_vs_gold"]["macro_findings"] if f in section["model_vs_nlp"]["macro_findings"]]
    if not both:
        return None
    columns = [FINDINGS.index(f) for f in both]
    return {"findings": both,
            **{side: metrics.summarize(y[:, columns], prob[:, columns], findings=both, **common)["macro"]["auroc"]
               for side, y in (("gold", y_gold), ("nlp", y_nlp))}}


def comparison_table(section: dict) -> pd.DataFrame:
    """Per finding (then macro, micro): AUROC [CI] and AUPRC against the radiologists and the NLP labels."""
    if not section.get("model_vs_gold"):
        return pd.DataFrame()
    label = section["label_source"]
    columns = {}
    for name, key in (("radiologists", "model_vs_gold"), (label, "model_vs_nlp")):
        table = tables.frame(section[key]).set_index("finding")
        columns[f"{name}: positives"] = table["n_pos"]
        columns[f"{name}: AUROC [CI]"] = [with_ci(*row) for row in table[["auroc", "auroc_lo", "auroc_hi"]]
                                          .itertuples(index=False)]
        columns[f"{name}: AUPRC"] = table["auprc"]
        columns[f"{name}: auroc"] = table["auroc"]
    out = pd.DataFrame(columns)
    out["AUROC: radiologists - NLP"] = out["radiologists: auroc"] - out[f"{label}: auroc"]
    return out.drop(columns=["radiologists: auroc", f"{label}: auroc"])


def agreement_frame(section: dict) -> pd.DataFrame:
    return pd.DataFrame(section.get("agreement") or []).set_index(["source", "finding"])


def plot_agreement(section: dict):
    """Cohen's kappa per finding with its CI, NegBio and CheXpert side by side."""
    import matplotlib.pyplot as plt

    table = pd.DataFrame(section["agreement"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(FINDINGS) + 1))
    for k, (source, rows) in enumerate(table.groupby("source", sort=False)):
        y = np.arange(len(rows)) + (k - 0.5) * 0.3
        err = np.vstack([rows["kappa"] - rows["kappa_lo"], rows["kappa_hi"] - rows["kappa"]]).clip(min=0)
        ax.errorbar(rows["kappa"], y, xerr=np.nan_to_num(err), fmt="o", capsize=2, label=source)
    ax.set_yticks(np.arange(len(FINDINGS)), FINDINGS)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlim(-0.2, 1.0)
    ax.set_xlabel("Cohen's kappa against the radiologists (patient-bootstrap CI)")
    ax.legend(loc="lower left", frameon=False)
    fig.tight_layout()
    plt.close(fig)
    return fig
