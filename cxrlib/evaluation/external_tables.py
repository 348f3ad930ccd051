"""Notebook 07's tables and plots, all from an external validation's metrics.json (evaluation.external)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .readable import table as readable
from .tables import red_box


def warnings_html(report: dict) -> str | None:
    """A bold red box when the validation is not independent (the starting weights saw this source)."""
    found = report.get("warnings") or []
    return "".join(red_box(w) for w in found) or None


def headline(report: dict) -> pd.DataFrame:
    """One headline: the external macro AUROC over the exact findings the primary drop compares, beside the run's
    own test split on the same findings (and why that differs from the run's headline); the approximately
    mapped findings apart, labelled, outside the decision."""
    rows = []
    macro, drop = report.get("macro") or {}, report["drop"]
    exact, approximate, own = macro.get("exact"), macro.get("approximate"), macro.get("run_headline") or {}
    if exact:
        names = ", ".join(exact["findings"])
        figure = exact["auroc"]
        rows.append({"figure": f"external macro AUROC, {len(exact['findings'])} exact findings ({names})",
                     "value": figure["value"], "lo": figure["lo"], "hi": figure["hi"]})
    if drop:
        n = len(drop["findings"])
        note = (f" (the run's headline, {own['value']:.3f}, averages its {own['findings']} estimable findings)"
                if own.get("value") is not None else "")
        rows += [{"figure": f"internal macro AUROC, the same {n} findings{note}", "value": drop["internal"]},
                 {"figure": "drop, internal minus external (primary)", "value": drop["value"], "lo": drop["lo"],
                  "hi": drop["hi"], "p_value": drop["p_value"]}]
    if approximate:
        figure = approximate["auroc"]
        rows.append({"figure": f"approximately mapped, apart (not in the decision): macro AUROC over "
                               f"{', '.join(approximate['findings'])}",
                     "value": figure["value"], "lo": figure["lo"], "hi": figure["hi"]})
    return readable(pd.DataFrame(rows).set_index("figure")) if rows else pd.DataFrame()


def verdict(report: dict) -> str:
    drop = report["drop"]
    level = f"{int(round(100 * report['ci']['level']))}%"
    if not drop:
        return ("no exactly mapped finding has enough positives and negatives on both sides: no primary "
                "comparison (see the per-finding table)")
    direction = "lower" if drop["value"] > 0 else "higher"
    if drop["reported"]:
        return (f"DROP REPORTED: the external macro AUROC over {len(drop['findings'])} exact findings is "
                f"{abs(drop['value']):.3f} {direction} than on the run's own test split, {level} CI "
                f"[{drop['lo']:.3f}, {drop['hi']:.3f}] excludes 0")
    if drop.get("direction") == "higher":
        return (f"no drop; the external macro AUROC is HIGHER by {-drop['value']:.3f}, {level} CI of the drop "
                f"[{drop['lo']:.3f}, {drop['hi']:.3f}] below 0: cleaner labels or an easier case mix, worth a look")
    return (f"no drop reported: internal minus external macro AUROC {drop['value']:+.3f}, {level} CI "
            f"[{drop['lo']:.3f}, {drop['hi']:.3f}] includes 0")


def per_finding(report: dict) -> pd.DataFrame:
    """Each finding: how the source maps it, its external counts and AUROC/AUPRC with CIs, and its drop."""
    status = report["label_map"]["status"]
    per = (report["summary"] or {}).get("per_finding", {})
    drops = {row["finding"]: row for row in (report["drop"] or {}).get("per_finding", [])}
    rows = []
    for finding, state in status.items():
        entry, drop = per.get(finding), drops.get(finding, {})
        row = {"finding": finding, "map": state}
        if entry:
            row.update(positives=entry["n_pos"], negatives=entry["n_neg"], auroc=entry["auroc"]["value"],
                       auroc_lo=entry["auroc"]["lo"], auroc_hi=entry["auroc"]["hi"], auprc=entry["auprc"]["value"],
                       note="" if entry["estimable"] else "too few: no CI, not averaged")
        if drop:
            row.update(internal_auroc=drop["internal"], drop=drop["drop"], drop_lo=drop["lo"], drop_hi=drop["hi"],
                       p_holm=drop["p_holm"])
        rows.append(row)
    table = pd.DataFrame(rows).set_index("finding")
    counts = [c for c in ("positives", "negatives") if c in table]
    return readable(table.astype({c: "Int64" for c in counts}))   # counts, not 129.000


def map_table(report: dict):
    """The label map, each reason whole (a DataFrame's display cuts long cells with an ellipsis)."""
    from IPython.display import HTML

    return HTML(pd.DataFrame(report["map_table"]).set_index("finding").to_html(escape=True))


def thresholds(report: dict) -> pd.DataFrame:
    """Sensitivity, specificity and PPV at the run's validation max-F1 thresholds, external beside internal."""
    keep = ["finding", "threshold", "n", "sensitivity", "specificity", "ppv"]
    rule = report["thresholds"]["rule"]
    external = pd.DataFrame(report["thresholds"]["external"])
    internal = pd.DataFrame(report["thresholds"]["internal"])
    if external.empty:
        return external
    external = external[external["rule"] == rule][keep].set_index("finding")
    if not internal.empty:
        internal = internal[internal["rule"] == rule][keep[2:] + ["finding"]].set_index("finding")
        external = external.join(internal.add_prefix("internal_"))
    return readable(external)


def calibration(report: dict) -> pd.DataFrame:
    return readable(pd.DataFrame(report["calibration"]["per_finding"]).set_index("finding"))


def audit(report: dict) -> pd.DataFrame:
    rows = pd.DataFrame(report["audit"])
    if rows.empty:
        return rows
    columns = ["attribute", "group", "reference", "metric", "value", "lo", "hi", "gap", "gap_lo", "gap_hi",
               "p_adjusted", "significant"]
    return readable(rows.reindex(columns=columns))


def plot_drop(report: dict):
    """Internal and external AUROC per compared finding, with the drop's interval."""
    import matplotlib.pyplot as plt  # lazy: matplotlib, for plotting in the notebook only

    rows = pd.DataFrame((report["drop"] or {}).get("per_finding", []))
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * max(len(rows), 2) + 1.2))
    if rows.empty:
        ax.text(0.5, 0.5, "no finding compared", ha="center")
        return fig
    y = np.arange(len(rows))
    ax.errorbar(rows["drop"], y, xerr=[rows["drop"] - rows["lo"], rows["hi"] - rows["drop"]], fmt="o", color="C3",
                capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(y, rows["finding"])
    ax.invert_yaxis()
    ax.set_xlabel(f"AUROC drop, internal minus external ({int(100 * report['ci']['level'])}% CI, per finding)")
    ax.set_title(f"{report['source']}: {report['level']}-level AUROC, run {report['run']}")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_intensity(report: dict):
    """The grey-level histograms of the cached (model-input) internal and external images."""
    import matplotlib.pyplot as plt  # lazy: matplotlib, for plotting in the notebook only

    fig, ax = plt.subplots(figsize=(6.5, 3))
    for side, colour in (("internal", "C0"), ("external", "C1")):
        share = np.asarray(report["intensity"][side])
        if share.size:
            mean = float((share * np.arange(256)).sum())
            ax.plot(np.arange(256), share, color=colour, label=f"{side} (mean grey {mean:.0f})")
    ax.set_xlabel("grey level of the cached images (the model's input before normalisation)")
    ax.set_ylabel("share of pixels")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def planted(data_root) -> dict | None:
    """The synthetic stand-in's PLANTED.json, or None (real data)."""
    path = Path(data_root) / "PLANTED.json"
    return json.loads(path.read_text()) if path.is_file() else None


def planted_lines(report: dict, data_root) -> list[str]:
    """On a synthetic stand-in (a PLANTED.json in its folder): what was planted and whether the drop was found."""
    shift = planted(data_root)
    if shift is None:
        return ["no PLANTED.json in the source's folder: real data, nothing was planted"]
    found = bool(report["drop"] and report["drop"]["reported"])
    expected = shift["shift"] == "planted"
    lines = [f"planted: {shift['shift']} ({shift['expect']})",
             ("FOUND" if found else "NOT FOUND") if expected else
             ("no drop reported, as planted" if not found else "a drop reported where none was planted")]
    if not expected and report["drop"] and report["drop"]["direction"] == "higher":
        lines.append("the external AUROC is higher: the stand-in's labels are the drawn truth, the run's test labels "
                     "an NLP labeler's (5% of cells redrawn), so the external set is scored against cleaner labels")
    return lines
