"""Notebook 04: where the model is wrong on the test set, and what the errors have in common.

Every table here reads the run's predictions.csv and metrics.json (notebook 03). An error is
counted at the finding's threshold chosen on the VALIDATION split (max F1, metrics.json), or at
the fixed 0.5 when the run has no validation split. Breakdowns:
  - the worst false positives and negatives per finding, with Grad-CAM on the best checkpoint;
  - the source label's uncertainty (-1 in NegBio/CheXpert, mapped by the run's policy);
  - image properties from the metadata (Rows x Columns, orientation, ViewPosition);
  - co-occurring findings: is a finding missed more often when another one is present?
Anything that draws pixels takes `redact` and draws nothing when it is set.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import labelset
from ..data.cohort import load_raw_labels, table_path
from ..errors import UserError
from ..labels import UNCERTAIN_POLICIES, per_finding
from ..runfiles import labels_of, prob_column, prob_columns
from ..stats import metrics
from .viz import finding_browser

KINDS = {"FP": "false positives: label 0, highest probability",
         "FN": "false negatives: label 1, lowest probability"}
SOURCE_GROUPS = {1.0: "positive", -1.0: "uncertain", 0.0: "negative"}  # and NaN: blank


# --------------------------------------------------------------------------- inputs
def test_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise UserError("predictions.csv holds no test rows; rerun notebook 03 for this run")
    return test


def fitted_for(report: dict, unit: str | None = None) -> tuple[dict, dict | None, str]:
    """(thresholds section, recalibration map, the unit they were fitted on) of metrics.json for what scores
    `unit`s. "image" (predict, the export, notebook 04, an external source whose studies are single images): those
    fitted on validation images (image_level), since a threshold tuned on study means is not one for an image.
    None, or the run's own level: the headline's own."""
    own = (report.get("level") or {}).get("headline", "image")
    image_level = report.get("image_level") or {}
    if unit == "image" and image_level.get("thresholds"):
        return image_level["thresholds"], image_level.get("recalibration"), "image"
    if unit == "image" and own != "image":   # a metrics.json from before image_level: say what is being applied
        return (report["thresholds"], report.get("recalibration"),
                f"{own} (metrics.json predates image-level thresholds; rerun 03)")
    return report["thresholds"], report.get("recalibration"), own


def thresholds_from_report(report: dict, rule: str = "f1", level: str | None = None) -> tuple[dict, str]:
    """{finding: threshold} from metrics.json and a sentence saying where each came from.

    The rule's threshold chosen on validation; the fixed 0.5 where there is none (no validation
    split, or a finding with one class on it). Never a threshold chosen on the test set.
    level: None for the run's own eval_level (the audit, which scores the same units); "image" for what
    scores single images (predict, export, notebook 04): the thresholds chosen on validation images.
    """
    section, _, unit = fitted_for(report, level)
    values = section["values"]
    chosen, fallback = {}, []
    for f in values:   # the run's labels, in output order (validation_rules wrote them so)
        cut = values.get(f, {}).get(rule) if section.get("chosen_on") == "validate" else None
        if cut is None:
            fallback.append(f)
            cut = values.get(f, {}).get("fixed_0.5", 0.5)
        chosen[f] = float(cut)
    note = (f"thresholds: max-{rule.upper()} on the validation split, per {unit}" if section.get("chosen_on") else
            "thresholds: fixed 0.5 (the run has no validation split)")
    if fallback and len(fallback) < len(values):
        note += f"; fixed 0.5 for {', '.join(fallback)} (one class on validation)"
    return chosen, note


def errors_at(test: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    """Per image and finding: 1 where the call at the threshold disagrees with the label, NaN where masked."""
    names = labels_of(test)
    y = test[names].to_numpy(dtype=np.float64)
    called = test[prob_columns(names)].to_numpy(dtype=np.float64) >= np.array([thresholds[f] for f in names])
    wrong = np.where(np.isnan(y), np.nan, (called != (y == 1)).astype(np.float64))
    return pd.DataFrame(wrong, columns=names, index=test.index)


# --------------------------------------------------------------------------- worst errors
def top_errors(predictions: pd.DataFrame, k: int, split: str = "test") -> pd.DataFrame:
    """Per finding the k most confident false positives and the k most confident false negatives.

    FP: label 0, highest probability first; FN: label 1, lowest first (ties broken by dicom_id, so the
    choice is reproducible). These are the worst-ranked images whatever the threshold.
    """
    rows = predictions[predictions["split"] == split]
    names = labels_of(predictions)
    labels = rows[names].to_numpy(dtype=np.float64)
    out = []
    for j, f in enumerate(names):
        for kind, label, ascending in (("FP", 0.0, False), ("FN", 1.0, True)):
            chosen = rows[labels[:, j] == label].sort_values([prob_column(f), "dicom_id"],
                                                             ascending=[ascending, True], kind="stable").head(k)
            for rank, (_, r) in enumerate(chosen.iterrows(), start=1):
                others = [g for g in names if g != f and r[g] == 1]
                out.append({"finding": f, "kind": kind, "rank": rank, "dicom_id": r["dicom_id"],
                            "subject_id": r["subject_id"], "study_id": r["study_id"], "p": float(r[prob_column(f)]),
                            "label": label, "other_positives": ", ".join(others)})
    columns = ["finding", "kind", "rank", "dicom_id", "subject_id", "study_id", "p", "label", "other_positives"]
    return pd.DataFrame(out, columns=columns)


def error_images(run_dir, p, errors: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images (n, S, S) from the cache, Grad-CAM maps (n, S, S) in [0, 1], a sentence saying which
    layer the maps come from and how fine they are) for the rows of `errors`.

    Each map is for that row's finding, from the run's best checkpoint (an ensemble: its members' mean map).
    """
    from .kinds import open_run  # lazy: keeps torch out of this module's import

    return open_run(run_dir).error_images(p, errors)


