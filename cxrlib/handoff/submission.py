"""`python -m cxrlib submission --run NAME`: a run's test probabilities in the CXR-LT challenge's file format.

One row per image, `dicom_id` then one probability column per label, named as the label set names it, in its
order (the checkpoint's model_config order, which predictions.csv keeps): CheXFusion's `submit_callback.py` writes
the same shape for 2023's 26 labels. The probabilities are the model's own (no recalibration), per image, whatever
the run's eval_level. Only the images the run scored are in it: a run whose views leave out the laterals (the
challenge's tables hold them) covers part of the organisers' test table, and the command says how much.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from .. import labelset
from ..fsutil import atomic_write_csv, out_path, writing_out
from ..runfiles import SUBMISSION, labels_of, prob_columns, read_predictions, run_folder


def submission(run_dir, split: str = "test") -> pd.DataFrame:
    """dicom_id, then the labels' probabilities (float32, as scored) of the run's `split` images."""
    predictions = read_predictions(run_dir)
    names = labels_of(predictions)
    rows = predictions[predictions["split"] == split]
    out = rows[["dicom_id", *prob_columns(names)]].rename(columns=dict(zip(prob_columns(names), names)))
    return out.sort_values("dicom_id", kind="stable").reset_index(drop=True)


def coverage(frame: pd.DataFrame, p, split: str = "test") -> str:
    """How many of the label set's own `split` table the file covers (a set with the organisers' split only)."""
    lset = labelset.load(p.label_set)
    table = {"test": "test", "validate": "development"}.get(split)
    if lset.splits != "label_set" or lset.key != "dicom_id" or table is None:
        return f"{len(frame)} images (label set {lset.name} has no per-image {split} table to compare with)"
    wanted = labelset.read_table(lset, p.data_root, table)["dicom_id"]
    covered = int(wanted.isin(frame["dicom_id"]).sum())
    return (f"{len(frame)} images: {covered} of the {len(wanted)} rows of {lset.tables[table]}"
            + ("" if covered == len(wanted) else f" ({len(wanted) - covered} not scored: views {p.views} or the "
                                                   "cohort's rules left them out)"))


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrlib submission", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run: runs/<name> or its name (notebook 03 must have run)")
    ap.add_argument("--split", choices=["test", "validate"], default="test")
    ap.add_argument("--out", help=f"file to write (default: runs/<name>/{SUBMISSION})")
    args = ap.parse_args(argv)
    run_dir, p = run_folder(args.run)
    out = out_path(args.out or Path(run_dir) / SUBMISSION, "--out")
    frame = submission(run_dir, args.split)
    with writing_out(out, "--out"):
        atomic_write_csv(out, frame, float_format="%.9g")
    print(f"{out}: {coverage(frame, p, args.split)}; columns dicom_id + {frame.shape[1] - 1} labels of "
          f"{p.label_set}")
    return 0
