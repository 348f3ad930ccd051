"""Reports: an executed notebook becomes standalone HTML, with no script from the network and, when
redact_images is on, no pixel data at all. Each report starts with a bar of links (the run's index page,
the other reports, the model card) and a table of contents of its sections; wide tables scroll and
figures fit the window. All of it is static: the pages open from disk, with no server and no network."""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_path, atomic_write_text
from ..runfiles import (
    CARD_HTML,
    COHORT_NOTEBOOK,
    COMPARISON,
    EXTERNAL,
    INDEX,
    TRAIN_NOTEBOOK,
    external_reports,
    reports,
)

# report_code: hide hides the code of every report but these two, which document how the data and model were made
CODE_ALWAYS_SHOWN = (COHORT_NOTEBOOK, TRAIN_NOTEBOOK)
IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")


def strip_images(notebook_path: Path) -> int:
    """Remove raster image outputs (and SVGs that embed rasters) from an executed notebook."""
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    removed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for mime in list(data):
                if mime in IMAGE_MIMES or (mime == "image/svg+xml" and "<image" in str(data[mime])):
                    del data[mime]
                    removed += 1
            if mime_html := data.get("text/html"):
                if "data:image" in str(mime_html):
                    del data["text/html"]
                    removed += 1
    with atomic_path(notebook_path, suffix=".ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    return removed


TEMPLATE_DATA_URLS = re.compile(r"""url\(\s*(?:"data:image/[^"]*"|'data:image/[^']*'|data:image/[^)'"]*)\s*\)""")
SVG_IMG = re.compile(r'<img\b[^>]*?\bsrc="data:image/svg\+xml;base64,([A-Za-z0-9+/=\s]+)"[^>]*>')
XML_PROLOG = re.compile(r"^\s*<\?xml[^>]*\?>\s*(?:<!DOCTYPE[^>]*>\s*)?")


def _inline_svg(match: re.Match) -> str:
    return XML_PROLOG.sub("", base64.b64decode(match.group(1)).decode("utf-8"))


# nbconvert's page loads require.js and MathJax from a CDN. Our static reports need neither, and a
# report of patient data should open without telling a third party that it was opened.
EXTERNAL_SCRIPTS = re.compile(r'<script\b[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>')


def render_html(notebook_path: Path, redact: bool = False, hide_code: bool = False) -> Path:
    """Standalone HTML (images embedded) beside the executed notebook; no script from the network.
    hide_code: no input cells and no prompts (nbconvert's exclude_input), only what the cells showed."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    notebook_path = Path(notebook_path)
    nb = nbformat.read(str(notebook_path), as_version=4)
    # The parameters cells (papermill's and the notebook's) are code; notebook_setup shows them as a table.
    exporter = HTMLExporter(embed_images=True, exclude_input=hide_code, exclude_input_prompt=hide_code,
                            exclude_output_prompt=hide_code)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags=("parameters", "injected-parameters"),
                                                         enabled=True), enabled=True)
    # The page title: the run and the notebook (nbconvert would write "Notebook" on every page).
    title = f"{notebook_path.parent.name} · {notebook_path.stem.split('.')[0]}"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = EXTERNAL_SCRIPTS.sub("", body)
    if redact:
        # nbconvert's template embeds its own icons as data URLs (CSS, and a mermaid helper in JS); none
        # is patient data, but without them a redacted report holds no data:image at all, as grep shows.
        # Plots (SVG once redacted) go inline as <svg> markup instead of data URLs.
        body = TEMPLATE_DATA_URLS.sub("none", body).replace("`data:image/svg+xml,${", "`data:,${")
        body = SVG_IMG.sub(_inline_svg, body)
        if "data:image" in body or "<image" in body:
            raise UserError(f"{notebook_path}: redact_images is on but the report still holds embedded images; "
                            f"`make report RUN={notebook_path.parent.name}` strips them from the run's notebooks "
                            "and renders every report again")
    html = notebook_path.with_suffix(".html")
    body = with_contents(body.replace("</head>", f"<style>{PAGE_CSS}</style></head>", 1))
    atomic_write_text(html, with_navigation(body, html.parent, html.name))
    return html


# --------------------------------------------------------------------------- navigation
# Wide tables scroll inside the page instead of running off its right edge; figures never exceed the window.
PAGE_CSS = """
.cxr-nav{position:sticky;top:0;z-index:100;background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:6px 16px;
 font:14px/1.6 system-ui,sans-serif}
.cxr-nav a{margin-right:14px;text-decoration:none}.cxr-nav a.here{font-weight:bold;color:#000}
.cxr-toc{font:14px/1.5 system-ui,sans-serif;margin:8px 0 16px 0;padding:8px 16px;border-left:3px solid #d0d7de}
.cxr-toc ol{margin:0;padding-left:20px}
table{display:block;overflow-x:auto;max-width:100%}
.jp-OutputArea-output img,.jp-RenderedImage img{max-width:100%;height:auto}
.jp-RenderedSVG svg{max-width:100%;height:auto}
"""
NAV = re.compile(r"<!--cxr-nav-->.*?<!--/cxr-nav-->", re.S)
H2 = re.compile(r'<h2 id="([^"]+)"[^>]*>(.*?)</h2>', re.S)
TAGS = re.compile(r"<[^>]+>")


def report_label(name: str) -> str:
    """"03_evaluate.html" -> "03 Evaluate"."""
    stem = name.rsplit(".", 1)[0]
    number, _, rest = stem.partition("_")
    return f"{number} {rest.replace('_', ' ').capitalize()}" if rest else stem


def navigation(run_dir: Path, here: str) -> str:
    """The bar of links: the index page, every report of the run folder, the model card (those that exist).
    A page under external/<source>/ (notebook 07) links up to the run's pages and names its source."""
    page_dir = Path(run_dir)
    external = page_dir.parent.name == EXTERNAL
    run_dir, prefix = (page_dir.parent.parent, "../../") if external else (page_dir, "")
    pages = [(INDEX, f"Run {run_dir.name}")]
    pages += [(p.name, report_label(p.name)) for p in reports(run_dir)]
    pages += [(CARD_HTML, "Model card")]
    links = [f'<a href="{prefix}{name}"{" class=here" if name == here and not external else ""}>{label}</a>'
             for name, label in pages if (name == here and not external) or (run_dir / name).is_file()]
    for page in external_reports(run_dir):   # notebook 07, one per source
        this = external and page.parent.name == page_dir.name and page.name == here
        href = here if this else f"{prefix}{page.relative_to(run_dir).as_posix()}"
        links.append(f'<a href="{href}"{" class=here" if this else ""}>{report_label(page.name)}: {page.parent.name}</a>')
    if external and not (page_dir / here).is_file():   # being written: its own link all the same
        links.append(f'<a href="{here}" class=here>{report_label(here)}: {page_dir.name}</a>')
    links += [f'<a href="{href}">Run {name}</a>' for name, href in compared_runs(page_dir)]
    return f'<!--cxr-nav--><nav class="cxr-nav">{"".join(links)}</nav><!--/cxr-nav-->'


def compared_runs(folder: Path) -> list[tuple[str, str]]:
    """(name, link to its index page) for each run a comparison in `folder` covers (make compare's report):
    a sweep's members below it, or the runs beside a compare-a+b folder."""
    try:
        names = json.loads((folder / COMPARISON).read_text()).get("runs", [])
    except (OSError, ValueError):
        return []
    found = []
    for name in names:
        for run in (folder / name, folder.parent / name):
            if (run / INDEX).is_file():
                found.append((name, os.path.relpath(run / INDEX, folder)))
                break
    return found


def with_navigation(page: str, run_dir: Path, here: str) -> str:
    bar = navigation(run_dir, here)
    if NAV.search(page):
        return NAV.sub(lambda _: bar, page, count=1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + bar, page, count=1)


def with_contents(page: str) -> str:
    """A table of contents of the report's sections (its ## headings), at the top of its content."""
    sections = [(anchor, TAGS.sub("", text).replace("¶", "").strip()) for anchor, text in H2.findall(page)]
    if not sections:
        return page
    items = "".join(f'<li><a href="#{anchor}">{text}</a></li>' for anchor, text in sections)
    toc = f'<nav class="cxr-toc"><b>Contents</b><ol>{items}</ol></nav>'
    # At the top of the page's content: nbconvert nests a title cell's text in flex boxes, where a block
    # inserted after the <h1> would sit beside the text instead of under it.
    return re.sub(r"(<main[^>]*>|<body[^>]*>)", lambda m: m.group(1) + toc, page, count=1)


def refresh_navigation(run_dir) -> list[Path]:
    """Every report's bar again, so that each links to the reports and the card made after it."""
    done = []
    run_dir = Path(run_dir)
    for page in [*reports(run_dir), run_dir / CARD_HTML, *external_reports(run_dir)]:
        if page.is_file():
            text = page.read_text()
            new = with_navigation(text, page.parent, page.name)
            if new != text:
                atomic_write_text(page, new)
                done.append(page)
    return done
