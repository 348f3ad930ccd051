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
import os
import re
import sys
import time
from pathlib import Path

from .. import runfiles, runlock
from ..errors import Interrupted, UserError
from ..fsutil import disk_full
from ..handoff.html import CODE_ALWAYS_SHOWN, render_html, strip_images
from ..handoff.index_page import write_index
from ..params import FIELDS, STAGE_OF, Params, check_for_training, parse_override, read_yaml, suggest, validate
from ..progress import PROGRESS_FILE, Streamer
from ..runfiles import AUDIT_NOTEBOOK, EVALUATE_NOTEBOOK, NOTEBOOKS, PARAMS, TRAIN_NOTEBOOK
from ..tracking import finish
from .lister import print_summary

# Make variables that are not parameters: they choose what to run, not how.
MAKE_CONTROL_VARS = {"PARAMS", "RUN", "A", "B", "YES", "LAB_ARGS", "PYTHON", "PYTEST_ARGS", "WORKERS", "DEMO_DATA_ARGS",
                     "RELEASE", "PRINT_GSUTIL", "MIMIC_IV_VERSION", "SOURCE", "SUBSET", "EXTERNAL_VIEWS", "EQUALIZE"}


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


def make_overrides(make_vars: str, environ=os.environ, sources: dict | None = None) -> dict:
    """Parameters from Make's command line: DEVICE=gpu -> device: gpu.

    Make passes its command-line variables in $(MAKEOVERRIDES) and exports them, so we read the
    names from the former and the values (unmangled) from the environment.
    """
    out = {}
    for var in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", make_vars or ""):
        if var in MAKE_CONTROL_VARS or var.startswith("MAKE"):
            continue
        key = var.lower()
        if key not in FIELDS:
            names = [k.upper() for k in FIELDS] + sorted(MAKE_CONTROL_VARS)
            close = suggest(var, names)
            raise UserError(f"the make line: {var} is not a parameter"
                            + (f"; did you mean {close}?" if close else "")
                            + " Parameters are the names in cxrlib/params.py in upper case (make help lists the others)")
        _, value = parse_override(f"{key}={environ.get(var, '')}")
        out[key] = value
        if sources is not None:
            sources[key] = f"the make line ({var}={environ.get(var, '')})"
    return out


def resolve(params_file=None, name=None, overrides=None, runs_dir=None, sources=None) -> Params:
    """Preset file, else the run's frozen parameters, then overrides; validated. sources: where each
    override came from (the make line, -p), named by an error instead of the file."""
    overrides = dict(overrides or {})
    if name:
        overrides["name"] = name
    values: dict = {}
    where = "parameters"
    if params_file:
        values = read_yaml(params_file)
        values.setdefault("name", Path(params_file).stem)
        where = str(params_file)
    run_name = overrides.get("name") or values.get("name")
    frozen = Path(overrides.get("runs_dir") or values.get("runs_dir") or runs_dir or "runs") / str(run_name) / PARAMS
    if not params_file:
        if not run_name:
            raise UserError("give a parameter file (--params params/NAME.yaml, make ... PARAMS=...) "
                            "or an existing run (--name RUN, make ... RUN=<name>)")
        if not frozen.is_file():
            raise UserError(f"{frozen}: run {run_name!r} has no frozen parameters. Existing runs: "
                            + (", ".join(f.name for f in runfiles.run_folders(frozen.parent.parent, members=False)) or "none"))
        values = read_yaml(frozen)
        where = str(frozen)
    values.update(overrides)
    return validate(values, where, sources)


