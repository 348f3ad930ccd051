"""The runs a person has: their status, figures and differences, and what a command leaves on screen.

    python -m cxrlib runs                 # name, status, date, duration, best epoch, headline figures with CIs
    python -m cxrlib diff A B             # parameters first, then figures, then notebook text (no images, no HTML)
    python -m cxrlib clean --name RUN     # remove a run's checkpoints (after asking), keep reports and metrics

What each status means: cxrlib.runstatus.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from .. import account, runlock
from ..errors import UserError
from ..progress import duration
from ..runfiles import (
    AUDIT_NOTEBOOK,
    BEST,
    CHECKPOINTS,
    EVALUATE_NOTEBOOK,
    FAIRNESS_JSON,
    INDEX,
    LAST,
    METRICS,
    NOTEBOOKS,
    PARAMS,
    TRAIN_NOTEBOOK,
    external_results,
    frozen_if_any,
    index_pages,
    notebook_path,
    read_history,
    read_json,
    run_folders,
)
from ..runstatus import status, training_finished


def fmt(x, digits: int = 3) -> str:
    """A figure for reading: 3 decimals; n/a where metrics.json holds null (an undefined figure)."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def runs_table(runs_dir="runs") -> pd.DataFrame:

    rows = []
    for run_dir in run_folders(runs_dir):   # then the sweeps' members: runs/<sweep>/<member>/
        s = status(run_dir)
        params = frozen_if_any(run_dir)
        row = {"run": str(run_dir.relative_to(runs_dir)), "status": s["status"], "date": s["date"],
               "duration": duration(s["duration"]) if s["duration"] else "-",
               "arch": params.get("arch"), "size": params.get("image_size"), "epochs": s["epochs"],
               "best": s["best_epoch"] if s["best_epoch"] is not None else "-",
               f"{params.get('select_on', 'validate')[:3]} AUROC": fmt(s["best_val"]) if s["best_val"] is not None else "-"}
        for key, v in (s["metrics"].get("headline") or {}).items():
            row[f"test {key}"] = f"{fmt(v['value'])} [{fmt(v['lo'])}, {fmt(v['hi'])}]"
        row["external drop"] = ", ".join(
            f"{account.source_label(source, r)} {r['drop']['value']:+.3f}{'*' if account.excludes_zero(r['drop']) else ''}"
            f"{' (stale)' if r['stale'] else ''}"
            f"{f' (partial: {account.scored_share(r):.1%} scored)' if (account.scored_share(r) or 1) < 1 else ''}"
            for source, r in external_results(run_dir).items() if r.get("drop")) or "-"
        row["note"] = "; ".join(s["notes"])
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


# --------------------------------------------------------------------------- what a command prints at its end
def training_summary(run_dir) -> list[str]:
    history = read_history(run_dir)
    if history.empty:
        return []
    params = frozen_if_any(run_dir)
    best = history[history["epoch"] == history["best_epoch"].iloc[-1]]
    lines = [f"Training: {len(history)} of {params.get('epochs')} epochs"
             + (" (stopped early)" if training_finished(params, history) and len(history) < params.get("epochs", 0) else "")]
    if len(best):
        b = best.iloc[0]
        split = b.get("eval_split", params.get("select_on"))
        lines.append(f"  best epoch {int(b['epoch'])} (chosen on {split} by {params.get('select_metric')}): "
                     f"{split} AUROC macro {fmt(b['val_auroc_macro'])}, micro {fmt(b['val_auroc_micro'])}, "
                     f"loss {fmt(b['val_loss'], 4)}, accuracy {fmt(b['val_accuracy'])}")
        if split == "test":
            lines.append(f"  WARNING: {account.SELECTED_ON_TEST}")
    lines.append(f"  checkpoints: {Path(run_dir) / CHECKPOINTS / BEST} (evaluation), {LAST} (resume)")
    return lines


