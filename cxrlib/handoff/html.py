"""Reports: an executed notebook becomes standalone HTML, with no script from the network and, when
redact_images is on, no pixel data at all."""
from __future__ import annotations

import base64
import re
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_path, atomic_write_text

CODE_HIDDEN_IN = ("03_", "04_", "05_", "06_")   # report_code: hide (01 and 02 document how the data was made)
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
    atomic_write_text(html, body)
    return html