def error_gallery(errors: pd.DataFrame, images, cams, finding: str, redact: bool = False):
    """One finding's worst FPs and FNs: rows FP image, FP Grad-CAM, FN image, FN Grad-CAM. None when redacted."""
    if redact:
        return None
    from matplotlib import cm, colors
    from matplotlib.figure import Figure

    from .explain import CAM_COLORMAP, overlay  # lazy: keeps torch out of this module's import

    chosen = errors[errors["finding"] == finding]
    k = int(max(chosen["rank"].max() if len(chosen) else 1, 1))
    fig = Figure(figsize=(1.9 * k + 0.6, 8.2), layout="constrained")
    axes = fig.subplots(4, k, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, kind in enumerate(("FP", "FN")):
        part = chosen[chosen["kind"] == kind]
        axes[2 * r, 0].text(-0.08, 0.5, kind, transform=axes[2 * r, 0].transAxes, rotation=90, va="center",
                            ha="right", fontsize=10, fontweight="bold")
        if part.empty:
            axes[2 * r, 0].set_title(f"no {'negatives' if kind == 'FP' else 'positives'} on test", fontsize=7)
        for c, (i, row) in enumerate(part.iterrows()):
            axes[2 * r, c].imshow(images[i], cmap="gray", vmin=0, vmax=255)
            axes[2 * r, c].set_title(f"#{row['rank']} p={row['p']:.3f}\n{row['dicom_id'][:8]}", fontsize=7)
            axes[2 * r + 1, c].imshow(overlay(images[i], cams[i]))
            blank = not np.asarray(cams[i]).any()
            axes[2 * r + 1, c].set_title("Grad-CAM: blank*" if blank else "Grad-CAM", fontsize=7)
    fig.colorbar(cm.ScalarMappable(colors.Normalize(0, 1), CAM_COLORMAP), ax=axes[1::2, :].ravel().tolist(),
                 shrink=0.6, label="Grad-CAM, share of the map's peak")
    fig.suptitle(f"{finding}: most confident errors on test (FP: label 0, highest p; FN: label 1, lowest p)",
                 fontsize=9)
    if any(not np.asarray(cams[i]).any() for i in chosen.index):
        fig.supxlabel("* blank: no region raises this finding's score (Grad-CAM keeps only evidence for the finding).\n"
                      "For a false negative that is the error itself: the model saw no sign of the finding.", fontsize=7)
    return fig


# --------------------------------------------------------------------------- label uncertainty
def uncertainty_table(test: pd.DataFrame, raw: pd.DataFrame, thresholds: dict, uncertain_policy="zeros") -> pd.DataFrame:
    """Per finding, how the model treats images whose SOURCE label was uncertain (-1).

    raw: the source rows aligned with `test` (cohort.load_raw_labels(..., study_ids=test.study_id)).
    "Certain" images are all the others (source 1, 0 or blank) with a target. mean_p_*: mean
    probability by source value. auroc_as_labelled: every image with its target (notebook 03's
    figure); auroc_certain: the certain images only. auroc_uncertain_vs_negative: the uncertain
    images ranked against the certain negatives (0.5: they look like negatives; near auroc_certain:
    like positives). error_rate_*: share of wrong calls at the threshold against the target the
    policy gave (uncertain: NaN when the policy masks them).
    """
    if len(raw) != len(test) or not (raw["study_id"].to_numpy(dtype=str) == test["study_id"].to_numpy(dtype=str)).all():
        raise ValueError("raw labels must be aligned with the test rows: load them with study_ids=test['study_id']")
    names = labels_of(test)
    policy = per_finding(uncertain_policy, UNCERTAIN_POLICIES, "uncertain_policy", names)
    wrong = errors_at(test, thresholds)
    rows = []
    for f in names:
        source = raw[f].to_numpy(dtype=np.float64)
        target = test[f].to_numpy(dtype=np.float64)
        prob = test[prob_column(f)].to_numpy(dtype=np.float64)
        groups = {name: source == value for value, name in SOURCE_GROUPS.items()} | {"blank": np.isnan(source)}
        row = {"finding": f, "uncertain_policy": policy[f]}
        for name, mask in groups.items():
            row[f"n_{name}"] = int(mask.sum())
        for name, mask in groups.items():
            row[f"mean_p_{name}"] = float(prob[mask].mean()) if mask.any() else np.nan
        labelled = ~np.isnan(target)
        certain = labelled & ~groups["uncertain"]
        row["auroc_as_labelled"] = _auroc(target[labelled] == 1, prob[labelled])
        row["auroc_certain"] = _auroc(target[certain] == 1, prob[certain])
        versus = groups["uncertain"] | (certain & (target == 0))
        row["auroc_uncertain_vs_negative"] = _auroc(groups["uncertain"][versus], prob[versus])
        errors = wrong[f].to_numpy()
        row["error_rate_certain"] = _mean(errors[certain])
        row["error_rate_uncertain"] = _mean(errors[groups["uncertain"]])
        rows.append(row)
    return pd.DataFrame(rows).set_index("finding")


def _auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.size == 0 or positive.all() or not positive.any():
        return np.nan
    return float(roc_auc_score(positive, scores))


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else np.nan


def run_uncertainty(p, test: pd.DataFrame, thresholds: dict) -> tuple[pd.DataFrame | None, str]:
    """uncertainty_table for the run's label set's source labels, and a sentence; None where the set has no
    uncertain label (0/1 sets such as CXR-LT's)."""
    lset = labelset.load(p.label_set)
    if lset.encoding != "chexpert" or lset.splits != "release":
        return None, f"label set {lset.name} is {lset.encoding} (no uncertain label): nothing to analyse here"
    raw = load_raw_labels(p.data_root, p.label_source, test["study_id"])
    return uncertainty_table(test, raw, thresholds, p.uncertain_policy), f"source labels: {p.label_source}"


def plot_uncertainty(table: pd.DataFrame):
    """Mean predicted probability per finding by source label: positive, uncertain, negative, blank."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.32 * len(table) + 1.3), layout="constrained")
    ax = fig.subplots()
    ypos = np.arange(len(table))[::-1]
    styles = {"positive": ("o", "#c44e52"), "uncertain": ("D", "#dd8452"), "negative": ("s", "#4c72b0"),
              "blank": ("x", "0.5")}
    for name, (marker, color) in styles.items():
        n = table[f"n_{name}"].to_numpy()
        values = table[f"mean_p_{name}"].to_numpy(dtype=float)
        ax.scatter(values, ypos, marker=marker, color=color, s=np.where(n > 0, 28, 0),
                   label=f"source {name} ({int(n.sum())})")
    ax.set_yticks(ypos, table.index, fontsize=8)
    ax.set_xlabel("mean predicted probability on test", fontsize=8)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Does the model treat uncertain (-1) source labels like positives or negatives?", fontsize=9)
    return fig


# --------------------------------------------------------------------------- image properties
def read_metadata_columns(data_root, columns=("ViewPosition", "Rows", "Columns")) -> pd.DataFrame:
    """dicom_id and extra metadata columns (cohort.read_table keeps only the ones the cohort needs)."""

    path = table_path(data_root, "metadata")
    wanted = ["dicom_id", *columns]
    found = list(pd.read_csv(path, nrows=0).columns)
    missing = [c for c in wanted if c not in found]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; columns found: {found}. Is it the original "
                        "mimic-cxr-2.0.0-metadata table? Re-download it with `make fetch`.")
    frame = pd.read_csv(path, usecols=wanted, dtype={"dicom_id": str, "ViewPosition": str})
    return frame.drop_duplicates("dicom_id")[wanted]


def with_image_properties(test: pd.DataFrame, metadata: pd.DataFrame, top_sizes: int = 5) -> pd.DataFrame:
    """The test rows with ViewPosition, Rows, Columns, orientation and `size` (Rows x Columns; rare ones: other)."""
    frame = test.merge(metadata, on="dicom_id", how="left", validate="one_to_one")
    rows, cols = frame["Rows"].to_numpy(dtype=float), frame["Columns"].to_numpy(dtype=float)
    frame["orientation"] = np.select([rows > cols, rows < cols, rows == cols], ["portrait", "landscape", "square"],
                                     "unknown")
    size = pd.Series([f"{int(r)}x{int(c)}" if r == r and c == c else "unknown" for r, c in zip(rows, cols)],
                     index=frame.index)
    common = size.value_counts().index[:top_sizes]
    frame["size"] = size.where(size.isin(common), "other")
    return frame


def breakdown(frame: pd.DataFrame, by: str, thresholds: dict, n_boot: int = 200, seed: int = 0,
              ci_level: float = 0.95) -> pd.DataFrame:
    """Per value of `by`: images, error rate at the thresholds, Brier, and micro AUROC with its patient-bootstrap CI.

    Micro AUROC (all labelled cells pooled) is used because a group rarely holds both classes of
    every finding; macro AUROC is given over the findings that do.
    """
    wrong = errors_at(frame, thresholds)
    names = labels_of(frame)
    rows = []
    for value, part in frame.groupby(by, sort=True):
        y = part[names].to_numpy(dtype=np.float64)
        prob = part[prob_columns(names)].to_numpy(dtype=np.float64)
        known = ~np.isnan(y)
        row = {by: value, "images": len(part), "patients": part["subject_id"].nunique(), "labelled_cells": int(known.sum()),
               "error_rate": _mean(wrong.loc[part.index].to_numpy().ravel()),
               "brier": float(np.mean((prob[known] - y[known]) ** 2)) if known.any() else np.nan}
        summary = metrics.summarize(y, prob, part["subject_id"].to_numpy(dtype=str), n_boot=n_boot, seed=seed,
                                    ci_level=ci_level, findings=names)
        micro = summary["micro"]["auroc"]
        row.update(auroc_micro=micro["value"], auroc_micro_lo=micro["lo"], auroc_micro_hi=micro["hi"],
                   auroc_macro=summary["macro"]["auroc"]["value"],
                   findings_in_macro=len(summary["macro_findings"]))
        rows.append(row)
    table = pd.DataFrame(rows).set_index(by)
    return table.astype({c: "Float64" for c in ("auroc_micro", "auroc_micro_lo", "auroc_micro_hi", "auroc_macro")})


def plot_breakdown(table: pd.DataFrame, title: str):
    """Micro AUROC with its CI and the error rate per group; bar labels give the image counts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 0.4 * len(table) + 1.4), layout="constrained")
    ax_auc, ax_err = fig.subplots(1, 2, sharey=True)
    ypos = np.arange(len(table))[::-1]
    value = table["auroc_micro"].to_numpy(dtype=float, na_value=np.nan)
    err = np.abs(np.vstack([value - table["auroc_micro_lo"].to_numpy(dtype=float, na_value=np.nan),
                            table["auroc_micro_hi"].to_numpy(dtype=float, na_value=np.nan) - value]))
    ax_auc.errorbar(value, ypos, xerr=np.nan_to_num(err), fmt="o", color="#4c72b0", capsize=2)
    ax_auc.axvline(0.5, color="0.6", ls=":", lw=0.8)
    ax_auc.set(xlim=(0, 1), xlabel="micro AUROC (patient-bootstrap CI)")
    ax_err.barh(ypos, table["error_rate"].to_numpy(dtype=float), color="#dd8452")
    for y, (rate, n) in zip(ypos, zip(table["error_rate"], table["images"])):
        ax_err.text(0 if rate != rate else rate, y, f" n={n}", va="center", fontsize=7)
    ax_err.set(xlim=(0, 1), xlabel="error rate at the thresholds (labelled cells)")
    ax_auc.set_yticks(ypos, [str(i) for i in table.index], fontsize=8)
    for ax in (ax_auc, ax_err):
        ax.grid(axis="x", lw=0.3)
    fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- co-occurring findings
