"""The first cell of every notebook (setup), and whether a notebook runs in a live Jupyter session.

    p = notebook.setup(run_dir, globals())    # in each notebook's first code cell
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .. import runfiles, runlock
from ..errors import UserError
from ..evaluation.readable import params_table
from ..params import NOTEBOOK_KNOBS, Params, validate
from ..runfiles import PARAMS
from .runs import project_root


def report_setup(redact_images: bool = False):
    """What every report's first cell needs, with or without a run of its own (notebook 06 writes into a
    sweep's folder): work from the project root, UserErrors and warnings as one line, pandas' widths, and
    matplotlib Figures drawn (PNG, or SVG where no raster may appear) rather than printed as their repr.
    Returns the IPython shell, or None in plain python."""
    import warnings

    import pandas as pd

    os.chdir(project_root())
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)
    pd.set_option("display.precision", 3)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # plain python
        return None
    if shell is None:
        return None

    def show_user_error(shell, etype, value, tb, tb_offset=None):
        print(f"{etype.__name__}: {value}", file=sys.stderr)
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset, exception_only=True)

    shell.set_custom_exc((UserError,), show_user_error)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        # a report reader needs the message, not our source file and line
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line_warning
    figure_format(redact_images)
    return shell


def figure_format(redact_images: bool) -> None:
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        # SVG keeps plots as vectors: no raster pixels in reports that must hold none.
        set_matplotlib_formats("svg" if redact_images else "png")
    except Exception:  # no IPython display machinery (plain python)
        pass


def setup(run_dir, namespace: dict, show=None, knobs=None) -> Params:
    """First cell of every notebook of a run: report_setup, then load the run's parameters and show the
    notebook's parameters once, as a table. Returns the run's Params (runfiles.for_notebook). show: the
    parameters to list (default: the notebook's own knobs); knobs: the run parameters the notebook may set
    (runfiles.for_notebook).

    JupyterLab starts kernels in notebooks/, papermill in the project root; relative paths in
    parameters (data/demo, runs/demo) mean the project root in both cases.
    """
    shell = report_setup()   # first, so that a refusal below is one line
    if is_interactive() and (scratch := scratch_for_hand(run_dir)):
        print(f"{run_dir} was made by a command: a notebook opened by hand works in {scratch}, a scratch copy "
              f"(its files linked, so it costs no space), and never changes {run_dir} itself. Delete {scratch} to "
              "start it afresh, or set run_dir to a new folder for a run of your own.")
        run_dir = namespace["run_dir"] = str(scratch)
    runlock.check_free(run_dir)   # by hand in JupyterLab: not while a command writes the run
    p = runfiles.for_notebook(run_dir, namespace, knobs)
    if shell is not None:
        figure_format(p.redact_images)
        from IPython.display import Markdown, display

        knobs = {k for names in NOTEBOOK_KNOBS.values() for k in names}
        names = list(show) if show is not None else [k for k in namespace if k in knobs]
        display(Markdown(f"**Run `{p.name}`**: parameters of this notebook (all of them: `{Path(run_dir) / PARAMS}`)"))
        display(params_table(p, names))
    return p


SCRATCH_SUFFIX = "-lab"


def scratch_for_hand(run_dir) -> Path | None:
    """Where a notebook opened by hand in JupyterLab works when run_dir was made by a command (its folder
    holds an executed NN_name.ipynb): runs/<name>-lab/, made once from the run's files as hard links
    (every cxrlib write replaces a file, so the run's own files never change), with params.yaml naming
    the scratch run. None for a folder of the user's own making (a run started by hand, or a new one)."""
    run_dir = Path(run_dir)
    if run_dir.name.endswith(SCRATCH_SUFFIX) or not runfiles.executed_notebooks(run_dir):
        return None
    scratch = run_dir.with_name(run_dir.name + SCRATCH_SUFFIX)
    if (scratch / PARAMS).is_file():
        return scratch
    for source in sorted(run_dir.rglob("*")):
        target = scratch / source.relative_to(run_dir)
        if source.is_dir() or source.name in (PARAMS, runlock.LOCK_NAME):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:   # another file system, or links not allowed: a copy
            shutil.copy2(source, target)
    frozen = runfiles.load_frozen(run_dir)
    runfiles.freeze(validate({**frozen.to_dict(), "name": scratch.name}, f"{run_dir}/{PARAMS}"), scratch)
    return scratch


def is_interactive() -> bool:
    """True in a live Jupyter session, False under papermill or plain python (no widgets there)."""
    if os.environ.get("PAPERMILL_EXECUTION") or os.environ.get("CXRLIB_BATCH"):
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
