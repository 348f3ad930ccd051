"""`make card RUN=x`: runs/x/MODEL_CARD.md (and .html), written from the run folder alone.

Every figure comes from a file the run made (metrics.json, cohort_report.json, params.yaml,
fairness.json, export/export.json), so the card can be regenerated at any time and never drifts
from the reports. It holds no image and no per-patient row: only counts and aggregate figures.
The checklist maps each TRIPOD+AI and CLAIM item this kind of study must report to the card's
section or run file that answers it, or says plainly that the card does not.
"""
from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

from .errors import UserError
from .fsutil import atomic_write_text
from .labels import FINDINGS

SHARING = ("**Sharing.** This model was trained on MIMIC-CXR-JPG, credentialed data from PhysioNet. Models "
           "trained on credentialed data are shared under the same terms: only with people who hold PhysioNet "
           "credentials and have signed the MIMIC-CXR-JPG data use agreement. Never send this run's notebooks "
           "or HTML reports (they embed patient images unless `redact_images: true`) to anyone else or to an "
           "online service.")
INTENDED = ("Research on chest X-ray classification: comparing methods, studying label noise, calibration and "
            "subgroup performance on MIMIC-CXR. **Not a medical device, not for clinical use**: it was never "
            "validated prospectively, on another hospital's images, or against a reading radiologist's decisions.")
LIMITS = [
    "One hospital (Beth Israel Deaconess, Boston, 2011-2016): scanners, protocols and patients of one place.",
    "Labels are NLP extractions (NegBio or CheXpert labeler) from the radiology reports, not image reads; "
    "uncertain and unmentioned findings were mapped by the policies below, which shape every figure.",
    "AP images come mostly from portable, sicker, often ICU patients; PA from ambulatory ones: view and "
    "severity are confounded.",
    "Probabilities are calibrated only on data like the validation split; prevalence elsewhere changes PPV and NPV.",
]
# (item, where the card or run folder answers it)
TRIPOD_AI = [
    ("5 Source of data", "Data"), ("6 Participants, eligibility", "Data: cohort rules and funnel"),
    ("7 Data preparation", "Model: image size, resize, decode, normalisation"),
    ("8 Outcome and how it was assessed", "Data: label source and policies; Limits"),
    ("9 Predictors", "Model (the image alone; no demographic input)"),
    ("10 Sample size", "Data: images and patients per split"),
    ("11 Missing data", "Data: label policies (masked cells); funnel (images without labels)"),
    ("12 Analytical methods, training, selection", "Model; Data: selection rule"),
    ("12e Class imbalance", "Model: pos_weight"), ("12f Fairness", "Subgroups (05_fairness.html)"),
    ("12g Model output", "Thresholds; Calibration"),
    ("12h Training vs evaluation data", "Data: split (patient-disjoint)"),
    ("13 Performance measures with uncertainty", "Performance (patient-bootstrap CIs)"),
    ("14 Model updating, recalibration", "Calibration"),
    ("18 Open science: code, software", "Software and fingerprints"),
    ("19 Patient and public involvement", "not addressed by this card"),
    ("23 Model specification, how to use it", "Export; `python -m cxrlib predict`"),
]
CLAIM = [
    ("Study design, intended use", "Intended use"), ("Data sources, dates, de-identification", "Data; Limits"),
    ("Eligibility, cohort funnel", "Data: cohort funnel"), ("Ground truth and its rationale", "Data: label source"),
    ("Reference standard by experts", "Performance: radiologist labels (when the release has them)"),
    ("Data partitions at the patient level", "Data: split"), ("Model, initialisation, software", "Model; Software"),
    ("Training details, selection metric", "Model; Data: selection rule"),
    ("Metrics with statistical uncertainty", "Performance"), ("Robustness or sensitivity analysis", "04_error_analysis.html"),
    ("Failure analysis", "04_error_analysis.html (false positives and negatives, Grad-CAM)"),
    ("External validation", "not done: one hospital (Limits)"), ("Subgroup performance", "Subgroups"),
]


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _ci(entry, digits: int = 3) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("lo") is None:
        return f"{entry['value']:.{digits}f}"
    return f"{entry['value']:.{digits}f} [{entry['lo']:.{digits}f}, {entry['hi']:.{digits}f}]"


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def data_section(run_dir: Path, params: dict, report: dict) -> list[str]:
    cohort = _read(run_dir / "cohort_report.json") or {}
    data = report.get("data", {})
    lines = ["## Data", "",
             f"- Release: MIMIC-CXR-JPG (data folder `{data.get('data_root_name', '?')}`); labels: "
             f"`{params['label_source']}`; uncertain (-1): `{params['uncertain_policy']}`; blank: `{params['blank_policy']}`.",
             f"- Cohort rules: views {params['views']}, studies per subject `{params['studies_per_subject']}`, "
             f"images per study `{params['images_per_study']}`.",
             f"- Split: `{params['split_mode']}`" + (f", validation fraction {params['val_fraction']}"
                                                   if params["split_mode"] == "seed" else " (the release's split table)")
             + "; every split is patient-disjoint.",
             f"- Selection: best epoch by validation-split `{params['select_metric']}`" if params["select_on"] == "validate"
             else "- Selection: **on the test split, as the original project did: the test figures are optimistic**",
             ""]
    if cohort:
        lines += _table(["funnel step", "count"], [
            ["metadata rows", cohort.get("metadata_rows")],
            ["images in the chosen views", cohort.get("images_in_view")],
            ["subjects in view", cohort.get("subjects_in_view")],
            ["subjects with a label row", cohort.get("subjects_with_labels")],
            ["excluded: no label row", len(cohort.get("excluded_no_labels", []))]])
    lines += _table(["split", "images", "patients"],
                    [[s, n, data.get("patients_per_split", {}).get(s, "")]
                     for s, n in data.get("images_per_split", {}).items()])
    return lines


