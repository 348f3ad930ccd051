"""One account of a run's results, read from its metrics.json and worded once: what the terminal summary, the
index page, the model card and notebooks 03, 05 and 07 say about the headline's coverage, the warnings that travel
with it, the audit's verdict and the external results. They only format what these functions return. Light on
purpose (no numpy, no torch): make runs imports it, and it sits below every stage so that each can.

    warnings(m)         # the warnings every rendering shows beside the test figures, in order
    warning_labels(m)   # the same, short, for a table cell (make runs)
    macro_sentence(m)   # which findings the macro figures average, and why the others are left out
"""
from __future__ import annotations

SELECTED_ON_TEST = ("the model was selected on the TEST split (the original project's rule): its test figures are "
                    "optimistic; do not report them as held-out performance (select_on: validate is honest)")
# The selection warning as metrics.json files written before it was worded here hold it (shown once, as above)
EARLIER_SELECTION_WARNINGS = ("select_on: test picks the model by its score on the TEST set (the original project's rule): "
                              "the test figures of this run are optimistic. Use select_on: validate for honest figures.",)
# The same warnings in a table cell (make runs' note column); the full words print under the table.
SELECTED_ON_TEST_SHORT = "selected on TEST"
CONTAMINATED_SHORT = "starting weights may have seen the test patients"


def warnings(m: dict) -> list[str]:
    """The warnings that travel with a run's test figures, worded here: selection on the test split, then what
    notebook 03 recorded of the starting weights (metrics.json `warnings`, the contamination check's words)."""
    found = [SELECTED_ON_TEST] if m.get("test_selected") else []
    from_evaluation = [w for w in (m.get("warnings") or []) if w not in EARLIER_SELECTION_WARNINGS]   # worded above
    return found + from_evaluation


def contaminated(m: dict) -> bool:
    """Whether notebook 03's contamination check found that the starting weights may have seen the test patients."""
    starting = (m.get("model") or {}).get("starting_weights") or {}
    return (starting.get("contamination") or {}).get("status") == "contaminated"


def warning_labels(m: dict) -> list[str]:
    """warnings(m) as short labels for a table cell, in the same order: 'WARNING: selected on TEST'."""
    return [f"WARNING: {label}" for label, on in ((SELECTED_ON_TEST_SHORT, m.get("test_selected")),
                                                   (CONTAMINATED_SHORT, contaminated(m))) if on]


def macro_sentence(m: dict) -> str:
    """'macro figures average 12 of 14 findings; left out (fewer than 10 patients with a positive or with a
    negative): Fracture, Lung Lesion; one class only: Pleural Other'."""
    macro = m.get("macro") or {}
    covered = macro.get("findings")
    if covered is None:
        covered = ((m.get("splits") or {}).get("test") or {}).get("macro_findings", [])
    test = (m.get("splits") or {}).get("test") or {}
    # a metrics.json naming neither predates label sets: it scored the 14 CheXpert findings
    total = len(test.get("per_finding") or (m.get("model") or {}).get("labels") or []) or 14
    text = f"macro figures average {len(covered)} of {total} findings"
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


def drop_verdict(drop: dict | None) -> str:
    """An external validation's decision in a few words (its metrics.json `drop`), wherever it is listed."""
    if not drop:
        return "no finding compared"
    return {"drop": "drop reported", "higher": "no drop; external higher"}.get(drop.get("direction"),
                                                                              "no drop reported")


def source_label(source: str, report: dict) -> str:
    """An external source as every listing names it: 'nih', or 'nih (synthetic stand-in)'."""
    return f"{source} (synthetic stand-in)" if report.get("synthetic") else source


def excludes_zero(drop: dict) -> bool:
    """Whether an external drop's interval excludes 0, either way (a drop, or an external AUROC higher)."""
    return bool(drop.get("reported")) or drop.get("direction") in ("drop", "higher")


def scored_share(report: dict) -> float | None:
    """The share of the images an external validation's table selects that it scored (its metrics.json counts)."""
    counts = report.get("counts") or {}
    chosen, scored = counts.get("chosen_images"), counts.get("scored_images")
    return None if not chosen or scored is None else scored / chosen


