"""`make card RUN=x`: runs/x/MODEL_CARD.md (and .html), written from the run folder alone.

The sections follow Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): model details,
intended use, factors, metrics, training and evaluation data, quantitative analyses (per group, not only
where a gap was found), ethical considerations, caveats and recommendations. Every figure comes from a
file the run made (metrics.json, cohort.csv counted per split, cohort_report.json, params.yaml,
fairness.json, export/<file>.json), so the card can be regenerated at any time. It holds no image and no
per-patient row: only counts and aggregate figures. The checklists (card_checklists.py) map TRIPOD+AI
and CLAIM items to the section that answers them.
"""
from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

from .. import account, runfiles, runlock
from ..account import annotator_line, figure_text, planted_word
from ..data.cohort import read_cohort
from ..errors import UserError
from ..evaluation.tables import starting_weights_line
from ..fsutil import atomic_write_text, sha256_file
from ..labels import cohort_labels
from ..runfiles import (
    BEST,
    CARD_HTML,
    CARD_MD,
    CHECKPOINTS,
    COHORT,
    COHORT_REPORT,
    FAIRNESS_JSON,
    METRICS,
    is_ensemble,
    load_frozen,
    run_folder,
)
from ..stats.levels import plural
from .card_figures import buckets_section, calibration_section, markdown_table, performance, thresholds_section
from .checklists import CLAIM, TRIPOD_AI, filled
from .html import PAGE_CSS, with_navigation
from .index_page import write_index

SHARING = ("**Sharing.** Models trained on credentialed PhysioNet data are shared under the same terms as the data: "
           "only with people who hold PhysioNet credentials and have signed the MIMIC-CXR-JPG data use agreement. "
           "Never send this run's notebooks or HTML reports (they embed patient images unless `redact_images: true`) "
           "to anyone else or to an online service.")
INTENDED = ("Research on chest X-ray classification: comparing methods, studying label noise, calibration and "
            "subgroup performance on MIMIC-CXR. Intended users: researchers with PhysioNet credentials. **Not a "
            "medical device, not for clinical use**: it was never validated prospectively, on another hospital's "
            "images, or against a reading radiologist's decisions. Out of scope: any decision about a patient; "
            "children (few in the data); lateral views; other hospitals without their own validation.")
CAVEATS = [
    "One hospital (Beth Israel Deaconess, Boston, 2011-2016): scanners, protocols and patients of one place.",
    "Labels are NLP extractions (NegBio or CheXpert labeler) from the radiology reports, not image reads; "
    "uncertain and unmentioned findings were mapped by the policies above, which shape every figure.",
    "AP images come mostly from portable, sicker, often ICU patients; PA from ambulatory ones: view and "
    "severity are confounded.",
    "Probabilities are calibrated only on data like the validation split; prevalence elsewhere changes PPV and NPV.",
    "A finding with fewer than min_positives positive test units has an estimate without an interval and is "
    "left out of the macro averages: its figure says little.",
]
ETHICS = [
    "Data: de-identified by the release; demographics come from MIMIC-IV (a separate credentialed project) and "
    "are used only to audit, never as model inputs.",
    "Risk: a model that calls \"No Finding\" more often in one group delays care for that group "
    "(underdiagnosis, Seyyed-Kalantari et al. 2021); the subgroup section tests exactly that.",
    "Risk: automation bias if scores are shown to readers; the model was not tested with readers.",
    "Label bias: report-derived labels inherit what radiologists chose to mention, which may differ by group.",
]


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def split_counts(run_dir: Path, level: str) -> tuple[list[list], list[list]]:
    """From cohort.csv: per split images, studies, patients; per finding positives / labelled units per split."""

    cohort = read_cohort(run_dir / COHORT)
    splits = [s for s in ("train", "validate", "test") if (cohort["split"] == s).any()]
    sizes = [[s, int((cohort["split"] == s).sum()), int(cohort.loc[cohort["split"] == s, "study_id"].nunique()),
              int(cohort.loc[cohort["split"] == s, "subject_id"].nunique())] for s in splits]
    units = cohort.drop_duplicates(["split", "study_id"]) if level == "study" else cohort
    positives = [[f, *(f"{int((units.loc[units['split'] == s, f] == 1).sum())} / "
                       f"{int(units.loc[units['split'] == s, f].notna().sum())}" for s in splits)]
                 for f in cohort_labels(cohort)]
    return [["split", "images", "studies", "patients"], *sizes], [["finding", *splits], *positives]


