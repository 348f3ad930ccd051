"""`python -m cxrlib external --run NAME --source S --data-root DIR`: notebook 07 on a run, for one source.

Writes runs/<name>/external/<source>/: settings.json (what was asked), predictions.csv, metrics.json, the
executed 07_external.ipynb and its HTML. Notebook 07 runs in runs/<name>/.external-staging/<source>/, and that
folder replaces external/<source>/ only when the notebook has finished: a failed attempt leaves the last good
result as it was (byte for byte) and stays in the staging folder to be read. The run's own files are not
changed, except its index page; the run folder's lock is held throughout (one writer at a time).

Everything that can be checked is checked before the kernel starts: the run has a best checkpoint and notebook
03's figures, the source's tables are where --data-root says, and its selected images are there (a partial
download is refused unless --allow-missing; then the decoded share is on the last line, and in the index, the
card and the run list).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .. import account, runfiles, runlock
from ..data.external_selection import MIN_PRESENT, VIEWS, check_present, selected_images
from ..data.sources import DEFAULT_SUBSET, SOURCES, SUBSETS
from ..errors import UserError
from ..fsutil import atomic_write_json, recover_folder, replace_folder
from ..handoff.index_page import write_index
from ..runfiles import (
    EXTERNAL_METRICS,
    EXTERNAL_NOTEBOOK,
    EXTERNAL_SETTINGS,
    METRICS,
    PREDICTIONS,
    checkpoint_path,
    external_dir,
    external_staging_dir,
)
from .runs import execute, project_root


def check_run(run_dir: Path) -> None:
    if not (run_dir / runfiles.PARAMS).is_file():
        raise UserError(f"{run_dir}: no such run (no {runfiles.PARAMS}); name a run under runs/ with RUN=<name>")
    if not checkpoint_path(run_dir).is_file():
        raise UserError(f"{run_dir}: no {checkpoint_path(run_dir).relative_to(run_dir)}; external validation "
                        "scores a trained run's best checkpoint (an ensemble: validate each member)")
    for name in (PREDICTIONS, METRICS):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir}: no {name}; run notebook 03 first (make evaluate RUN={run_dir.name})")


def validate_external(run_dir, source: str, data_root, subset: str | None = None, views: str = "frontal",
                      equalize: bool = False, progress: bool = True, allow_missing: bool = False) -> Path:
    """Run notebook 07 into runs/<name>/external/<source>/; returns that folder."""
    run_dir = Path(run_dir)
    check_run(run_dir)
    if views not in VIEWS:
        raise UserError(f"--external-views {views!r}: one of {list(VIEWS)}")
    # the tables parse (mapped onto the run's label set), and the images they select are there, before any kernel
    p = runfiles.load_frozen(run_dir)
    found, selected, present = selected_images(source, data_root, subset, views, p.label_set)
    check_present(source, data_root, selected, present, allow_missing)
    root = project_root()
    out = external_dir(run_dir, source)
    settings = {"source": source, "subset": found.subset, "data_root": str(data_root), "views": views,
                "equalize": bool(equalize), "allow_missing": bool(allow_missing), "table_images": int(len(found.table)),
                "selected_images": int(len(selected)), "present_images": int(present.sum())}
    with runlock.hold(run_dir, " ".join(["cxrlib", "external", *sys.argv[2:]]) or "cxrlib external"):
        staging = external_staging_dir(run_dir, source)
        spare = staging.with_name(f"{source}.replaced")
        recover_folder(out, spare)   # a replacement killed midway: the last good result back first
        shutil.rmtree(staging, ignore_errors=True)   # an earlier failed attempt
        staging.mkdir(parents=True)
        atomic_write_json(staging / EXTERNAL_SETTINGS, settings)
        execute(EXTERNAL_NOTEBOOK, p, root, staging, progress=progress,
                extra={"run_dir": str(run_dir), "source": source, "data_root": str(data_root),
                       "subset": found.subset, "external_views": views, "equalize": bool(equalize),
                       "allow_missing": bool(allow_missing), "out_dir": str(staging)})
        if not (staging / EXTERNAL_METRICS).is_file():
            raise UserError(f"notebook 07 ended without writing {EXTERNAL_METRICS} (see {staging}); "
                            f"{out} is as it was")
        replace_folder(staging, out, spare)
        print(f"[{EXTERNAL_NOTEBOOK}] in place -> {out / EXTERNAL_NOTEBOOK}.html", flush=True)
        write_index(run_dir)
    return out


def summary_line(out: Path) -> str:
    """The command's closing lines: the decision, any warning, and last the share of the selected images scored."""
    report = runfiles.read_json(out / EXTERNAL_METRICS)
    drop = report.get("drop")
    if not drop:
        head = f"{out}: no exactly mapped finding could be compared"
    else:
        head = (f"{out}: macro AUROC over {len(drop['findings'])} exact findings, internal {drop['internal']:.3f}, "
                f"external {drop['external']:.3f}; drop {drop['value']:+.3f} [{drop['lo']:.3f}, {drop['hi']:.3f}] "
                f"({account.drop_verdict(drop)}; {account.external_units(report)} scored)")
    return head + "".join(f"\nWARNING: {w}" for w in report.get("warnings", [])) + \
        f"\n{report['source']}: {account.decoded_share(report)}"


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrlib external", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run name (runs/<name>/) or folder")
    ap.add_argument("--source", required=True, choices=SOURCES)
    ap.add_argument("--data-root", required=True, help="the dataset's folder (its tables; images below it)")
    ap.add_argument("--subset", help="; ".join(f"{s}: {', '.join(v)} (default {DEFAULT_SUBSET[s]})"
                                              for s, v in SUBSETS.items() if s in SOURCES))
    ap.add_argument("--external-views", dest="views", choices=VIEWS, default="frontal", help="frontal (AP and PA) or all")
    ap.add_argument("--equalize", action="store_true", help="histogram-equalise the external images")
    ap.add_argument("--allow-missing", action="store_true",
                    help=f"score the images present even when fewer than {MIN_PRESENT * 100:.0f}%% of those the table selects "
                         "are (a partial download); the decoded share is then reported wherever the result is")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.runs_dir) / args.run
    out = validate_external(run_dir, args.source, args.data_root, args.subset or None, args.views, args.equalize,
                            progress=not args.no_progress, allow_missing=args.allow_missing)
    print(summary_line(out))
    return 0
