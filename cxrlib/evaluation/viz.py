"""Plots and browsers shared by the notebooks. Functions return matplotlib Figures (no plt.show).

Anything that draws patient pixels takes `redact` and draws nothing when it is set, so a
report made with `redact_images: true` holds no pixel data.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ..labels import cohort_labels, label_matrix, positive_weights
from ..stats.calibration import brier, ece, reliability_curve
from ..stats.inputs import check_inputs
from . import tables


def _plt():
    import matplotlib.pyplot as plt

    return plt


def funnel_plot(funnel: pd.DataFrame):
    """Horizontal bars of a funnel frame with columns step, count."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(funnel) + 1))
    ax.barh(funnel["step"][::-1], funnel["count"][::-1], color="#4c72b0")
    for y, v in enumerate(funnel["count"][::-1]):
        ax.text(v, y, f" {int(v):,}", va="center", fontsize=9)
    ax.set_xlabel("count")
    ax.set_title("Cohort funnel")
    fig.tight_layout()
    return fig


def prevalence_plot(prevalence: pd.DataFrame, value: str = "positive_rate"):
    """Per-finding rate by split: a frame with columns finding, split and `value`."""
    import seaborn as sns

    plt = _plt()
    order = list(dict.fromkeys(prevalence["finding"]))   # the run's labels, in output order
    fig, ax = plt.subplots(figsize=(9, max(4.5, 0.25 * len(order) + 1)))
    sns.barplot(data=prevalence, y="finding", x=value, hue="split", ax=ax, order=order)
    ax.set_xlabel(value.replace("_", " "))
    ax.set_ylabel("")
    ax.set_title(f"{value.replace('_', ' ').capitalize()} per finding and split")
    fig.tight_layout()
    return fig


def cooccurrence(labels: pd.DataFrame) -> pd.DataFrame:
    """P(j positive | i positive): rows condition on i. Masked (NaN) labels count as not positive."""
    names = cohort_labels(labels)
    y = np.nan_to_num(labels[names].to_numpy(dtype=float)) == 1
    both = y.T.astype(float) @ y.astype(float)
    n_pos = np.diag(both).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = both / n_pos[:, None]
    return pd.DataFrame(cond, index=names, columns=names)


def cooccurrence_heatmap(labels: pd.DataFrame):
    import seaborn as sns

    plt = _plt()
    table = cooccurrence(labels)
    big = len(table) > 20   # 40 labels: no numbers in the cells, which would not fit
    fig, ax = plt.subplots(figsize=(8.5, 7) if not big else (14, 12))
    sns.heatmap(table, annot=not big, fmt=".2f", cmap="mako_r", vmin=0, vmax=1, ax=ax,
                annot_kws={"fontsize": 7}, cbar_kws={"label": "P(column | row)"})
    ax.set_title("Co-occurrence of positive findings: P(column positive | row positive)")
    fig.tight_layout()
    return fig


def examples_per_finding(cohort: pd.DataFrame, per_finding: int = 4, seed: int = 0) -> pd.DataFrame:
    """A few positive images per finding (rows of `cohort` with a `cache_row`), reproducibly."""
    rng = np.random.default_rng(seed)
    picks = []
    for f in cohort_labels(cohort):
        pos = cohort.index[cohort[f] == 1].to_numpy()
        # permute positions, not the array: pandas hands out read-only arrays, which permutation refuses when empty
        for i in pos[rng.permutation(len(pos))[:per_finding]]:
            picks.append((f, i))
    return pd.DataFrame(picks, columns=["finding", "row"])


