"""runs/<name>/index.html: the way into a run. Its status and recipe in brief, the headline test figures
with their CIs and what qualifies them, the audit's verdict, the radiologist-label check, the exports,
thumbnails of the key figures (cells tagged `key-figure` in the notebooks) and a link to every report
and file. Written again by every command that changes the run (run, export, card); static HTML that
opens from disk with no server and no network.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from .. import account
from ..account import annotator_line, figure_text, planted_word
from ..fsutil import atomic_write_text
from ..runfiles import (
    CARD_HTML,
    CARD_MD,
    COHORT,
    COHORT_REPORT,
    DEMOGRAPHICS,
    EXPORT,
    EXTERNAL,
    EXTERNAL_METRICS,
    EXTERNAL_NOTEBOOK,
    EXTERNAL_PREDICTIONS,
    FAIRNESS_CSV,
    FAIRNESS_JSON,
    HISTORY,
    INDEX,
    METRICS,
    NOTEBOOKS,
    PARAMS,
    PREDICTIONS,
    data_name,
    export_states,
    external_reports,
    external_results,
    frozen_if_any,
    notebook_path,
    read_json,
    reports,
)
from ..runstatus import status
from ..stats.levels import plural
from .html import PAGE_CSS, XML_PROLOG, refresh_navigation, report_label, with_navigation

KEY_FIGURE_TAG = "key-figure"
RECIPE = ("label_source", "views", "studies_per_subject", "split_mode", "arch", "weights", "image_size", "epochs",
          "batch_size", "lr", "select_on", "eval_level", "seed", "split_seed")   # the recipe at a glance
DATA_FILES = [(PARAMS, "frozen parameters"), (COHORT, "the cohort"), (COHORT_REPORT, "its funnel"),
              (HISTORY, "one row per epoch"), (PREDICTIONS, "test and validation probabilities"),
              (METRICS, "every figure with its CI"), (DEMOGRAPHICS, "groups of the cohort"),
              (FAIRNESS_CSV, "every audit figure"), (FAIRNESS_JSON, "the audit's decisions"), (CARD_MD, "model card")]



def headline_section(m: dict) -> list[str]:
    if not m.get("headline"):
        return ["<p>Not evaluated yet: <code>make evaluate RUN=…</code> writes the figures.</p>"]
    level, data, interval = m.get("level") or {}, m.get("data", {}), m.get("ci", {})
    split = m.get("headline_split", "test")
    unit = level.get("headline", "image")
    units = (level.get("units_per_split") or {}).get(split, "?")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{figure_text(v)}</td><td>{v.get('n_boot_valid', '?')}</td></tr>"
                   for k, v in m["headline"].items())
    macro = m.get("macro") or {}
    out = [f"<p>{split.capitalize()} split, per <b>{unit}</b>: {units} {plural(unit)} of "
           f"{data.get('patients_per_split', {}).get(split, '?')} patients. {interval.get('level', 0.95):.0%} CIs: "
           f"{html.escape(str(interval.get('method', 'patient bootstrap')))}, {interval.get('n_boot', '?')} resamples; "
           "they are conditional on this test set and this trained model (not on a retraining).</p>",
           f"<table><tr><th>figure</th><th>estimate [CI]</th><th>resamples used</th></tr>{rows}</table>"]
    if macro.get("findings") is not None:
        out.append(f"<p>{html.escape(account.macro_sentence(m)).capitalize()}.</p>")
    if account.learning_line(m):
        out.append(f"<p>How it learnt: {html.escape(account.learning_line(m))}.</p>")
    if m.get("buckets"):
        out.append(f"<p>Head, medium and tail ({html.escape(account.bucket_rule(m))}):</p><ul>"
                   + "".join(f"<li>{html.escape(line)}</li>" for line in account.bucket_lines(m)) + "</ul>")
    if account.set_gold_line(m):
        out.append(f"<p>{html.escape(account.set_gold_line(m)).capitalize()}.</p>")
    for warning in account.warnings(m):
        out.append(f'<p class="warn">&#9888; {html.escape(warning)}</p>')
    if (m.get("gold") or {}).get("model_vs_gold"):
        out.append(f"<p>The 2.1.0 test-set labels (one annotator's labels of the reports). "
                   f"{html.escape(annotator_line(m['gold']))}</p>")
    return out


def audit_section(run_dir: Path) -> list[str]:
    audit = read_json(run_dir / FAIRNESS_JSON)
    if not audit:
        return ["<p>No audit yet (notebook 05).</p>"]
    hits = audit.get("significant", [])
    out = [f"<p>{html.escape(account.audit_verdict(audit))}.</p>"]
    if hits:
        out.append("<ul>" + "".join(f"<li>{html.escape(account.gap_line(h))}</li>" for h in hits[:6]) + "</ul>")
    if check := audit.get("planted"):
        out.append(f"<p>Synthetic data: the planted disparity ({html.escape(check['planted']['attribute'])}="
                   f"{html.escape(str(check['planted']['group']))}) was "
                   f"{planted_word(check)}.</p>")
    return out


def external_section(run_dir: Path) -> list[str]:
    """One line per external validation (notebook 07): the primary drop and a link to its report."""
    results = external_results(run_dir)
    if not results:
        return [f"<p>None yet: <code>make external RUN={html.escape(run_dir.name)} SOURCE=nih DATA_ROOT=...</code>"
                "</p>"]
    items = []
    for source, report in results.items():
        link = (f'<a href="{EXTERNAL}/{html.escape(source)}/{EXTERNAL_NOTEBOOK}.html">'
                f'{html.escape(account.source_label(source, report))}</a>')
        drop = report.get("drop")
        share = html.escape(account.decoded_share(report))
        share = f"<span class='warn'>{share}</span>" if "PARTIAL" in share else share
        if not drop:
            items.append(f"<li>{link}: no exactly mapped finding could be compared; {share}</li>")
            continue
        verdict = account.drop_verdict(drop)
        verdict = f"<span class='warn'>{verdict}</span>" if drop["reported"] else verdict
        if report["stale"]:
            verdict += " <span class='warn'>(STALE: not made from today's best.pt; validate again)</span>"
        items.append(f"<li>{link} ({html.escape(str(report.get('subset')))}, "
                     f"{html.escape(account.external_units(report))}): macro AUROC over {len(drop['findings'])} exact "
                     f"findings {drop['internal']:.3f} internal, {drop['external']:.3f} external; drop "
                     f"{drop['value']:+.3f} [{drop['lo']:+.3f}, {drop['hi']:+.3f}]: {verdict}; {share}</li>")
    return ["<ul>" + "".join(items) + "</ul>"]


def export_section(run_dir: Path) -> list[str]:
    states = export_states(run_dir)
    if not states:
        return ["<p>No export yet: <code>make export RUN=" + html.escape(run_dir.name) + " FORMAT=onnx</code>.</p>"]
    items = []
    for e in states:
        link = f'<a href="{EXPORT}/{html.escape(e["file"])}">{html.escape(e["file"])}</a>'
        if e["state"] == "current":
            items.append(f"<li>{link} ({e['format']}): checked against PyTorch, max probability difference "
                         f"{e['parity']['max_abs_prob_diff']:.1e}</li>")
        else:
            what = "STALE (made from another best.pt)" if e["state"] == "stale" else "a record without its file"
            items.append(f"<li>{link}: {what}; export again</li>")
    return ["<ul>" + "".join(items) + "</ul>"]


def key_figures(run_dir: Path, redact: bool = False) -> list[tuple[str, str]]:
    """(report name, <img> or <svg> markup) of each output of a cell tagged key-figure, in notebook order;
    with `redact`, vector plots only (never a raster, never an SVG that embeds one)."""
    figures = []
    notebooks = [notebook_path(run_dir, name) for name in NOTEBOOKS]
    notebooks += [notebook_path(page.parent, EXTERNAL_NOTEBOOK) for page in external_reports(run_dir)]
    for notebook in notebooks:
        if not notebook.is_file():
            continue
        report = notebook.with_suffix(".html").relative_to(run_dir).as_posix()
        for cell in json.loads(notebook.read_text()).get("cells", []):
            if KEY_FIGURE_TAG not in cell.get("metadata", {}).get("tags", []):
                continue
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "image/png" in data and not redact:
                    png = "".join(data["image/png"]) if isinstance(data["image/png"], list) else data["image/png"]
                    figures.append((report, f'<img src="data:image/png;base64,{png.strip()}" '
                                            f'alt="{html.escape(caption(report))}">'))
                elif "image/svg+xml" in data:
                    svg = "".join(data["image/svg+xml"]) if isinstance(data["image/svg+xml"], list) else data["image/svg+xml"]
                    if not (redact and "<image" in svg):
                        figures.append((report, XML_PROLOG.sub("", svg)))
    return figures


def caption(report: str) -> str:
    """A key figure's caption and alt text: the report it comes from ('03 Evaluate', '07 External: nih')."""
    path = Path(report)
    label = report_label(path.name)
    return f"{label}: {path.parent.name}" if path.parent.parent.name == EXTERNAL else f"key figure of {label}"