def model_details(run_dir: Path, params: dict, report: dict) -> list[str]:
    model, sel, versions = report.get("model", {}), report.get("selection", {}), report.get("versions", {})
    best = run_dir / CHECKPOINTS / BEST
    members = sel.get("ensemble_of")
    differs = set(model.get("differs", []))

    def value(key, default=None, show=str):   # an ensemble's members may differ: say so, never show one member's
        return "differs by member (below)" if key in differs else show(model.get(key, default))

    training = ("- Training: each member's own (its params.yaml and card); members differ only in training settings"
                if members else
                f"- Training: {params['optimizer']} lr {params['lr']}, batch {params['batch_size']}, up to "
                f"{params['epochs']} epochs (patience {params['patience']}), pos_weight {params['pos_weight']}, augment "
                f"{params['augment']}, amp `{params['amp']}`, seed {params['seed']}.")
    lines = ["## Model details", "",
             f"- Developed with cxrlib {versions.get('cxrlib', '?')} (commit `{versions.get('git_commit') or '?'}`) on "
             f"{report.get('created', '?')[:10]}; checkpoint `best.pt` sha256 "
             f"`{sha256_file(best)[:16] if best.is_file() else 'n/a'}...`. License: the data's terms (Sharing).",
             f"- {value('arch', params['arch'])}, head `{value('head', params['head'])}`; "
             f"{starting_weights_line(model.get('starting_weights'), params['weights'])}; input "
             f"{'size differs by member (below)' if 'image_size' in differs else str(model.get('image_size')) + ' px'} "
             f"grey, resize `{value('resize')}`, decode `{value('decode', 'fast')}`, normalised with mean "
             f"{value('mean', show=_num)} and std {value('std', show=_num)}. Output: "
             f"{len(model.get('labels') or test_findings(report))} independent probabilities.", training]
    if account.learning_line(report):
        lines.append(f"- How it learnt: {account.learning_line(report)}.")
    if members:
        lines.append(f"- An ensemble: the mean probability of {len(members)} members, each selected on its own "
                     f"validation split: " + ", ".join(f"{m} (epoch {e})" for m, e in members.items()) + ".")
        if model.get("differs"):
            lines.append(f"- Its members differ in {', '.join(model['differs'])}; each member's model:")
            lines += [f"  - {name}: {c.get('arch')}, head `{c.get('head')}`, {c.get('image_size')} px, resize "
                      f"`{c.get('resize')}`, decode `{c.get('decode', 'fast')}`, mean {_num(c.get('mean'))}, std "
                      f"{_num(c.get('std'))}" for name, c in model.get("members", {}).items()]
    else:
        lines.append(f"- Selected: epoch {sel.get('best_epoch')} of {sel.get('epochs_run', '?')}, by validation "
                     f"`{sel.get('select_metric')}` counted per {sel.get('level', 'image')}.")
    return lines + ["- Citation and contact: add yours; cite MIMIC-CXR-JPG (Johnson et al.) and PhysioNet.", ""]


def factors_and_metrics(report: dict, params: dict) -> list[str]:
    level = report["level"]["headline"]
    return ["## Factors", "",
            "- Groups audited on the test split: sex, age band, race, insurance (MIMIC-IV), and race x sex. View "
            "(AP/PA), image size and orientation: 04_error_analysis.html.",
            "- Not evaluated: scanner, hospital, disease severity, time.", "",
            "## Metrics", "",
            f"- AUROC and AUPRC per finding, macro (mean over estimable findings) and micro (all cells pooled), "
            f"counted per {level}. AUROC ignores prevalence; AUPRC shows it.",
            f"- 95%-level intervals: percentile intervals of {report['ci']['n_boot']} patient-level bootstrap resamples "
            f"(all of a patient's images move together). A finding with fewer than {params['min_positives']} positive "
            "or negative units has no interval and no place in the macro; an interval from fewer than 99% of the "
            "resamples is marked conditional.",
            "- Thresholds: max-F1 on the validation split, then applied to test (counts beside every rate). ECE and "
            "Brier for calibration.",
            "- Subgroups: the primary tests and their error control are in Quantitative analyses.", ""]