def fn_by_cooccurrence(test: pd.DataFrame, thresholds: dict, min_n: int = 5) -> pd.DataFrame:
    """For each finding (row) and other finding: the FN rate among its positives when the other is present vs absent.

    `difference` = fn_rate_present - fn_rate_absent; NaN unless both groups hold at least min_n positives.
    """
    names = labels_of(test)
    y = test[names].to_numpy(dtype=np.float64)
    prob = test[prob_columns(names)].to_numpy(dtype=np.float64)
    rows = []
    for i, f in enumerate(names):
        positives = y[:, i] == 1
        missed = prob[:, i] < thresholds[f]
        for j, g in enumerate(names):
            if i == j:
                continue
            present, absent = positives & (y[:, j] == 1), positives & (y[:, j] == 0)
            n_p, n_a = int(present.sum()), int(absent.sum())
            rate_p = missed[present].mean() if n_p else np.nan
            rate_a = missed[absent].mean() if n_a else np.nan
            enough = n_p >= min_n and n_a >= min_n
            rows.append({"finding": f, "other": g, "n_present": n_p, "fn_rate_present": rate_p, "n_absent": n_a,
                         "fn_rate_absent": rate_a, "difference": rate_p - rate_a if enough else np.nan})
    table = pd.DataFrame(rows)
    table.attrs["min_n"] = min_n
    return table


