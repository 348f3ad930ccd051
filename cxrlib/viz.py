"""Plots and browsers shared by the notebooks. Functions return matplotlib Figures (no plt.show).

Anything that draws patient pixels takes `redact` and draws nothing when it is set, so a
report made with `redact_images: true` holds no pixel data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .labels import FINDINGS


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
    fig, ax = plt.subplots(figsize=(9, 4.5))
    sns.barplot(data=prevalence, y="finding", x=value, hue="split", ax=ax, order=FINDINGS)
    ax.set_xlabel(value.replace("_", " "))
    ax.set_ylabel("")
    ax.set_title(f"{value.replace('_', ' ').capitalize()} per finding and split")
    fig.tight_layout()
    return fig


def cooccurrence(labels: pd.DataFrame) -> pd.DataFrame:
    """P(j positive | i positive): rows condition on i. Masked (NaN) labels count as not positive."""
    y = np.nan_to_num(labels[FINDINGS].to_numpy(dtype=float)) == 1
    both = y.T.astype(float) @ y.astype(float)
    n_pos = np.diag(both).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = both / n_pos[:, None]
    return pd.DataFrame(cond, index=FINDINGS, columns=FINDINGS)


def cooccurrence_heatmap(labels: pd.DataFrame):
    import seaborn as sns

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 7))
    sns.heatmap(cooccurrence(labels), annot=True, fmt=".2f", cmap="mako_r", vmin=0, vmax=1, ax=ax,
                annot_kws={"fontsize": 7}, cbar_kws={"label": "P(column | row)"})
    ax.set_title("Co-occurrence of positive findings: P(column positive | row positive)")
    fig.tight_layout()
    return fig


def examples_per_finding(cohort: pd.DataFrame, per_finding: int = 4, seed: int = 0) -> pd.DataFrame:
    """A few positive images per finding (rows of `cohort` with a `cache_row`), reproducibly."""
    rng = np.random.default_rng(seed)
    picks = []
    for f in FINDINGS:
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
    fig, axes = plt.subplots(len(FINDINGS), per_finding, figsize=(1.6 * per_finding, 1.6 * len(FINDINGS)))
    for ax in axes.ravel():
        ax.axis("off")
    for r, f in enumerate(FINDINGS):
        rows = picks.loc[picks["finding"] == f, "row"].to_numpy()
        axes[r, 0].set_title(f, fontsize=8, loc="left")
        for c, i in enumerate(rows):
            axes[r, c].imshow(images[int(cohort.at[i, "cache_row"])], cmap="gray", vmin=0, vmax=255)
    fig.suptitle("Positive examples per finding (from the image cache)", y=1.0)
    fig.tight_layout()
    return fig


def finding_browser(options, label: str, rows_for, show, empty: str = "no images", redact: bool = False):
    """ipywidgets: a finding, a choice among `options` and a slider over rows_for(finding, choice).

    show(row) draws one row with matplotlib; the notebooks' image and error browsers share this.
    """
    if redact:
        print("redact_images is on: no images shown.")
        return None
    import ipywidgets as W
    plt = _plt()

    finding = W.Dropdown(options=FINDINGS, description="finding")
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
        positives = [f for f in FINDINGS if row[f] == 1]
        info = [f"{row['dicom_id']}", f"split {row['split']}", "positive: " + (", ".join(positives) or "none")]
        info += [f"{c}: {row[c]}" for c in extra_columns if c in row]
        ax.set_title("\n".join(info), fontsize=7)

    return finding_browser([("positive", 1.0), ("negative", 0.0)], "label",
                           lambda finding, value: cohort.index[cohort[finding] == value].to_numpy(),
                           show, redact=redact)