def training_data(run_dir: Path, params: dict, report: dict) -> list[str]:
    cohort = _read(run_dir / COHORT_REPORT) or {}
    name, _ = runfiles.data_name(params)
    level = report["level"]["headline"]
    selection = (f"- Selection: best epoch by `{params['select_metric']}` on the validation split"
                 if params["select_on"] == "validate" else
                 "- Selection: **on the test split, as the original project did: the test figures are optimistic**")
    lines = ["## Training data", "",
             f"- Data: {name}; labels `{params['label_source']}`; uncertain (-1) `{params['uncertain_policy']}`; "
             f"blank `{params['blank_policy']}`.",
             f"- Cohort rules: views {params['views']}, studies per subject `{params['studies_per_subject']}`, "
             f"images per study `{params['images_per_study']}`.",
             f"- Split: `{params['split_mode']}`" + (f", validation fraction {params['val_fraction']} (split seed "
                                                    f"{params.get('split_seed', params['seed'])})"
                                                    if params["split_mode"] == "seed" else " (the release's split table)")
             + "; every split is patient-disjoint.", selection, ""]
    if cohort:
        lines += markdown_table(["funnel step", "count"], [
            ["metadata rows", cohort.get("metadata_rows")],
            ["images in the chosen views", cohort.get("images_in_view")],
            ["subjects in view", cohort.get("subjects_in_view")],
            ["subjects with a label row", cohort.get("subjects_with_labels")],
            ["excluded: no label row", len(cohort.get("excluded_no_labels", []))]])
    sizes, positives = split_counts(run_dir, level)
    lines += markdown_table(sizes[0], sizes[1:])
    lines += [f"Positives / labelled {plural(level)} per finding and split:", ""] + markdown_table(positives[0], positives[1:])
    return lines


def test_findings(report: dict) -> dict:
    """The labels the test split was scored on (an ensemble's model record names none)."""
    return ((report.get("splits") or {}).get("test") or {}).get("per_finding") or {}


def evaluation_data(report: dict) -> list[str]:
    gold = report.get("gold") or {}
    lines = ["## Evaluation data", "",
             f"- The test split above ({report['level']['units_per_split'].get('test')} {plural(report['level']['headline'])}); "
             "it chose nothing unless the selection line says otherwise.",
             "- `mimic-cxr-2.1.0-test-set-labeled.csv` (release 2.1.0): one annotator's labels of 687 test-set "
             "**reports** (not images). The maintainers judged them not consistent enough to benchmark against "
             "(one annotator; MIT-LCP/mimic-code#1011). They are compared here after this run's uncertain and blank "
             "policies, as a second opinion on the NLP labels, never as a reference standard.", ""]
    lines += [annotator_line(gold), ""]
    return lines