def _ipc_kernel_manager(kernel_log: Path | None = None):
    """A kernel manager whose kernel talks over Unix sockets, not loopback TCP.

    Executed cells and their outputs (patient images, for real data) then never cross a
    network socket, and the kernel has no reason to warn about unencrypted TCP. The kernel
    process's own stderr (ipykernel's and C libraries' messages, not the notebook's output)
    goes to kernel_log: on Ctrl-C the dying kernel would otherwise print its tracebacks on
    the terminal.
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

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if kernel_log is not None:
                with open(kernel_log, "a") as log:   # the child keeps its own copy of the descriptor
                    log.write(f"--- kernel started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                    log.flush()
                    kw["stderr"] = log
                    return await super()._async_launch_kernel(kernel_cmd, **kw)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


def declared_parameters(notebook: Path) -> list[str]:
    import papermill

    return list(papermill.inspect_notebook(str(notebook)).keys())


def execute(notebook: str, p: Params, root: Path, run_dir: Path, progress: bool = True,
            extra: dict | None = None) -> Path:
    """Run one notebook into run_dir, streaming its printed output; saved as it runs, kept if it fails.

    papermill writes <notebook>.running.ipynb after every cell and every 30 s within one; it becomes
    <notebook>.ipynb when the notebook ends, however it ends (a kill leaves only the .running file).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = root / "notebooks" / f"{notebook}.ipynb"
    output = runfiles.notebook_path(run_dir, notebook)
    running = runfiles.running_path(run_dir, notebook)
    values = p.to_dict()
    declared = declared_parameters(source)
    inject = {k: values[k] for k in declared if k in values}
    if "run_dir" in declared:
        inject["run_dir"] = str(run_dir)
    inject.update({k: v for k, v in (extra or {}).items() if k in declared})   # a notebook's own, not Params
    print(f"[{notebook}] running -> {output}", flush=True)
    side = run_dir / f".{notebook}.progress"   # the kernel's batch progress: shown here, not saved in the notebook
    try:
        side.write_text("")
    except OSError:   # no folder or no space: the progress lines stay in the cell output, as before
        side = None
    env_before = {k: os.environ.get(k) for k in ("PAPERMILL_EXECUTION", PROGRESS_FILE)}
    os.environ["PAPERMILL_EXECUTION"] = "1"
    if side is not None:
        os.environ[PROGRESS_FILE] = str(side)
    out, err = (Streamer(sys.stdout, side=side), Streamer(sys.stderr, live=False)) if progress else (None, None)
    started = time.time()
    try:
        papermill.execute_notebook(
            str(source), str(running), parameters=inject, cwd=str(root),
            progress_bar=False, kernel_name="python3", language="python",
            request_save_on_cell_execute=True, autosave_cell_every=30, stdout_file=out, stderr_file=err,
            kernel_manager_class=_ipc_kernel_manager(run_dir / "kernel.log"),
        )
    except PapermillExecutionError as e:
        keep_partial(running, output, p)
        raise UserError(
            f"{notebook}.ipynb failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"  see {output} (and .html beside it)") from None
    except OSError as error:   # papermill could not save the notebook: the run folder's disk
        full = disk_full(error, run_dir)
        if full is None:
            raise
        raise UserError(f"{notebook}: {full}; the executed notebook could not be saved. Free some space and rerun "
                        "the same command (training continues from its last checkpoint)") from None
    except KeyboardInterrupt:
        kept = keep_partial(running, output, p)
        raise Interrupted(f"interrupted in {notebook}" + (f" (what ran is in {output})" if kept else "")
                          + "; rerun the same command to continue where it stopped") from None
    finally:
        for stream in (out, err):
            if stream is not None:
                stream.finish()
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if side is not None:
            side.unlink(missing_ok=True)
    promote(running, output)
    if p.redact_images:
        strip_images(output)
    html = render(output, p)
    print(f"[{notebook}] done in {time.time() - started:.0f} s -> {html}", flush=True)
    return output


def render(notebook: Path, p: Params) -> Path:
    """The notebook's HTML report: without pixel data under redact_images; with report_code: hide, the
    reports people hand around (03-07) show figures and tables, not code."""
    hide = p.report_code == "hide" and Path(notebook).name.split(".")[0] not in CODE_ALWAYS_SHOWN
    return render_html(notebook, redact=p.redact_images, hide_code=hide)


def redact_reports(run_dir: Path, p: Params, skip=()) -> list[Path]:
    """Strip pixel data from every executed notebook of the run (01-04 and any later NN_*.ipynb) and render
    it again; `skip`: the notebooks about to run (they are written redacted)."""
    done = []
    for notebook in runfiles.executed_notebooks(run_dir):
        if notebook.stem in skip:
            continue
        removed = strip_images(notebook)
        html = notebook.with_suffix(".html")
        if removed or not html.is_file() or "data:image" in html.read_text():
            render(notebook, p)
            print(f"[{notebook.stem}] redacted: {removed} image output(s) removed, report rendered again", flush=True)
            done.append(notebook)
    return done


def remove_temp_notebooks(run_dir: Path) -> None:
    """Temp files a killed run left: atomic writes (.<name>.<random><suffix>) of notebooks and reports."""
    for stale in runfiles.temp_files(run_dir):
        stale.unlink(missing_ok=True)


def promote(running: Path, output: Path) -> None:
    with open(running, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(running, output)


def keep_partial(running: Path, output: Path, p: Params) -> bool:
    """The failed or interrupted notebook, as far as it ran, becomes the run's notebook (and its HTML)."""
    if not running.is_file():
        return False
    promote(running, output)
    try:
        if p.redact_images:
            strip_images(output)
        render(output, p)
    except Exception:   # a notebook cut mid-write: the .ipynb is still there to inspect
        pass
    return True


def run(p: Params, notebooks: list[str], summary: bool = False, progress: bool = True) -> Path:
    root = project_root()
    os.chdir(root)
    run_dir = p.run_dir()
    if TRAIN_NOTEBOOK in notebooks:
        check_for_training(p)
        from ..training.model import check_model  # lazy: keeps torch out of this module's import

        check_model(p)
        if p.device == "gpu" or p.gpus > 1:   # before notebook 01 builds any cache: no GPU is one line now
            from ..training.runtime import resolve_device  # lazy: keeps torch out of this module's import

            resolve_device(p)
    # Every check before the one write: a refused command leaves the run folder as it was. One writer at a
    # time: the lock is taken before params.yaml is read, so two commands cannot both pass the check.
    with runlock.hold(run_dir, " ".join(["cxrlib", *sys.argv[1:]]) or "cxrlib run"):
        frozen = runfiles.frozen_if_any(run_dir)
        if frozen:
            runfiles.check_change(frozen, p, run_dir)
        runfiles.freeze_if_changed(p, run_dir, frozen)
        try:
            remove_temp_notebooks(run_dir)
            if p.redact_images:   # a property of the run's reports: those made before it was asked for too
                redact_reports(run_dir, p, skip=notebooks)
                write_index(run_dir)   # its thumbnails too
            for nb in notebooks:
                execute(nb, p, root, run_dir, progress=progress)
                write_index(run_dir)   # the way in follows every notebook that changed the run
            if EVALUATE_NOTEBOOK in notebooks:
                finish(p, run_dir)   # tracker: the test figures and the reports (nothing when tracker: none)
        except BaseException:
            restore_runtime_fields(run_dir, frozen, p)
            raise
    if summary:
        print_summary(run_dir, notebooks)
    return run_dir


def restore_runtime_fields(run_dir: Path, frozen: dict, p: Params) -> None:
    """A failed or interrupted command leaves params.yaml as it was where it only changed where and how fast
    (a one-off DEVICE= or MIMIC_IV_ROOT= must not become the run's setting for the next command). Fields of a
    stage are kept: a stage that ran under them may have written its output, and so are epochs and patience,
    which an interrupted training's last.pt was already following."""
    if not frozen:
        return
    old = validate(frozen, str(Path(run_dir) / PARAMS)).to_dict()
    new = p.to_dict()
    changed = [k for k in new if old.get(k) != new[k]]
    if changed and all(STAGE_OF[k] == "runtime" and k not in ("epochs", "patience") for k in changed):
        runfiles.freeze(validate(old, PARAMS), run_dir)


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
        ap.add_argument("--summary", action="store_true", help=argparse.SUPPRESS)   # always on; kept for old scripts
        ap.add_argument("--default-params", action="store_true", help=argparse.SUPPRESS)   # make: PARAMS not given
        ap.add_argument("--no-progress", action="store_true", help="do not stream the notebooks' output")
        args = ap.parse_args(argv)
        sources = {}
        overrides = make_overrides(args.make_vars, sources=sources)
        for text in args.overrides:
            key, value = parse_override(text)
            overrides[key], sources[key] = value, f"-p {text}"
        if overrides.get("resume") and not args.name:
            existing = [f.name for f in runfiles.run_folders(overrides.get("runs_dir", "runs"), members=False)]
            raise UserError("RESUME=1 continues a run: name it with RUN=<name> (runs: "
                            + (", ".join(existing) or "none yet") + ")")
        runs_dir = Path(overrides.get("runs_dir", "runs"))
        if args.default_params and args.name and (runs_dir / args.name / PARAMS).is_file():
            # An existing run starts from its own params.yaml, never from the demo preset.
            print(f"RUN={args.name}: using {runs_dir / args.name / PARAMS}", flush=True)
            args.params = None
        elif args.default_params and args.params:
            print(f"PARAMS not given: using {args.params} (the synthetic demo). For real data name a preset, "
                  "e.g. PARAMS=params/improved.yaml", flush=True)
        p = resolve(args.params, args.name, overrides, sources=sources)
        run(p, select_notebooks(args.notebooks), summary=True, progress=not args.no_progress)
        return 0
    if command == "report":
        ap = argparse.ArgumentParser(prog="python -m cxrlib report")
        ap.add_argument("--name", required=True, help="run name (runs/<name>/)")
        ap.add_argument("--runs-dir", default="runs")
        args = ap.parse_args(argv)
        run_dir = Path(args.runs_dir) / args.name
        executed = [runfiles.notebook_path(run_dir, nb) for nb in NOTEBOOKS if runfiles.notebook_path(run_dir, nb).is_file()]
        if not executed:
            raise UserError(f"{run_dir}: no executed notebooks; run `make run RUN={args.name}` first")
        p = runfiles.load_frozen(run_dir)
        for nb in executed:
            if p.redact_images:
                strip_images(nb)   # notebooks executed before redaction was asked for hold images
            print(render(nb, p))
        return 0
    if command == "audit":
        ap = argparse.ArgumentParser(prog="python -m cxrlib audit",
                                     description="Notebook 05 on a run: the audit by patient group (fairness.csv, "
                                                 "fairness.json, 05_fairness.html)")
        ap.add_argument("--run", required=True, help="run name (runs/<name>/; notebook 03 must have run)")
        ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an audit parameter (race_policy, min_group_patients, bootstrap, mimic_iv_root)")
        args = ap.parse_args(argv)
        overrides = dict(parse_override(text) for text in args.overrides)
        run(resolve(None, args.run, overrides), [AUDIT_NOTEBOOK], summary=True)
        return 0
    raise UserError(f"unknown command {command}")