def evaluation_summary(run_dir) -> list[str]:
    m = read_json(Path(run_dir) / METRICS)
    if not m.get("headline"):
        return []
    data, ci = m.get("data", {}), m.get("ci", {})
    split = m.get("headline_split", "test")
    level = m.get("level") or {}
    studies = ""
    if level.get("headline") == "study":
        studies = f" in {level.get('units_per_split', {}).get(split, '?')} studies (figures per study)"
    lines = [f"{split.capitalize()} set: {data.get('images_per_split', {}).get(split, '?')} images{studies} of "
             f"{data.get('patients_per_split', {}).get(split, '?')} patients; {ci.get('level', 0.95):.0%} CIs from "
             f"{ci.get('n_boot', '?')} patient resamples"]
    for key, v in m["headline"].items():
        outside = None not in (v["value"], v["lo"], v["hi"]) and not v["lo"] <= v["value"] <= v["hi"]
        conditional = v.get("conditional") or outside
        lines.append(f"  {key:<12} {fmt(v['value'])}  [{fmt(v['lo'])}, {fmt(v['hi'])}]"
                     + (f"  (CI conditional: {v.get('n_boot_valid', '?')} of {ci.get('n_boot', '?')} resamples)"
                        if conditional else ""))
    if any(v.get("conditional") for v in m["headline"].values()):
        lines.append("    a conditional interval comes from the resamples that kept both classes of every finding it "
                     "averages; it may miss the estimate (notebook 03)")
    if m.get("macro"):
        lines.append(f"  {account.macro_sentence(m)}")
    lines += [f"  WARNING: {w}" for w in account.warnings(m)]
    return lines


def audit_summary(run_dir: Path) -> list[str]:
    """fairness.json in a few lines: the significant primary gaps and, on the stand-in, the planted one."""
    from ..evaluation.audit import summary_lines  # lazy: keeps sklearn, scipy (the audit's statistics) out of make runs

    return summary_lines(json.loads((run_dir / FAIRNESS_JSON).read_text()))