def subgroup_section(run_dir: Path) -> list[str]:
    audit = _read(run_dir / FAIRNESS_JSON)
    lines = ["### Subgroups", ""]
    if not audit:
        return lines + ["No audit yet: `make audit RUN=" + runfiles.run_arg(run_dir) + "` (notebook 05) adds one.", ""]
    if "procedure" not in audit:
        return lines + [("fairness.json predates the audit-wide procedure: rerun `make audit RUN="
                        + runfiles.run_arg(run_dir) + "`."), ""]
    rows, proc = audit["rows"], audit["procedure"]
    covered = audit.get("test_coverage", {})
    lines += [f"Audited on {audit['test_units']} test {plural(audit['level'])} of {covered.get('patients', '?')} "
              f"patients, {covered.get('in_mimic_iv', '?')} of them in MIMIC-IV (demographics). "
              f"{proc['decision']}: {account.audit_verdict(audit)}. Primary: {proc['primary']}.", ""]
    lines += [f"- {a}: {v['known']}; {v['verdict']}" for a, v in audit["verdicts"].items()]
    lines += [f"- Data problem: {problem}" for problem in audit.get("data_problems", [])] + [""]
    groups = {(g["attribute"], g["group"]): g["patients"] for g in audit["groups"]}
    own = {(r["attribute"], r["group"], r["metric"]): r for r in rows if r["gap"] is None and r["value"] is not None}
    lines += ["Every group (95% intervals; groups under the size limit are '<N', and a second count is hidden where "
              "the first could be recovered by subtraction):", ""]
    lines += markdown_table(["attribute", "group", "patients", "macro AUROC", "underdiagnosis (No Finding FPR)"],
                    [[a, g, n, figure_text(own.get((a, g, "auroc_macro"))), figure_text(own.get((a, g, "underdiagnosis")))]
                     for (a, g), n in groups.items()])
    primary = [r for r in rows if r["tier"] == "primary"]
    lines += ["Every primary comparison (simultaneous intervals, Bonferroni-adjusted p):", ""]
    lines += markdown_table(["attribute", "comparison", "metric", "gap [simultaneous CI]", "adjusted p", "significant"],
                    [[r["attribute"], f"{r['group']} vs {r['reference']}", r["metric"],
                      "n/a" if r["gap"] is None else f"{r['gap']:+.3f} [{r['gap_lo']:+.3f}, {r['gap_hi']:+.3f}]",
                      "n/a" if r["p_adjusted"] is None else f"{r['p_adjusted']:.3g}", "yes" if r["significant"] else "no"]
                     for r in primary])
    if audit.get("planted"):
        check = audit["planted"]
        lines += [f"Synthetic data: a disparity was planted ({check['planted']['attribute']}={check['planted']['group']}); "
                  f"the audit: {planted_word(check)}, with "
                  f"{len(check['unplanted_significant'])} significant gap(s) where nothing was planted.", ""]
    return lines


def external_section(run_dir: Path) -> list[str]:
    results = runfiles.external_results(run_dir)
    lines = ["### External validation", ""]
    if not results:
        return lines + [f"None yet: `make external RUN={runfiles.run_arg(run_dir)} SOURCE=nih DATA_ROOT=...` (notebook 07).", ""]
    lines += ["Macro AUROC over the findings each source maps exactly, on the run's test split and the external set; "
              "the drop's CI comes from independent patient bootstraps (images for VinDr-CXR). Per-finding figures, "
              "thresholds, calibration and the label maps: `external/<source>/07_external.html`.", ""]
    rows = []
    for source, r in results.items():
        d = r.get("drop") or {}
        rows.append([account.source_label(source, r), r.get("subset"), account.external_units(r),
                     ", ".join(d.get("findings", [])) or "none", _num(d.get("internal"), 3), _num(d.get("external"), 3),
                     f"{_num(d.get('value'), 3)} [{_num(d.get('lo'), 3)}, {_num(d.get('hi'), 3)}]" if d else "-",
                     ("STALE (not today's best.pt) " if r["stale"] else "")
                     + ("NOT INDEPENDENT (the starting weights saw this source) " if r.get("warnings") else "")
                     + account.drop_verdict(d), account.decoded_share(r)])
    return lines + markdown_table(["source", "subset", "units", "exact findings", "internal", "external", "drop [CI]",
                           "verdict", "images scored"], rows) + [""]


def software_section(run_dir: Path, report: dict) -> list[str]:
    versions, data = report.get("versions", {}), report.get("data", {})
    lines = ["## Software and fingerprints", "",
             "- " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
             *(f"- {k}: `{data.get(k)}`" for k in ("cohort_sha256", "cache_index_sha256", "predictions_sha256")), "",
             "## Export", ""]
    exports = runfiles.export_states(run_dir)
    for export in exports:
        if export["state"] == "gone":
            lines += [f"`export/{export['record']}` describes a file that is not there any more (an interrupted or removed "
                      f"export); run `make export RUN={runfiles.run_arg(run_dir)} FORMAT={export['format']}` again.", ""]
        elif export["state"] == "stale":
            lines += [f"`export/{export['file']}` is STALE: it was made from another best.pt than today's; run "
                      f"`make export RUN={runfiles.run_arg(run_dir)} FORMAT={export['format']}` again.", ""]
        else:
            parity = export["parity"]
            lines += [f"`export/{export['file']}` ({export['format']}, sha256 `{export['sha256'][:16]}...`): uint8 "
                      f"{export['image_size']} px grey in, logits and probabilities out; checked "
                      f"against PyTorch on {parity['images']} cached test images, max probability difference "
                      f"{parity['max_abs_prob_diff']:.1e} (limit {parity['limit']:g}).", ""]
    found = bool(exports)
    if is_ensemble(run_dir):
        return lines + ["An ensemble has no checkpoint of its own: export each member (`make export RUN=<sweep>/<member>`) "
                        "and average their probabilities in the application.", ""]
    return lines + ([] if found else [f"None yet: `make export RUN={runfiles.run_arg(run_dir)} FORMAT=onnx`.", ""])


