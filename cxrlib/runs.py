"""Papermill orchestration: a parameter file becomes a run folder of executed notebooks.

    python -m cxrlib run --params params/demo.yaml [--name RUN] [--notebooks 01,02] [-p key=value ...]

1. Resolve the parameters (preset file, then the run's frozen params.yaml when it exists, then
   overrides) and validate them against the one schema in params.py before any notebook starts.
2. Freeze them to runs/<name>/params.yaml.
3. Execute the numbered notebooks in order into runs/<name>/, injecting the parameters each
   notebook declares in its `parameters` cell (papermill only warns about unknown names, so we
   never rely on it to validate).
4. Render every executed notebook to standalone HTML beside it.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from pathlib import Path

from . import params as params_mod
from .errors import UserError
from .fsutil import atomic_path, atomic_write_text

NOTEBOOKS = ["01_cohort", "02_train", "03_evaluate", "04_error_analysis"]
# Make variables that are not parameters: they choose what to run, not how.
MAKE_CONTROL_VARS = {"PARAMS", "RUN", "A", "B", "PYTHON", "PYTEST_ARGS", "WORKERS", "DEMO_DATA_ARGS"}


def project_root(start=None) -> Path:
    """The folder that holds notebooks/, params/ and cxrlib/ (walking up from `start`)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "params").is_dir() and (folder / "cxrlib").is_dir():
            return folder
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "notebooks").is_dir():
        return package_parent
    raise UserError(f"cannot find the project folder (with notebooks/ and params/) above {here}")


# --------------------------------------------------------------------------- notebooks side
def notebook_setup(run_dir, namespace: dict) -> params_mod.Params:
    """First cell of every notebook: work from the project root, load the run's parameters, show
    UserErrors as one line. Returns the run's Params (params.for_notebook).

    JupyterLab starts kernels in notebooks/, papermill in the project root; relative paths in
    parameters (data/demo, runs/demo) mean the project root in both cases.
    """
    os.chdir(project_root())
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # plain python
        shell = None
    if shell is not None:
        def show_user_error(shell, etype, value, tb, tb_offset=None):
            print(f"{etype.__name__}: {value}", file=sys.stderr)
            return shell.showtraceback((etype, value, tb), tb_offset=tb_offset, exception_only=True)

        shell.set_custom_exc((UserError,), show_user_error)
    p = params_mod.for_notebook(run_dir, namespace)
    if shell is not None:
        try:
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            # SVG keeps plots as vectors: no raster pixels in reports that must hold none.
            set_matplotlib_formats("svg" if p.redact_images else "png")
        except Exception:
            pass
    import pandas as pd

    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)
    return p


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


# --------------------------------------------------------------------------- runner side
def select_notebooks(spec: str | None) -> list[str]:
    if not spec:
        return list(NOTEBOOKS)
    chosen = []
    for token in spec.replace(" ", "").split(","):
        match = [nb for nb in NOTEBOOKS if nb.startswith(token)]
        if len(match) != 1:
            raise UserError(f"--notebooks {spec!r}: {token!r} matches none of {NOTEBOOKS}; use e.g. 01,02")
        chosen.append(match[0])
    return sorted(set(chosen), key=NOTEBOOKS.index)


def make_overrides(make_vars: str, environ=os.environ) -> dict:
    """Parameters from Make's command line: DEVICE=gpu -> device: gpu.

    Make passes its command-line variables in $(MAKEOVERRIDES) and exports them, so we read the
    names from the former and the values (unmangled) from the environment.
    """
    out = {}
    for var in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", make_vars or ""):
        if var in MAKE_CONTROL_VARS or var.startswith("MAKE"):
            continue
        key = var.lower()
        if key not in params_mod.FIELDS:
            valid = " ".join(k.upper() for k in params_mod.FIELDS)
            raise UserError(f"make variable {var} is not a parameter. Parameters as make variables: {valid}; "
                            f"and PARAMS, RUN, A, B, WORKERS, DEMO_DATA_ARGS")
        _, value = params_mod.parse_override(f"{key}={environ.get(var, '')}")
        out[key] = value
    return out