def files_section(run_dir: Path) -> list[str]:
    listed = [f'<li><a href="{p.name}">{report_label(p.name)}</a></li>'
               for p in reports(run_dir)]
    external = external_reports(run_dir)
    listed += [f'<li><a href="{p.relative_to(run_dir).as_posix()}">{report_label(p.name)}: {html.escape(p.parent.name)}'
                "</a></li>" for p in external]
    if (run_dir / CARD_HTML).is_file():
        listed.append(f'<li><a href="{CARD_HTML}">Model card</a></li>')
    files = [f'<li><a href="{name}">{name}</a>: {what}</li>' for name, what in DATA_FILES if (run_dir / name).is_file()]
    for page in external:
        for name, what in ((EXTERNAL_METRICS, "every figure of this external validation"),
                           (EXTERNAL_PREDICTIONS, "one row per external image: probabilities and mapped labels")):
            if (page.parent / name).is_file():
                where = (page.parent / name).relative_to(run_dir).as_posix()
                files.append(f'<li><a href="{where}">{where}</a>: {what}</li>')
    return ["<h2 id='reports'>Reports</h2><ul>" + "".join(listed) + "</ul>",
            "<h2 id='files'>Files</h2><ul>" + "".join(files) + "</ul>"]


def build_index(run_dir) -> str:
    run_dir = Path(run_dir)
    params, state, m = frozen_if_any(run_dir), status(run_dir), read_json(run_dir / METRICS)
    recipe = ", ".join(f"{k} {html.escape(str(params[k]))}" for k in RECIPE if k in params)
    best = f", best epoch {state['best_epoch']}" if state["best_epoch"] else ""
    _, synthetic = data_name(params) if params.get("data_root") else (None, False)
    banner = ("<p class='warn'>Synthetic data: this run was trained and tested on cxrlib's synthetic stand-in for "
              "MIMIC-CXR-JPG (make demo), not on MIMIC-CXR-JPG; its figures show the pipeline at work, not how well "
              "a model reads chest X-rays.</p>") if synthetic else ""
    parts = [f"<h1>Run {html.escape(run_dir.name)}</h1>", banner,
             f"<p><b>{state['status']}</b> · {state['date']} · epochs {state['epochs']}{best}"
             + "".join(f" · {html.escape(n)}" for n in state["notes"]) + "</p>",
             f"<p class='recipe'>{recipe}</p>",
             "<h2 id='headline'>Headline figures</h2>", *headline_section(m),
             "<h2 id='audit'>Audit by patient group</h2>", *audit_section(run_dir),
             "<h2 id='external'>External validation</h2>", *external_section(run_dir),
             "<h2 id='export'>Hand-off</h2>", *export_section(run_dir)]
    figures = key_figures(run_dir, redact=bool(params.get("redact_images")))
    if figures:
        parts.append("<h2 id='figures'>Key figures</h2><div class='thumbs'>" + "".join(
            f'<figure class="thumb"><a href="{report}">{markup}</a><figcaption>{html.escape(caption(report))}'
            "</figcaption></figure>" for report, markup in figures) + "</div>")
    parts += files_section(run_dir)
    style = (PAGE_CSS + "body{font-family:system-ui,sans-serif;max-width:72em;margin:0 auto 2em auto;line-height:1.45}"
             "main{padding:0 16px}td,th{border:1px solid #ccc;padding:.2em .6em}table{border-collapse:collapse}"
             ".warn{color:#b00020;font-weight:bold}.recipe{color:#555}.thumbs{display:flex;flex-wrap:wrap;gap:12px}"
             ".thumb{display:block;width:340px;border:1px solid #ddd;margin:0}"
             "figcaption{font-size:.85em;color:#444;padding:.2em .4em}"
             ".thumb img,.thumb svg{display:block;width:100%;height:220px;object-fit:contain}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)} · index</title>"
            f"<style>{style}</style></head><body><main>{''.join(parts)}</main></body></html>\n")
    return with_navigation(page, run_dir, INDEX)


def write_index(run_dir) -> Path:
    """index.html written atomically, then every report's bar of links refreshed to match the folder."""
    run_dir = Path(run_dir)
    path = run_dir / INDEX
    atomic_write_text(path, build_index(run_dir))
    refresh_navigation(run_dir)
    return path