def model_section(params: dict, report: dict) -> list[str]:
    model = report.get("model", {})
    sel = report.get("selection", {})
    return ["## Model", "",
            f"- {model.get('arch', params['arch'])}, head `{model.get('head', params['head'])}`, initialised from "
            f"`{params['weights']}`; input {model.get('image_size')} x {model.get('image_size')} grey, resize "
            f"`{model.get('resize')}`, decode `{model.get('decode', 'fast')}`, normalised with mean "
            f"{_num(model.get('mean'))} and std {_num(model.get('std'))}.",
            f"- Training: {params['optimizer']} lr {params['lr']}, batch {params['batch_size']}, up to {params['epochs']} "
            f"epochs (patience {params['patience']}), pos_weight {params['pos_weight']}, augment {params['augment']}, "
            f"amp `{params['amp']}`, seed {params['seed']}.",
            f"- Selected: epoch {sel.get('best_epoch')} of {sel.get('epochs_run', '?')}.", ""]


def performance_section(report: dict) -> list[str]:
    ci = report["ci"]
    test = report["splits"]["test"]
    lines = ["## Performance (test split)", "",
             f"Counted per {report['level']['headline'] if isinstance(report.get('level'), dict) else 'image'}; "
             f"{int(ci['level'] * 100)}% CIs from {ci['n_boot']} patient-level bootstrap resamples.", ""]
    lines += _table(["figure", "value [CI]"], [[k, _ci(v)] for k, v in report["headline"].items()])
    lines += _table(["finding", "AUROC", "AUPRC", "positives", "n"],
                    [[f, _ci(e["auroc"]), _ci(e["auprc"]), e["n_pos"], e["n"]]
                     for f, e in test["per_finding"].items()])
    gold = report.get("gold") or {}
    if gold.get("model_vs_gold"):
        against = gold["model_vs_gold"]["macro"]["auroc"]
        lines += [f"Against the radiologists' labels of {gold['studies_scored']} test studies ({gold['file']}, "
                  f"{gold['patients_scored']} patients): AUROC macro {_ci(against)}; against the NLP labels of the "
                  f"same studies {_ci(gold['model_vs_nlp']['macro']['auroc'])}.", ""]
    else:
        lines += [f"Radiologist labels: {gold.get('reason', 'not scored')}.", ""]
    return lines


def thresholds_section(report: dict) -> list[str]:
    rows = {(r["finding"], r["rule"]): r for r in report["thresholds"]["test"]}
    chosen = report["thresholds"]["chosen_on"]
    rule = "f1" if chosen else "fixed_0.5"
    lines = ["## Thresholds", "", f"Chosen on the {chosen or 'no'} split (max-F1; fixed 0.5 without one); "
                                  "test sensitivity and specificity at them:", ""]

    def rate(r, key):
        return "n/a" if r.get(key) is None else f"{r[key]:.3f}"

    return lines + _table(["finding", "threshold", "sensitivity", "specificity", "PPV"],
                          [[f, f"{rows[(f, rule)]['threshold']:.4f}" if (f, rule) in rows and rows[(f, rule)]["threshold"]
                            is not None else "n/a", *(rate(rows.get((f, rule), {}), k)
                                                      for k in ("sensitivity", "specificity", "ppv"))]
                           for f in FINDINGS])


def calibration_section(report: dict) -> list[str]:
    pooled = report["splits"]["test"]["calibration"]["pooled"]
    lines = ["## Calibration", "", f"Test, pooled over findings: ECE {_ci(pooled['ece'])}, Brier {_ci(pooled['brier'])}.", ""]
    recal = report.get("recalibration")
    if recal and recal.get("method") != "none":
        change = recal["after_minus_before"]
        lines += [f"Recalibrated with `{recal['method']}`, fitted on the validation split only: ECE "
                  f"{_ci(recal['after']['ece'])} after (change {change['ece']['diff']:+.4f} [{change['ece']['lo']:+.4f}, "
                  f"{change['ece']['hi']:+.4f}]), Brier {_ci(recal['after']['brier'], 4)}. `predict` and the export "
                  "metadata carry the fitted map.", ""]
    else:
        lines += ["No recalibration (`calibration: none`).", ""]
    return lines