def print_summary(run_dir, notebooks=NOTEBOOKS) -> None:
    run_dir = Path(run_dir)
    lines = [f"\nRun folder: {run_dir}/"]
    lines += [f"  report: {run_dir / (nb + '.html')}" for nb in notebooks if (run_dir / f"{nb}.html").is_file()]
    if TRAIN_NOTEBOOK in notebooks:
        lines += [""] + training_summary(run_dir)
    if EVALUATE_NOTEBOOK in notebooks:
        lines += [""] + evaluation_summary(run_dir)
    if AUDIT_NOTEBOOK in notebooks and (run_dir / FAIRNESS_JSON).is_file():
        lines += [""] + audit_summary(run_dir)
    if (run_dir / INDEX).is_file():
        lines += ["", f"Run index (every figure, report and file of the run): {run_dir / INDEX}"]
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- diff
def notebook_text(path: Path) -> list[str]:
    """Sources and text outputs of an executed notebook, one line per line; images, HTML and timings left out."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    lines = []
    for i, cell in enumerate(nb.cells):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue   # the parameters, shown first
        lines.append(f"--- cell {i} ({cell.cell_type})")
        lines += cell.source.splitlines()
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                lines += ["  | " + t for t in out.text.splitlines()]
            elif out.output_type == "error":
                lines.append(f"  ! {out.ename}: {out.evalue}")
            elif "text/plain" in out.get("data", {}):
                data = out["data"]
                if any(k.startswith("image/") for k in data):
                    lines.append("  [figure]")
                else:
                    lines += ["  | " + t for t in data["text/plain"].splitlines()]
    return lines


def diff_runs(a, b) -> str:
    a, b = Path(a), Path(b)
    for run in (a, b):
        if not (run / PARAMS).is_file():
            raise UserError(f"{run}: not a run folder (no params.yaml); runs: "
                            + ", ".join(f.name for f in run_folders(run.parent, members=False)))
    pa, pb = frozen_if_any(a), frozen_if_any(b)
    keys = [k for k in dict.fromkeys([*pa, *pb]) if k != "name" and pa.get(k) != pb.get(k)]
    out = [f"Parameters that differ ({a.name} | {b.name}):"]
    width = max([len(k) for k in keys] + [4])
    out += [f"  {k:<{width}}  {pa.get(k, '(unset)')!s} | {pb.get(k, '(unset)')!s}" for k in keys] or ["  none"]
    ha, hb = read_json(a / METRICS).get("headline", {}), read_json(b / METRICS).get("headline", {})
    if ha or hb:
        out += ["", f"Headline figures ({a.name} | {b.name}):"]
        for key in dict.fromkeys([*ha, *hb]):
            cell = [f"{fmt(h[key]['value'])} [{fmt(h[key]['lo'])}, {fmt(h[key]['hi'])}]" if key in h else "-"
                    for h in (ha, hb)]
            out.append(f"  {key:<12} {cell[0]} | {cell[1]}")
    for nb in NOTEBOOKS:
        na, nb_b = notebook_path(a, nb), notebook_path(b, nb)
        if not (na.is_file() and nb_b.is_file()):
            continue
        body = list(difflib.unified_diff(notebook_text(na), notebook_text(nb_b), f"{a.name}/{nb}.ipynb",
                                         f"{b.name}/{nb}.ipynb", n=1, lineterm=""))
        out += ["", f"{nb}: " + ("no difference in sources or text outputs" if not body else "sources and text outputs")]
        out += body
    return "\n".join(out)


# --------------------------------------------------------------------------- clean
def clean(run_dir, assume_yes: bool = False, ask=input) -> int:
    """Remove <run>/checkpoints after asking; reports, metrics, predictions and history stay. Bytes freed."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        print(f"{folder}: nothing to remove")
        return 0
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: {size / 1e6:,.0f} MB ({', '.join(sorted(f.name for f in folder.iterdir()))}). Without them the "
          "run cannot be resumed, evaluated again or explained (Grad-CAM); its reports and metrics stay.")
    if not assume_yes:
        if ask is input and not sys.stdin.isatty():
            raise UserError("not removing checkpoints without a terminal to ask; add YES=1 (make) or --yes")
        if ask("remove them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    shutil.rmtree(folder)
    print(f"removed {folder} ({size / 1e6:,.0f} MB)")
    return size


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m cxrlib {command}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    if command == "runs":
        args = ap.parse_args(argv)
        table = runs_table(args.runs_dir)
        text = table.to_string(index=False) if len(table) else f"no runs under {args.runs_dir}/"
        red = sys.stdout.isatty() and not os.environ.get("NO_COLOR")   # a warning stands out in a terminal
        print("\n".join(f"\033[31m{line}\033[0m" if red and "WARNING" in line else line for line in text.splitlines()))
        for run_dir in run_folders(args.runs_dir):   # a note column's WARNING in full, worded by cxrlib.account
            name = run_dir.relative_to(args.runs_dir)
            for warning in account.warnings(read_json(run_dir / METRICS)):
                print(f"\033[31mWARNING\033[0m {name}: {warning}" if red else f"WARNING {name}: {warning}")
        if len(table) and (table["external drop"] != "-").any():
            print("external drop: internal minus external macro AUROC over the exactly mapped findings (notebook 07); "
                  "* its CI excludes 0")
        indexes = index_pages(args.runs_dir)
        if indexes:
            print("\nIndex pages (open in a browser; they work from disk):")
            print("\n".join(f"  {p}" for p in indexes))
        return 0
    if command == "diff":
        ap.add_argument("a")
        ap.add_argument("b")
        args = ap.parse_args(argv)
        print(diff_runs(Path(args.runs_dir) / args.a, Path(args.runs_dir) / args.b))
        return 0
    if command == "clean":
        ap.add_argument("--name", required=True)
        ap.add_argument("--yes", action="store_true", help="do not ask")
        args = ap.parse_args(argv)
        run_dir = Path(args.runs_dir) / args.name
        if not (run_dir / PARAMS).is_file():
            raise UserError(f"{run_dir}: not a run folder (no params.yaml)")
        with runlock.hold(run_dir, "cxrlib clean"):
            clean(run_dir, args.yes)
        return 0
    raise UserError(f"unknown command {command}")
