"""How a run's results are worded wherever they are shown (notebooks, the card, the index page, the terminal):
one sentence or figure format each, from the run's own files, so that every rendering says the same. Light on
purpose (no numpy, no torch): the index page and make runs import it."""
from __future__ import annotations


def figure_text(entry: dict | None, digits: int = 3) -> str:
    """One figure of metrics.json ({value, lo, hi, conditional}) as every report prints it: '0.761 [0.720, 0.800]',
    '(no CI)' where it has none, '(CI conditional)' where most resamples lost a finding's positives."""
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("lo") is None:
        return f"{entry['value']:.{digits}f} (no CI)"
    text = f"{entry['value']:.{digits}f} [{entry['lo']:.{digits}f}, {entry['hi']:.{digits}f}]"
    return text + (" (CI conditional)" if entry.get("conditional") else "")


def annotator_line(section: dict) -> str:
    """The card's and the index's sentence: the model against the annotator and against the NLP labels of the
    same studies, over the same findings (named), or why there is none."""
    same = section.get("like_for_like")
    if not section.get("model_vs_gold"):
        return f"Annotator labels: {section.get('reason', 'not scored')}."
    where = f"{section['studies_scored']} test studies ({section['patients_scored']} patients)"
    if not same:
        return (f"Against the annotator's labels on {where}: no finding has enough patients with a positive and a "
                "negative under both label sets, so no macro AUROC compares them.")
    return (f"Against the annotator's labels on {where}: AUROC macro {figure_text(same['gold'])}; against the NLP "
            f"labels of the same studies {figure_text(same['nlp'])}; both over the {len(same['findings'])} findings "
            f"both label sets can estimate ({', '.join(same['findings'])}).")


def planted_word(check: dict) -> str:
    """DETECTED, NOT DETECTED, or NOT COMPARED when no primary comparison of the planted attribute was made."""
    if check.get("compared") is False:
        return "NOT COMPARED (its groups withheld or too small)"
    return "DETECTED" if check["detected"] else "NOT DETECTED"
