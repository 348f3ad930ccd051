"""One account of a run's results, read from its metrics.json and worded once: what the terminal summary, the
index page, the model card and notebook 03 say about the headline's coverage and the warnings that travel with
it. They only format what these functions return. Light on purpose (no numpy, no torch): make runs imports it.

    warnings(m)         # the warnings every rendering shows beside the test figures, in order
    macro_sentence(m)   # which findings the macro figures average, and why the others are left out
"""
from __future__ import annotations

from ..params import TEST_SELECTION_WARNING

SELECTED_ON_TEST = ("the model was selected on the TEST split (the original project's rule): its test figures are "
                    "optimistic; do not report them as held-out performance (select_on: validate is honest)")


def warnings(m: dict) -> list[str]:
    """The warnings that travel with a run's test figures, worded here: selection on the test split, then what
    notebook 03 recorded of the starting weights (metrics.json `warnings`, the contamination check's words)."""
    found = [SELECTED_ON_TEST] if m.get("test_selected") else []
    from_evaluation = [w for w in (m.get("warnings") or []) if w != TEST_SELECTION_WARNING]   # worded above
    return found + from_evaluation


def macro_sentence(m: dict) -> str:
    """'macro figures average 12 of 14 findings; left out (fewer than 10 patients with a positive or with a
    negative): Fracture, Lung Lesion; one class only: Pleural Other'."""
    macro = m.get("macro") or {}
    covered = macro.get("findings")
    if covered is None:
        covered = ((m.get("splits") or {}).get("test") or {}).get("macro_findings", [])
    text = f"macro figures average {len(covered)} of 14 findings"
    if macro.get("not_estimable"):
        text += (f"; left out (fewer than {macro.get('min_positives', '?')} patients with a positive or with a "
                 f"negative): {', '.join(macro['not_estimable'])}")
    if macro.get("one_class"):
        text += f"; one class only: {', '.join(macro['one_class'])}"
    return text


def audit_verdict(audit: dict) -> str:
    """fairness.json's decision in one sentence: the significant primary gaps among the primary tests, and the
    exploratory hits, which decide nothing."""
    proc = audit.get("procedure") or {}
    return (f"{len(audit.get('significant') or [])} of {proc.get('primary_tests', '?')} primary gap(s) significant "
            f"(Bonferroni over the audit, family-wise 0.05); exploratory: {audit.get('exploratory_hits', '?')} of "
            f"{proc.get('exploratory_tests', '?')} tests with BH q < 0.05 (not decisions)")


def gap_line(hit: dict) -> str:
    """One significant primary gap: 'sex: F vs M auroc_macro: gap -0.041 [-0.070, -0.012] (simultaneous)'."""
    return (f"{hit['attribute']}: {hit['group']} vs {hit['reference']} {hit['metric']}: gap {hit['gap']:+.3f} "
            f"[{hit['gap_lo']:+.3f}, {hit['gap_hi']:+.3f}] (simultaneous)")


def external_units(report: dict) -> str:
    """What an external validation scored: '500 images' for a source whose studies are single images (NIH,
    VinDr-CXR), else '420 studies' at a study-level run."""
    unit = (report.get("thresholds") or {}).get("unit") or report.get("level") or "image"
    return f"{(report.get('counts') or {}).get('units', '?')} {'studies' if unit == 'study' else 'images'}"