def decoded_share(report: dict) -> str:
    """scored_share in one phrase, wherever an external result is listed; PARTIAL when some selected images were
    missing or could not be decoded."""
    share, counts = scored_share(report), report.get("counts") or {}
    if share is None:
        return "decoded share not recorded"
    text = f"decoded {counts['scored_images']:,} of the {counts['chosen_images']:,} selected images ({share:.1%})"
    return text + (f", PARTIAL: {counts.get('missing_images', 0):,} missing, {counts.get('failed_images', 0):,} "
                   "undecodable" if share < 1 else "")


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


def headline_notes(m: dict) -> list[str]:
    """What notebook 03 prints above the headline table: how the model was chosen (when not on the test split,
    which the warnings say), which findings the macro figures average, and the evaluation's notes."""
    lines = []
    if not m.get("test_selected"):
        sel = m["selection"]
        lines.append(f"Model selected on {sel['select_on']} by {sel['select_metric']} (epoch {sel['best_epoch']} of "
                     f"{sel['epochs_run']}): the test set was not used to choose it.")
    return lines + [macro_sentence(m)] + [f"note: {note}" for note in m.get("notes") or []]


def level_sentence(m: dict) -> str:
    """The headline's unit: 'headline level: study (mean of each study's image probabilities)'."""
    level = m["level"]
    return (f"headline level: {level['headline']}"
            + (f" ({level['aggregate']} of each study's image probabilities)" if level["aggregate"] else "")
            + ("" if level["several_images_per_study"] else "; every study has one image here, so both levels agree"))


def threshold_notes(m: dict) -> list[str]:
    """Where the thresholds were chosen, per which unit, and what predict and the export carry instead."""
    chosen = m["thresholds"]["chosen_on"]
    lines = [f"thresholds chosen on: {chosen or 'nothing (no validation split): fixed 0.5 only'}, per "
             f"{m['thresholds'].get('level', 'image')}"]
    if not m["image_level"]["same_as_headline"]:
        lines.append("predict and the export use thresholds and a recalibration fitted on the validation images "
                     "(metrics.json: image_level), since they score single images")
    return lines


def gold_lines(gold: dict) -> list[str]:
    """The radiologist-label check in a few lines: what the file holds, how much of the test split it covers, and
    the model against the annotator and the NLP labels (annotator_line), or why there is none."""
    if not gold["available"]:
        return [f"no radiologist labels: {gold['reason']}"]
    lines = [f"{gold['studies_in_file']} labelled studies in {gold['file']}; {gold['studies_scored']} of them "
             f"({gold['patients_scored']} patients) are in this run's test split"]
    return lines + [gold["reason"] if gold.get("reason") else annotator_line(gold)]


def paired_sentence(attrs: dict) -> str:
    """A paired comparison of two runs (paired.compare_runs' attrs): what both scored and how the CIs were made."""
    units = "studies" if attrs["level"] == "study" else "images"
    return (f"{attrs['this']} - {attrs['other']} on the {attrs['shared_images']} test {units} both predicted "
            f"({attrs['patients']} patients; {attrs['this']} has {attrs['this_images']}, {attrs['other']} "
            f"{attrs['other_images']}); {attrs['ci_level']:.0%} CIs from {attrs['n_boot']} paired patient resamples; "
            f"macro over {len(attrs['macro_findings'])} findings")