def build_card(run_dir) -> str:

    run_dir = Path(run_dir)
    report = runfiles.read_metrics(run_dir)
    params = load_frozen(run_dir).to_dict()
    _, synthetic = runfiles.data_name(params)
    lines = [f"# Model card: {run_dir.name}", "",
             f"Generated {time.strftime('%Y-%m-%d')} by cxrlib from `{run_dir.name}/` "
             f"(`make card RUN={runfiles.run_arg(run_dir)}`).", ""]
    if synthetic:
        lines += ["> **Synthetic data.** This run was trained and tested on cxrlib's synthetic stand-in for "
                  "MIMIC-CXR-JPG (`make demo`), not on MIMIC-CXR-JPG: its figures show the pipeline at work, not how "
                  "well a model reads chest X-rays.", ""]
    for warning in account.warnings(report):
        lines += [f"> **WARNING: {warning}**", ""]
    lines += [SHARING, ""] + model_details(run_dir, params, report)
    lines += ["## Intended use", "", INTENDED, ""] + factors_and_metrics(report, params)
    lines += training_data(run_dir, params, report) + evaluation_data(report)
    lines += performance(report) + buckets_section(report) + thresholds_section(report) + calibration_section(report)
    lines += subgroup_section(run_dir) + external_section(run_dir)
    lines += ["## Ethical considerations", "", *(f"- {x}" for x in ETHICS), ""]
    lines += ["## Caveats and recommendations", "", *(f"- {x}" for x in CAVEATS),
              "- Validate on another hospital's data before any use beyond research on MIMIC-CXR.", ""]
    lines += software_section(run_dir, report)
    lines += ["## Reporting checklists", "", "Where this card, or the run folder, answers each item (item numbers as "
              "published: TRIPOD+AI 2024, CLAIM 2020); a paper answers the rest:", ""]
    validated = sorted(runfiles.external_results(run_dir))
    lines += markdown_table(["TRIPOD+AI item", "answered in"], filled(TRIPOD_AI, validated))
    lines += markdown_table(["CLAIM item", "answered in"], filled(CLAIM, validated))
    return "\n".join(lines) + "\n"


def to_html(markdown: str, title: str) -> str:
    import mistune

    body = mistune.html(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:1.45}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em}"
            "blockquote{border-left:4px solid #c00;margin:0;padding:.2em 1em;background:#fee}" + PAGE_CSS + "</style></head>"
            f"<body>{body}</body></html>\n")


def write_card(run_dir) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    markdown = build_card(run_dir)
    md, page = run_dir / CARD_MD, run_dir / CARD_HTML
    atomic_write_text(md, markdown)
    atomic_write_text(page, with_navigation(to_html(markdown, f"Model card: {run_dir.name}"), run_dir, CARD_HTML))
    return md, page


def cli(command: str, argv: list[str]) -> int:

    ap = argparse.ArgumentParser(prog="python -m cxrlib card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run: runs/<name> or its name (notebook 03 must have run)")
    args = ap.parse_args(argv)
    run_dir, _ = run_folder(args.run)
    if not (run_dir / METRICS).is_file():
        raise UserError(f"{run_dir / METRICS}: no metrics; run notebook 03 first "
                        f"(make evaluate RUN={runfiles.run_arg(run_dir)})")
    with runlock.hold(run_dir, "cxrlib card"):
        md, page = write_card(run_dir)
        print(f"Model card: {md} and {page}; run index (every figure, report and file): {write_index(run_dir)}")
    return 0