def image_grid(images, cohort: pd.DataFrame, per_finding: int = 4, seed: int = 0, redact: bool = False):
    """One row per finding, `per_finding` positive examples from the uint8 cache."""
    if redact:
        print("redact_images is on: no images drawn.")
        return None
    plt = _plt()
    picks = examples_per_finding(cohort, per_finding, seed)
    names = cohort_labels(cohort)
    fig, axes = plt.subplots(len(names), per_finding, figsize=(1.6 * per_finding, 1.6 * len(names)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, f in enumerate(names):
        rows = picks.loc[picks["finding"] == f, "row"].to_numpy()
        axes[r, 0].set_title(f, fontsize=8, loc="left")
        for c, i in enumerate(rows):
            axes[r, c].imshow(images[int(cohort.at[i, "cache_row"])], cmap="gray", vmin=0, vmax=255)
    fig.suptitle("Positive examples per finding (from the image cache)", y=1.0)
    fig.tight_layout()
    return fig


def finding_browser(options, label: str, rows_for, show, findings, empty: str = "no images", redact: bool = False):
    """ipywidgets: a finding, a choice among `options` and a slider over rows_for(finding, choice).

    show(row) draws one row with matplotlib; the notebooks' image and error browsers share this.
    """
    if redact:
        print("redact_images is on: no images shown.")
        return None
    import ipywidgets as W
    plt = _plt()

    finding = W.Dropdown(options=list(findings), description="finding")
    choice = W.ToggleButtons(options=options, description=label)
    index = W.IntSlider(min=0, max=0, description="image")
    out = W.Output()

    def draw(*_):
        rows = rows_for(finding.value, choice.value)
        index.max = max(len(rows) - 1, 0)
        with out:
            out.clear_output(wait=True)
            if not len(rows):
                print(empty)
                return
            show(rows[min(index.value, len(rows) - 1)])
            plt.show()

    for w in (finding, choice, index):
        w.observe(draw, names="value")
    draw()
    return W.VBox([W.HBox([finding, choice]), index, out])


def image_browser(images, cohort: pd.DataFrame, extra_columns=(), redact: bool = False):
    """Pick a finding and a label value, step through the cohort's images."""
    def show(i):
        row = cohort.loc[i]
        fig, ax = _plt().subplots(figsize=(4, 4))
        ax.imshow(images[int(row["cache_row"])], cmap="gray", vmin=0, vmax=255)
        ax.axis("off")
        positives = [f for f in cohort_labels(cohort) if row[f] == 1]
        info = [f"{row['dicom_id']}", f"split {row['split']}", "positive: " + (", ".join(positives) or "none")]
        info += [f"{c}: {row[c]}" for c in extra_columns if c in row]
        ax.set_title("\n".join(info), fontsize=7)

    return finding_browser([("positive", 1.0), ("negative", 0.0)], "label",
                           lambda finding, value: cohort.index[cohort[finding] == value].to_numpy(),
                           show, cohort_labels(cohort), redact=redact)


def plot_class_balance(balance: pd.DataFrame):
    """Prevalence and pos_weight per finding (the output of class_balance)."""
    import matplotlib.pyplot as plt

    fig, (ax_prev, ax_weight) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    names = balance.index[::-1]
    ax_prev.barh(names, balance["prevalence"][::-1], color="#4c72b0")
    ax_prev.set(xlabel="positive / (positive + negative)", title="Prevalence (training split)")
    ax_weight.barh(names, balance["pos_weight"][::-1], color="#dd8452")
    ax_weight.set(xlabel="negatives / positives", title="pos_weight (used when pos_weight: true)")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame):
    """Loss curves and the selection split's AUROC per epoch, with the kept epochs marked."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 3.8))
    split = history["eval_split"].iloc[0] if len(history) else "validate"
    ax_loss.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    ax_loss.plot(history["epoch"], history["val_loss"], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="masked BCE", title="Loss")
    ax_auc.plot(history["epoch"], history["val_auroc_macro"], marker="o", label="macro AUROC")
    ax_auc.plot(history["epoch"], history["val_auroc_micro"], marker="o", label="micro AUROC")
    kept = history[history["selected"].astype(bool)]
    if len(kept):
        best = kept.iloc[-1]
        for ax in (ax_loss, ax_auc):
            ax.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1, label=f"best epoch {best['epoch']}")
    ax_auc.set(xlabel="epoch", ylabel="AUROC", title=f"AUROC on {split}")
    for ax in (ax_loss, ax_auc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- metrics (notebook 03)
def _grid(n_panels: int, cols: int = 5, size: float = 2.6):
    from matplotlib.figure import Figure

    rows = -(-n_panels // cols)
    fig = Figure(figsize=(cols * size, rows * size + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _unit_square(ax, top: float = 1.0) -> None:
    """Axes on [0, 1] with three fixed ticks: automatic ticks on 15 small panels cost most of a figure's
    drawing time, twice over under the inline backend's tight bounding box."""
    ax.set(xlim=(0, 1), ylim=(0, top))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks([0, 0.5, 1], ["0", "0.5", "1"])
    ax.tick_params(labelsize=7)


def _ci_text(summary, name, metric) -> str:
    entry = (summary["per_finding"].get(name) or summary.get(name) or {}) if summary else {}
    e = entry.get(metric)
    if not e or e["value"] is None:
        return ""
    if entry.get("estimable") is False:   # the same mark as the tables: no CI, not averaged
        return f"{e['value']:.3f} (too few: no CI)"
    ci = f" [{e['lo']:.3f}, {e['hi']:.3f}]" if e["lo"] is not None else ""
    return f"{e['value']:.3f}{ci}"


def plot_curves(y, p, findings=None, summary: Optional[dict] = None, kind: str = "both"):
    """ROC and/or PR curves: one panel per finding plus one for all cells pooled (micro).

    kind: 'roc', 'pr' or 'both' (both curves share each unit square). Titles give the AUC,
    with its CI when `summary` (from summarize) is passed.
    """
    y, p, findings = check_inputs(y, p, findings)
    fig, axes = _grid(len(findings) + 1)
    known = ~np.isnan(y)
    problems = [(name, known[:, j], j) for j, name in enumerate(findings)] + [("micro", known, None)]
    for ax, (name, mask, j) in zip(axes, problems):
        t, s = (y[mask, j], p[mask, j]) if j is not None else (y[mask], p[mask])
        _unit_square(ax, top=1.02)
        ax.set_aspect("equal")
        if not 0 < t.sum() < t.size:
            ax.set_title(f"{name}\none class only", fontsize=8)
            continue
        title = [name]
        if kind in ("roc", "both"):
            fpr, tpr, _ = roc_curve(t, s)
            ax.plot(fpr, tpr, color="#4c72b0", lw=1.2, label="ROC")
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
            title.append("AUROC " + (_ci_text(summary, name, "auroc") or f"{roc_auc_score(t, s):.3f}"))
        if kind in ("pr", "both"):
            precision, recall, _ = precision_recall_curve(t, s)
            ax.step(recall, precision, where="post", color="#dd8452", lw=1.2, label="PR")
            ax.axhline(t.mean(), color="#dd8452", lw=0.8, ls=":")
            title.append("AUPRC " + (_ci_text(summary, name, "auprc") or f"{average_precision_score(t, s):.3f}"))
        ax.set_title("\n".join(title), fontsize=8)
    axes[0].legend(fontsize=7, loc="lower right")
    axis = {"roc": ("FPR", "TPR"), "pr": ("recall", "precision"), "both": ("FPR | recall", "TPR | precision")}[kind]
    fig.supxlabel(axis[0], fontsize=9)
    fig.supylabel(axis[1], fontsize=9)
    return fig


def plot_forest(summary: dict):
    """Per-finding AUROC and AUPRC with their CIs (then macro and micro); dots mark AUPRC's chance level.

    A finding below min_positives is drawn hollow with no interval ('too few'); a CI that rests on fewer
    than metrics.CONDITIONAL_SHARE of the resamples is dashed and its label says so.
    """
    from matplotlib.figure import Figure

    table = tables.frame(summary)
    fig = Figure(figsize=(10, 0.3 * len(table) + 1.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ypos = np.arange(len(table))[::-1]
    estimable = ~table["note"].str.startswith("too few").to_numpy()
    conditional = table["note"].str.contains("conditional").to_numpy()
    for ax, m, chance in zip(axes, ("auroc", "auprc"), (0.5, None)):
        value = table[m].to_numpy(dtype=float, na_value=np.nan)
        lo = table[f"{m}_lo"].to_numpy(float, na_value=np.nan)
        hi = table[f"{m}_hi"].to_numpy(float, na_value=np.nan)
        for dashed in (False, True):
            rows = estimable & (conditional == dashed)
            bars = ax.errorbar(value[rows], ypos[rows], xerr=np.nan_to_num(np.abs([value[rows] - lo[rows],
                                                                                    hi[rows] - value[rows]])),
                               fmt="o", ms=4, color="#4c72b0", capsize=2)
            if dashed:
                for line in bars[2]:
                    line.set_linestyle("--")
        ax.plot(value[~estimable], ypos[~estimable], "o", ms=4, mfc="white", color="#4c72b0")
        if chance is not None:
            ax.axvline(chance, color="0.6", lw=0.8, ls=":")
        else:
            prevalence = (table["n_pos"] / table["n"]).to_numpy(dtype=float, na_value=np.nan)
            ax.plot(prevalence, ypos, "|", color="0.5", ms=8, label="prevalence (chance)")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{m.upper()} ({summary['ci_level']:.0%} CI, {summary['n_boot']} patient resamples)", fontsize=8)
        ax.grid(axis="x", lw=0.3)
    labels = [f"{name} ({n_pos})" if isinstance(n_pos, (int, np.integer)) and name != "micro" else name
              for name, n_pos in zip(table["finding"], table["n_pos"].astype(object).where(table["n_pos"].notna()))]
    labels = [label + (" - too few: no CI" if not ok else " - CI conditional" if cond else "")
              for label, ok, cond in zip(labels, estimable, conditional)]
    labels[-2] = (f"macro ({len(summary.get('macro_findings', []))} of {len(summary['per_finding'])})"
                  + (" - CI conditional" if conditional[-2] else ""))
    axes[0].set_yticks(ypos, labels, fontsize=8)
    fig.suptitle(f"Positives in brackets; hollow: fewer than {summary.get('min_positives', '?')} positive or negative "
                 "units (no CI, not in the macro); dashed: a CI conditional on the resamples that kept both classes",
                 fontsize=8)
    return fig


def plot_reliability(y, p, n_bins: int = 10, strategy: str = "uniform", findings=None, per_finding: bool = False):
    """Reliability diagram (observed rate against mean prediction; bars: share of images per bin).

    Pooled over all cells; with per_finding=True one panel per finding plus the pooled one.
    """
    y, p, findings = check_inputs(y, p, findings)
    panels = [("pooled", y, p)]
    if per_finding:
        panels = [(name, y[:, j], p[:, j]) for j, name in enumerate(findings)] + panels
    fig, axes = _grid(len(panels), cols=5 if per_finding else 1, size=2.6 if per_finding else 4.5)
    for ax, (name, yy, pp) in zip(axes, panels):
        curve = reliability_curve(yy, pp, n_bins, strategy)
        share = curve["count"] / max(curve["count"].sum(), 1)
        ax.bar((curve["lo"] + curve["hi"]) / 2, share, width=curve["hi"] - curve["lo"], color="0.85", label="share")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        used = curve[curve["count"] > 0]
        ax.plot(used["mean_pred"], used["frac_pos"], "o-", ms=3, color="#4c72b0", label="observed")
        _unit_square(ax)
        ax.set_title(f"{name}\nECE {ece(yy, pp, n_bins, strategy):.3f}  Brier {brier(yy, pp):.3f}", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.supxlabel("mean predicted probability", fontsize=9)
    fig.supylabel("observed positive rate", fontsize=9)
    return fig


# --------------------------------------------------------------------------- training (notebook 02)
def class_balance(cohort: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """Per finding on one split: positives, negatives, masked, prevalence and the pos_weight fit would use."""

    frame = cohort[cohort["split"] == split]
    labels = label_matrix(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = positive_weights(labels) if len(frame) else np.ones(labels.shape[1])
    pos = (labels == 1).sum(axis=0)
    neg = (labels == 0).sum(axis=0)
    masked = np.isnan(labels).sum(axis=0)
    return pd.DataFrame({"positive": pos, "negative": neg, "masked": masked,
                         "prevalence": pos / np.maximum(pos + neg, 1), "pos_weight": weights},
                        index=pd.Index(cohort_labels(cohort), name="finding"))
