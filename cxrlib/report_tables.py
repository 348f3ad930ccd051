"""The tables notebook 03 shows, read from a run's metrics.json (evaluate.evaluate_run writes it)."""
from __future__ import annotations

import pandas as pd

from . import metrics
from .original import original_project_results

HEADLINE = {"AUROC macro": ("macro", "auroc"), "AUROC micro": ("micro", "auroc"),
            "AUPRC macro": ("macro", "auprc"), "AUPRC micro": ("micro", "auprc")}


def selection_warning_html(report: dict) -> str | None:
    """A bold red box for runs whose model was selected on the test set; None otherwise."""
    if not report.get("test_selected"):
        return None
    sel = report["selection"]
    return ('<div style="border:4px solid #c00000;background:#ffe5e5;color:#8b0000;padding:12px 16px;'
            'font-size:1.15em;font-weight:bold;margin:8px 0">'
            "&#9888; THE TEST FIGURES BELOW ARE OPTIMISTIC.<br>"
            f"This run selected its model (epoch {sel['best_epoch']}) by {sel['select_metric']} on the TEST set. "
            "The test set was used to pick the model, so it no longer measures unseen data: "
            "do not report these figures as test performance. Rerun with select_on: validate "
            "(e.g. params/improved.yaml) for honest figures.</div>")


def per_finding_table(report: dict, split: str = "test") -> pd.DataFrame:
    """AUROC, AUPRC, ECE and Brier per finding (then macro and micro) with their CIs."""
    summary = report["splits"][split]
    table = metrics.frame(summary).set_index("finding")
    for m in ("ece", "brier"):
        for part, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
            table[f"{m}{part}"] = pd.Series({f: e[m][key] for f, e in summary["per_finding"].items()}, dtype="Float64")
    return table


def headline_table(report: dict) -> pd.DataFrame:
    level = report["ci"]["level"]
    rows = [{"metric": k, "value": v["value"], f"{level:.0%} CI lo": v["lo"], f"{level:.0%} CI hi": v["hi"]}
            for k, v in report["headline"].items()]
    return pd.DataFrame(rows).set_index("metric")


def level_table(report: dict) -> pd.DataFrame:
    """The test headline at image and at study level side by side; the headline level first."""
    level = report.get("level") or {"headline": "image", "other": None, "units_per_split": {}}
    rows = {f"{level['headline']} level (headline)": report["headline"]}
    units = {f"{level['headline']} level (headline)": level["units_per_split"].get("test")}
    if level.get("other"):
        name = f"{level['other']['level']} level"
        rows[name], units[name] = level["other"]["headline"], level["other"]["units_per_split"].get("test")
    table = pd.DataFrame({name: {"test units": units[name],
                                 **{f"{k} [CI]": with_ci(v["value"], v["lo"], v["hi"]) for k, v in figures.items()}}
                          for name, figures in rows.items()})
    return table


def with_ci(value, lo, hi) -> str:
    """'0.833 [0.804, 0.857]'; the value alone without an interval, 'n/a' without a value (None or NaN)."""
    if value is None or pd.isna(value):
        return "n/a"
    if lo is None or pd.isna(lo):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def threshold_table(report: dict) -> pd.DataFrame:
    """Test-split counts and rates at each rule's threshold (rules chosen on validation, plus fixed 0.5)."""
    table = pd.DataFrame(report["thresholds"]["test"])
    return table.astype({c: "Int64" for c in ("n", "tp", "fp", "tn", "fn")})


def calibration_table(report: dict, split: str = "test") -> pd.DataFrame:
    summary = report["splits"][split]
    rows = [{"finding": f, **{f"{m}{part}": e[m][key] for m in ("ece", "brier")
                              for part, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi"))}}
            for f, e in summary["per_finding"].items()]
    pooled = summary["calibration"]["pooled"]
    rows.append({"finding": "pooled", **{f"{m}{part}": pooled[m][key] for m in ("ece", "brier")
                                          for part, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi"))}})
    return pd.DataFrame(rows).set_index("finding").astype("Float64")


def original_comparison(report: dict) -> pd.DataFrame:
    """Our test figures (with CIs) beside the original project's published ones, pos_weight off and on.

    `original (same pos_weight)` is the published model trained like this run; the original selected
    its models on the test set and published no intervals, so a difference inside our CI is no evidence
    of a difference at all.
    """
    original = report.get("original_project") or original_project_results()
    off = next(v for v in original.values() if not v["pos_weight"])
    on = next(v for v in original.values() if v["pos_weight"])
    pos_weight = bool(report["params"]["pos_weight"])
    rows = []
    for key, (avg, m) in HEADLINE.items():
        ours = report["headline"][key]
        same = (on if pos_weight else off)[avg][m]
        inside = ours["lo"] is not None and ours["lo"] <= same <= ours["hi"]
        rows.append({"metric": key, "ours": ours["value"], "ours_lo": ours["lo"], "ours_hi": ours["hi"],
                     "original pos_weight off": off[avg][m], "original pos_weight on": on[avg][m],
                     "ours - original (same pos_weight)": None if ours["value"] is None else ours["value"] - same,
                     "original inside our CI": inside})
    table = pd.DataFrame(rows).set_index("metric")
    table.attrs["note"] = (f"This run: pos_weight {'on' if pos_weight else 'off'}, selected on "
                           f"{report['selection']['select_on']}. Original: {off['selection']}.")
    return table