def external_source_lines(report: dict, data_root, views: str) -> list[str]:
    """Notebook 07's account of what an external validation read: the table, the selection, the files on disk and
    decoded, the unit, the bit depth, the label map and the notes."""
    counts, lmap = report["counts"], report["label_map"]
    return [f"{report['source']} ({report['subset']}) under {data_root}: {counts['table_images']} images in its table, "
            f"{counts['chosen_images']} {views}, {counts['present_images']} on disk, {counts['scored_images']} scored "
            f"({counts['failed_images']} could not be decoded); {counts['patients']} patients, {counts['units']} "
            f"{report['level']}-level units",
            decoded_share(report),
            f"units: {report['unit_note']}; file kinds: {report['file_modes']}; bit depth: "
            f"{report['preprocessing'].get('bit_depth', 'not recorded')}",
            f"label map {lmap['name']} (sha256 {lmap['sha256'][:12]}), labels from {lmap['labels_from']}",
            *([f"scored {run['images']:,} images from the cache in {run['seconds']:,.1f} s ({run['images_per_second']:,.1f} "
               f"images/s on {run['device']})"] if (run := report.get("inference")) else []),
            *[f"note: {note}" for note in report["notes"]]]


def bucket_lines(m: dict) -> list[str]:
    """One sentence per head / medium / tail group: its size, how many the macro averages, AUROC and mAP with CIs."""
    section = m.get("buckets") or {}
    lines = []
    for name, group in (section.get("groups") or {}).items():
        if not group["findings"]:
            lines.append(f"{name}: no finding")
            continue
        figures = ", ".join(f"{label} {figure_text(group[key])}" for key, label in (("auroc", "AUROC macro"),
                                                                                    ("auprc", "mAP"))
                            if group.get(key))
        lines.append(f"{name}: {len(group['findings'])} findings, {len(group['macro_findings'])} with enough "
                     f"positives to average" + (f"; {figures}" if figures else ""))
    return lines


def set_gold_line(m: dict) -> str | None:
    """The label set's gold subset (CXR-LT 2024's task 2) in one sentence; None when the set has none."""
    gold = m.get("set_gold")
    if not gold:
        return None
    if gold.get("reason"):
        return f"gold subset ({gold['table']}): not scored, {gold['reason']}"
    figures = ", ".join(f"{label} {figure_text(gold[key])}" for key, label in (("auroc", "AUROC macro"),
                                                                               ("auprc", "mAP")) if gold.get(key))
    return (f"gold subset ({gold['table']}, radiologists' labels, its own split, chose nothing): "
            f"{gold['images_scored']} test images of {gold['patients_scored']} patients, "
            f"{len(gold['macro_findings'])} of its {len(gold['labels'])} labels averaged; {figures or 'no figure'}")


def bucket_rule(m: dict) -> str:
    """How the head / medium / tail groups were made: 'chexpert14: head above 10% of training images, tail
    below 1%' or the lists a label set names."""
    section = m.get("buckets")
    if not section:
        return "no head / medium / tail groups (a metrics.json from before them; rerun notebook 03)"
    rule = section["rule"]
    if rule["rule"] == "share":
        return (f"{section['label_set']}: head above {rule['head']:.0%} of the training images, tail below "
                f"{rule['tail']:.0%}, medium between")
    return f"{section['label_set']}: head and tail as the label set lists them, medium the rest"


def learning_line(m: dict) -> str | None:
    """How the model learnt, when not by training every layer on all the training labels: a linear probe on an
    encoder's frozen embeddings, a zero-shot head from prompts, or a share of the training patients."""
    params, model = m.get("params") or {}, m.get("model") or {}
    how, fraction = params.get("train_from", "images"), params.get("train_fraction", 1.0)
    source = (model.get("starting_weights") or {}).get("source") or params.get("weights")
    labelled = (f"{model['train_patients']} training patients' labels ({model.get('train_images', '?')} images"
                + (f", train_fraction {fraction:g} of the patients" if fraction < 1 else "") + ")"
                if model.get("train_patients") is not None else "the training labels")
    if how == "zero_shot":
        zero = model.get("zero_shot") or {}
        return (f"zero-shot: no training label used; each label's probability is {zero.get('method', 'CLIP prompts')}, "
                f"from {source}'s text tower (prompts: {zero.get('prompts_file', '?')}, recorded in model_config)")
    if how == "embeddings":
        return (f"a linear probe: the head alone trained on {source}'s frozen embeddings, computed once (embedding "
                f"cache {model.get('embeddings_key', '?')}), from {labelled}")
    if fraction < 1:
        return f"trained on a share of the training split: {labelled}"
    return None
