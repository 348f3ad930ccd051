"""Write a notebook from a compact cell list: ("md", text) / ("code", text) / ("params", text).

The notebooks in notebooks/ are the source of truth; the tools/make_*.py scripts that call this
exist so that a change to a notebook's structure is reviewable as Python. Outputs are never stored.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def write(path, cells) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (cxrlib)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "md":
            nb.cells.append(new_markdown_cell(text))
        else:
            cell = new_code_cell(text)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    Path(path).write_text(nbformat.writes(nb) + "\n")
    print(f"wrote {path}", file=sys.stderr)