def plot_cooccurrence(table: pd.DataFrame):
    """Heatmap of FN-rate differences (row finding missed more often when the column finding is present: red)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(table["finding"]))   # the run's labels, in output order
    matrix = table.pivot(index="finding", columns="other", values="difference").reindex(index=names, columns=names)
    fig = Figure(figsize=(9.5, 7.5), layout="constrained")
    ax = fig.subplots()
    annot = matrix.map(lambda v: "" if v != v else f"{v:+.2f}")
    sns.heatmap(matrix.astype(float), ax=ax, cmap="vlag", center=0, vmin=-1, vmax=1, annot=annot, fmt="",
                annot_kws={"fontsize": 6}, mask=matrix.isna(), linewidths=0.3, linecolor="0.9",
                cbar_kws={"label": "FN rate (column present) - FN rate (column absent)"})
    ax.set_xlabel("co-occurring finding", fontsize=8)
    ax.set_ylabel("missed finding", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("Is a finding missed more often when another is present? (test split; blank: fewer than "
                 f"{table.attrs.get('min_n', 5)} positives with or without the other finding)", fontsize=8)
    return fig


# --------------------------------------------------------------------------- browser
def error_browser(errors: pd.DataFrame, images, cams, redact: bool = False):
    """ipywidgets: pick a finding, FP or FN and an index; shows the image and its Grad-CAM."""
    import matplotlib.pyplot as plt

    from .explain import overlay  # lazy: keeps torch out of this module's import

    def show(i):
        row = errors.loc[i]
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        axes[0].imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes[1].imshow(overlay(images[i], cams[i]))
        for ax in axes:
            ax.axis("off")
        axes[0].set_title(f"{row['dicom_id']}\n{row['kind']} #{row['rank']}: p({row['finding']}) = {row['p']:.3f}",
                          fontsize=8)
        axes[1].set_title("Grad-CAM; other positives: " + (row["other_positives"] or "none"), fontsize=8)

    return finding_browser(list(KINDS), "error",
                           lambda finding, kind: errors.index[(errors["finding"] == finding)
                                                              & (errors["kind"] == kind)].to_numpy(),
                           show, list(dict.fromkeys(errors["finding"])), empty="no such errors on test", redact=redact)