def subgroup_section(run_dir: Path) -> list[str]:
    audit = _read(run_dir / "fairness.json")
    lines = ["## Subgroups", ""]
    if not audit:
        return lines + ["No audit yet: `make audit RUN=" + run_dir.name + "` (notebook 05) adds one.", ""]
    hits = audit["significant"]
    lines += [f"Audited on {audit['test_units']} test units against MIMIC-IV demographics (groups under "
              f"{audit['min_group_patients']} patients are not shown); {len(hits)} gap(s) survive Holm at 0.05:", ""]
    if hits:
        lines += _table(["attribute", "group", "finding", "metric", "gap [CI]", "Holm p"],
                        [[h["attribute"], h["group"], h["finding"], h["metric"],
                          f"{h['gap']:+.3f} [{h['gap_lo']:+.3f}, {h['gap_hi']:+.3f}]", f"{h['p_holm']:.2g}"]
                         for h in hits[:20]])
    if audit.get("planted"):
        check = audit["planted"]
        lines += [f"Synthetic data: a disparity was planted ({check['planted']['attribute']}={check['planted']['group']}); "
                  f"the audit {'detected' if check['detected'] else 'did NOT detect'} it.", ""]
    return lines


def software_section(run_dir: Path, report: dict) -> list[str]:
    versions = report.get("versions", {})
    data = report.get("data", {})
    lines = ["## Software and fingerprints", "",
             "- " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
             *(f"- {k}: `{data.get(k)}`" for k in ("cohort_sha256", "cache_index_sha256", "predictions_sha256")), ""]
    export = _read(run_dir / "export" / "export.json")
    lines += ["## Export", ""]
    if export:
        parity = export["parity"]
        lines += [f"`export/{export['file']}` ({export['format']}, sha256 `{export['sha256'][:16]}...`): uint8 "
                  f"{export['metadata']['input']['image_size']} px grey in, logits and probabilities out; checked "
                  f"against PyTorch on {parity['images']} cached test images, max probability difference "
                  f"{parity['max_abs_prob_diff']:.1e} (limit {parity['limit']:g}).", ""]
    else:
        lines += [f"None yet: `make export RUN={run_dir.name} FORMAT=onnx`.", ""]
    return lines


def build_card(run_dir) -> str:
    from . import evaluate
    from .params import load_frozen

    run_dir = Path(run_dir)
    report = evaluate.read_metrics(run_dir)
    params = load_frozen(run_dir).to_dict()
    lines = [f"# Model card: {run_dir.name}", "",
             f"Generated {time.strftime('%Y-%m-%d')} by cxrlib from `{run_dir.name}/` (`make card RUN={run_dir.name}`).", ""]
    license = Path(params["data_root"]) / "LICENSE.txt"
    if license.is_file() and license.read_text().startswith("SYNTHETIC DATA"):
        lines += ["> **Synthetic data.** This run was trained and tested on cxrlib's synthetic stand-in for "
                  "MIMIC-CXR-JPG (`make demo`): its figures show the pipeline at work, not how well a model reads "
                  "chest X-rays.", ""]
    if report.get("test_selected"):
        lines += ["> **WARNING: the model was selected on the test split** (the original project's rule). Every "
                  "test figure below is optimistic; do not report it as a held-out estimate.", ""]
    lines += [SHARING, "", "## Intended use", "", INTENDED, "", "## Limits", "", *(f"- {x}" for x in LIMITS), ""]
    lines += data_section(run_dir, params, report) + model_section(params, report) + performance_section(report)
    lines += thresholds_section(report) + calibration_section(report) + subgroup_section(run_dir)
    lines += software_section(run_dir, report)
    lines += ["## Reporting checklists", "", "Where this card, or the run folder, answers each item:", ""]
    lines += _table(["TRIPOD+AI item", "answered in"], TRIPOD_AI) + _table(["CLAIM item", "answered in"], CLAIM)
    return "\n".join(lines) + "\n"


def to_html(markdown: str, title: str) -> str:
    import mistune

    body = mistune.html(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:1.45}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em}"
            "blockquote{border-left:4px solid #c00;margin:0;padding:.2em 1em;background:#fee}</style></head>"
            f"<body>{body}</body></html>\n")


def write_card(run_dir) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    markdown = build_card(run_dir)
    md, page = run_dir / "MODEL_CARD.md", run_dir / "MODEL_CARD.html"
    atomic_write_text(md, markdown)
    atomic_write_text(page, to_html(markdown, f"Model card: {run_dir.name}"))
    return md, page


def cli(command: str, argv: list[str]) -> int:
    from .params import run_folder

    ap = argparse.ArgumentParser(prog="python -m cxrlib card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run: runs/<name> or its name (notebook 03 must have run)")
    args = ap.parse_args(argv)
    run_dir, _ = run_folder(args.run)
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir}/metrics.json: no metrics; run notebook 03 first (make evaluate RUN={run_dir.name})")
    for path in write_card(run_dir):
        print(path)
    return 0
