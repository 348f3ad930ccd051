"""The model card's figures (handoff/card.py assembles the card): the test performance per finding and per head /
medium / tail group, the thresholds with their rates, the calibration. Every figure is metrics.json's, with its CI.
"""
from __future__ import annotations

from .. import account
from ..account import figure_text


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def performance(report: dict) -> list[str]:
    ci, test = report["ci"], report["splits"]["test"]
    level = report["level"]["headline"]
    lines = ["## Quantitative analyses", "", "### Performance (test split)", "",
             f"Counted per {level}; {int(ci['level'] * 100)}% CIs from {ci['n_boot']} patient-level bootstrap resamples. "
             f"The {account.macro_sentence(report)}.", ""]
    lines += markdown_table(["figure", "value [CI]", "resamples used"],
                    [[k, figure_text(v), f"{v.get('n_boot_valid', '?')} of {ci['n_boot']}"]
                     for k, v in report["headline"].items()])
    lines += markdown_table(["finding", "AUROC", "AUPRC", "positives", "n"],
                    [[f + ("" if e.get("estimable", True) else " (too few)"), figure_text(e["auroc"]), figure_text(e["auprc"]),
                      e["n_pos"], e["n"]] for f, e in test["per_finding"].items()])
    return lines


def thresholds_section(report: dict) -> list[str]:
    rows = {(r["finding"], r["rule"]): r for r in report["thresholds"]["test"]}
    chosen = report["thresholds"]["chosen_on"]
    rule = "f1" if chosen else "fixed_0.5"
    level = report["thresholds"].get("level", report["level"]["headline"])
    lines = ["### Thresholds", "", f"Chosen on the {chosen or 'no'} split (max-F1; fixed 0.5 without one), per {level}; "
                                   "test rates at them with their counts. `predict` and the export use thresholds chosen "
                                   "on validation images (metrics.json: image_level).", ""]

    def rate(r, key, hit, miss):
        return "n/a" if r.get(key) is None else f"{r[key]:.3f} ({r[hit]}/{r[hit] + r[miss]})"

    table = []
    for f in report["thresholds"]["values"]:   # the run's labels, in output order
        r = rows.get((f, rule), {})
        cut = f"{r['threshold']:.4f}" if r.get("threshold") is not None else "n/a"
        table.append([f, cut, rate(r, "sensitivity", "tp", "fn"), rate(r, "specificity", "tn", "fp"),
                      rate(r, "ppv", "tp", "fp")])
    return lines + markdown_table(["finding", "threshold", "sensitivity (TP/P)", "specificity (TN/N)", "PPV (TP/called)"], table)


def calibration_section(report: dict) -> list[str]:
    pooled = report["splits"]["test"]["calibration"]["pooled"]
    lines = ["### Calibration", "", f"Test, pooled over findings: ECE {figure_text(pooled['ece'], 4)}, Brier "
                                    f"{figure_text(pooled['brier'], 4)}.", ""]
    recal = report.get("recalibration")
    if recal and recal.get("method") != "none":
        change = recal["after_minus_before"]
        lines += [f"Recalibrated with `{recal['method']}`, fitted on the validation split only: ECE "
                  f"{figure_text(recal['after']['ece'], 4)} after (change {change['ece']['diff']:+.4f} "
                  f"[{change['ece']['lo']:+.4f}, "
                  f"{change['ece']['hi']:+.4f}]), Brier {figure_text(recal['after']['brier'], 4)}. `predict` and the export "
                  "carry a map fitted on the validation images.", ""]
    else:
        lines += ["No recalibration (`calibration: none`).", ""]
    return lines


def buckets_section(report: dict) -> list[str]:
    """Head, medium and tail: each group's macro AUROC and mAP on test with their CIs (metrics.json buckets)."""
    section = report.get("buckets")
    if not section:
        return []
    gold = [f"{account.set_gold_line(report).capitalize()}.", ""] if account.set_gold_line(report) else []
    rows = []
    for name, group in section["groups"].items():
        rows.append([name, len(group["findings"]), len(group["macro_findings"]),
                     figure_text(group["auroc"]) if group.get("auroc") else "n/a",
                     figure_text(group["auprc"]) if group.get("auprc") else "n/a"])
    return ["### Head, medium and tail", "", f"Groups by {account.bucket_rule(report)}; each macro over its "
            "findings with enough positives (min_positives), on the test split.", ""] + \
        markdown_table(["group", "findings", "averaged", "AUROC macro [CI]", "mAP (AUPRC macro) [CI]"], rows) + gold
