"""The tables notebook 03 shows, read from a run's metrics.json (evaluate.evaluate_run writes it)."""
from __future__ import annotations

import html

import pandas as pd

from ..original import original_project_results
from ..training.contamination import warning_text

HEADLINE = {"AUROC macro": ("macro", "auroc"), "AUROC micro": ("micro", "auroc"),
            "AUPRC macro": ("macro", "auprc"), "AUPRC micro": ("micro", "auprc")}


RED_BOX = ('<div style="border:4px solid #c00000;background:#ffe5e5;color:#8b0000;padding:12px 16px;'
           'font-size:1.15em;font-weight:bold;margin:8px 0">')


def red_box(text: str) -> str:
    """A warning as the notebooks show it: bold, in a red box."""
    return f"{RED_BOX}&#9888; {html.escape(text)}</div>"


def contamination_html(starting: dict | None) -> str | None:
    """A bold red box when the test split may overlap what the starting weights saw; None otherwise."""
    text = warning_text(starting)
    return None if text is None else red_box(text)


def starting_weights_line(starting: dict | None, weights: str = "") -> str:
    """One line: what the run started from, its hash, what it saw and what that means for the test split."""
    if not starting:
        return f"starting weights: {weights or 'not recorded'} (a checkpoint from before cxrlib recorded what they saw)"
    check = starting.get("contamination") or {}
    sha = starting.get("sha256")
    return (f"starting weights: {starting.get('source') or starting.get('file') or weights or 'unnamed file'}"
            + (f" (sha256 {sha[:12]}…)" if sha else "") + f", trained on {starting.get('trained_on', 'unknown')}"
            + (f"; input normalised as its JSON says (mean {starting['input']['mean']:.4g}, std "
               f"{starting['input']['std']:.4g}), not by the mean/std parameters" if starting.get("input") else "")
            + (f"; test split {check['status']}: {check['message']}" if check else ""))



def per_finding_table(report: dict, split: str = "test") -> pd.DataFrame:
    """AUROC, AUPRC, ECE and Brier per finding (then macro and micro) with their CIs."""
    summary = report["splits"][split]
    table = frame(summary).set_index("finding")
    for m in ("ece", "brier"):
        for part, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
            table[f"{m}{part}"] = pd.Series({f: e[m][key] for f, e in summary["per_finding"].items()}, dtype="Float64")
    return table


def headline_table(report: dict) -> pd.DataFrame:
    """The test headline with its CIs, and a note where an interval is conditional or a macro leaves findings out."""
    level = report["ci"]["level"]
    covered = len((report.get("macro") or {}).get("findings", [])) or None

    def note(key, v):
        parts = [f"mean of {covered} of 14 findings"] if covered and key.endswith("macro") else []
        if report.get("contaminated"):
            parts.insert(0, "OPTIMISTIC: the starting weights may have seen test patients")
        if v.get("conditional"):
            parts.append(f"CI conditional ({v['n_boot_valid']} of {report['ci']['n_boot']} resamples)")
        return "; ".join(parts)

    rows = [{"metric": k, "value": v["value"], f"{level:.0%} CI lo": v["lo"], f"{level:.0%} CI hi": v["hi"],
             "note": note(k, v)} for k, v in report["headline"].items()]
    return pd.DataFrame(rows).set_index("metric")


def bucket_table(report: dict) -> pd.DataFrame:
    """Head, medium and tail (metrics.json `buckets`): per group its findings, how many the macro averages, and
    macro AUROC and AUPRC (mAP) on the test split with their CIs."""
    section = report.get("buckets") or {"groups": {}}
    rows = []
    for name, group in section["groups"].items():
        row = {"group": name, "findings": ", ".join(group["findings"]) or "none",
               "averaged": f"{len(group['macro_findings'])} of {len(group['findings'])}"}
        for metric, label in (("auroc", "AUROC macro"), ("auprc", "mAP (AUPRC macro)")):
            figure = group.get(metric) or {}
            row.update({label: figure.get("value"), f"{label} lo": figure.get("lo"), f"{label} hi": figure.get("hi")})
        rows.append(row)
    return pd.DataFrame(rows).set_index("group") if rows else pd.DataFrame()


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


def frame(summary: dict, averages: bool = True) -> pd.DataFrame:
    """One row per finding (then macro and micro): AUROC and AUPRC with their CIs, n_pos, n, and `note`:
    'too few (no CI; not in macro)' for a finding below min_positives, 'CI conditional (k of B resamples)'
    where a CI rests on fewer than metrics.CONDITIONAL_SHARE of the resamples. The macro row's note says
    how many findings it covers."""
    def note(entry: dict) -> str:
        if entry.get("estimable") is False:
            return f"too few (< {summary.get('min_positives', '?')} of a class): no CI, not in macro"
        figure = entry["auroc"]
        if figure.get("conditional"):
            return f"CI conditional ({figure['n_boot_valid']} of {summary['n_boot']} resamples)"
        return ""

    def row(name, entry, n_pos, n, text):
        return {"finding": name, **{f"{m}{part}": entry[m][key] for m in ("auroc", "auprc")
                                    for part, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi"))},
                "n_pos": n_pos, "n": n, "note": text}

    rows = [row(name, e, e["n_pos"], e["n"], note(e)) for name, e in summary["per_finding"].items()]
    if averages:
        n_pos = sum(e["n_pos"] for e in summary["per_finding"].values())
        n = sum(e["n"] for e in summary["per_finding"].values())
        covered = summary.get("macro_findings", [f for f in summary["per_finding"] if f not in summary["excluded"]])
        macro_note = f"mean of {len(covered)} of {len(summary['per_finding'])} findings"
        if summary["macro"]["auroc"].get("conditional"):
            macro_note += f"; CI conditional ({summary['macro']['auroc']['n_boot_valid']} of {summary['n_boot']})"
        rows += [row("macro", summary["macro"], pd.NA, pd.NA, macro_note),
                 row("micro", summary["micro"], n_pos, n, "all labelled cells pooled")]
    out = pd.DataFrame(rows)
    return out.astype({c: "Float64" for c in out.columns if c.startswith("au")} | {"n_pos": "Int64", "n": "Int64"})