def resolve(params_file=None, name=None, overrides=None, runs_dir=None) -> params_mod.Params:
    """Preset file, else the run's frozen parameters, then overrides; validated."""
    overrides = dict(overrides or {})
    if name:
        overrides["name"] = name
    values: dict = {}
    where = "parameters"
    if params_file:
        values = params_mod.read_yaml(params_file)
        values.setdefault("name", Path(params_file).stem)
        where = str(params_file)
    run_name = overrides.get("name") or values.get("name")
    frozen = Path(overrides.get("runs_dir") or values.get("runs_dir") or runs_dir or "runs") / str(run_name) / "params.yaml"
    if not params_file:
        if not run_name:
            raise UserError("give a parameter file (--params params/NAME.yaml, make ... PARAMS=...) "
                            "or an existing run (--name RUN, make ... RUN=<name>)")
        if not frozen.is_file():
            raise UserError(f"{frozen}: run {run_name!r} has no frozen parameters. Existing runs: "
                            + (", ".join(sorted(p.parent.name for p in frozen.parent.parent.glob('*/params.yaml'))) or "none"))
        values = params_mod.read_yaml(frozen)
        where = str(frozen)
    values.update(overrides)
    return params_mod.validate(values, where)


def _ipc_kernel_manager():
    """A kernel manager whose kernel talks over Unix sockets, not loopback TCP.

    Executed cells and their outputs (patient images, for real data) then never cross a
    network socket, and the kernel has no reason to warn about unencrypted TCP.
    """
    import uuid

    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            # jupyter_client's default is "kernel-ipc" in the working directory: two runs started
            # from one folder would share sockets. A private path per kernel avoids that.
            folder = Path(jupyter_runtime_dir())
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            return str(folder / f"cxrlib-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


def declared_parameters(notebook: Path) -> list[str]:
    import papermill

    return list(papermill.inspect_notebook(str(notebook)).keys())


def execute(notebook: str, p: params_mod.Params, root: Path, run_dir: Path, progress: bool = True) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = root / "notebooks" / f"{notebook}.ipynb"
    output = run_dir / f"{notebook}.ipynb"
    values = p.to_dict()
    declared = declared_parameters(source)
    inject = {k: values[k] for k in declared if k in values}
    if "run_dir" in declared:
        inject["run_dir"] = str(run_dir)
    print(f"[{notebook}] running -> {output}", flush=True)
    env_before = os.environ.get("PAPERMILL_EXECUTION")
    os.environ["PAPERMILL_EXECUTION"] = "1"
    started = time.time()
    try:
        with atomic_path(output, suffix=".ipynb") as tmp:
            try:
                papermill.execute_notebook(
                    str(source), str(tmp), parameters=inject, cwd=str(root),
                    progress_bar=progress, kernel_name="python3", language="python",
                    request_save_on_cell_execute=False,
                    kernel_manager_class=_ipc_kernel_manager(),
                )
            except PapermillExecutionError as e:
                os.replace(tmp, output)  # keep the failed notebook for inspection
                render_html(output, redact=p.redact_images)
                raise UserError(
                    f"{notebook}.ipynb failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                    f"  see {output} (and .html beside it)") from None
    finally:
        if env_before is None:
            os.environ.pop("PAPERMILL_EXECUTION", None)
        else:
            os.environ["PAPERMILL_EXECUTION"] = env_before
    if p.redact_images:
        strip_images(output)
    html = render_html(output, redact=p.redact_images)
    print(f"[{notebook}] done in {time.time() - started:.0f} s -> {html}", flush=True)
    return output


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


def render_html(notebook_path: Path, redact: bool = False) -> Path:
    """Standalone HTML (images embedded) beside the executed notebook; no script from the network."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook_path), as_version=4)
    exporter = HTMLExporter(embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    body = EXTERNAL_SCRIPTS.sub("", body)
    if redact:
        # nbconvert's template embeds its own icons as data URLs (CSS, and a mermaid helper in JS); none
        # is patient data, but without them a redacted report holds no data:image at all, as grep shows.
        # Plots (SVG once redacted) go inline as <svg> markup instead of data URLs.
        body = TEMPLATE_DATA_URLS.sub("none", body).replace("`data:image/svg+xml,${", "`data:,${")
        body = SVG_IMG.sub(_inline_svg, body)
        if "data:image" in body or "<image" in body:
            raise UserError(f"{notebook_path}: redact_images is on but the report still holds embedded images")
    html = notebook_path.with_suffix(".html")
    atomic_write_text(html, body)
    return html


def run(p: params_mod.Params, notebooks: list[str], summary: bool = False, progress: bool = True) -> Path:
    root = project_root()
    os.chdir(root)
    run_dir = p.run_dir()
    if "02_train" in notebooks:
        params_mod.check_for_training(p)
    # Every check before the one write: a refused command leaves the run folder as it was.
    frozen = params_mod.frozen_if_any(run_dir)
    if frozen:
        params_mod.check_change(frozen, p, run_dir)
    params_mod.freeze_if_changed(p, run_dir, frozen)
    for nb in notebooks:
        execute(nb, p, root, run_dir, progress=progress)
    if summary:
        print_summary(run_dir)
    return run_dir


# --------------------------------------------------------------------------- reports
def headline(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return m.get("headline", {})


def _num(x, digits: int = 4) -> str:
    # metrics.json holds null where a figure is undefined (e.g. no resample had both classes).
    return "n/a" if x is None else f"{x:.{digits}f}"


def print_summary(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    print(f"\nRun folder: {run_dir}/")
    for html in sorted(run_dir.glob("*.html")):
        print(f"  report: {html}")
    head = headline(run_dir)
    if head:
        print("\nTest-set metrics (95% bootstrap CI over patients):")
        for key, v in head.items():
            print(f"  {key:<14} {_num(v['value'])}  [{_num(v['lo'])}, {_num(v['hi'])}]")


def runs_table(runs_dir="runs"):
    import pandas as pd

    rows = []
    for frozen in sorted(Path(runs_dir).glob("*/params.yaml")):
        run_dir = frozen.parent
        p = params_mod.read_yaml(frozen)
        row = {"run": run_dir.name, "arch": p.get("arch"), "head": p.get("head"),
               "image_size": p.get("image_size"), "select_on": p.get("select_on")}
        for key, v in headline(run_dir).items():
            row[key] = f"{_num(v['value'])} [{_num(v['lo'], 3)}, {_num(v['hi'], 3)}]"
        row["notebooks"] = " ".join(nb[:2] for nb in NOTEBOOKS if (run_dir / f"{nb}.ipynb").is_file())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- CLI
def cli(command: str, argv: list[str]) -> int:
    if command == "run":
        ap = argparse.ArgumentParser(prog="python -m cxrlib run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--params", help="parameter file, e.g. params/demo.yaml (omit to reuse a run's frozen params)")
        ap.add_argument("--name", help="run name: the folder runs/<name>/ (default: the file's name)")
        ap.add_argument("--notebooks", help="which notebooks, e.g. 01,02 (default: all)")
        ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (YAML value), repeatable")
        ap.add_argument("--make-vars", default="", help=argparse.SUPPRESS)
        ap.add_argument("--summary", action="store_true", help="print the headline metrics and report paths")
        ap.add_argument("--no-progress", action="store_true")
        args = ap.parse_args(argv)
        overrides = make_overrides(args.make_vars)
        overrides.update(dict(params_mod.parse_override(o) for o in args.overrides))
        p = resolve(args.params, args.name, overrides)
        run(p, select_notebooks(args.notebooks), summary=args.summary, progress=not args.no_progress)
        return 0
    if command == "report":
        ap = argparse.ArgumentParser(prog="python -m cxrlib report")
        ap.add_argument("--name", required=True, help="run name (runs/<name>/)")
        ap.add_argument("--runs-dir", default="runs")
        args = ap.parse_args(argv)
        run_dir = Path(args.runs_dir) / args.name
        executed = [run_dir / f"{nb}.ipynb" for nb in NOTEBOOKS if (run_dir / f"{nb}.ipynb").is_file()]
        if not executed:
            raise UserError(f"{run_dir}: no executed notebooks; run `make run RUN={args.name}` first")
        redact = params_mod.load_frozen(run_dir).redact_images
        for nb in executed:
            print(render_html(nb, redact=redact))
        return 0
    if command == "runs":
        ap = argparse.ArgumentParser(prog="python -m cxrlib runs")
        ap.add_argument("--runs-dir", default="runs")
        args = ap.parse_args(argv)
        table = runs_table(args.runs_dir)
        print(table.to_string(index=False) if len(table) else f"no runs under {args.runs_dir}/")
        return 0
    raise UserError(f"unknown command {command}")
