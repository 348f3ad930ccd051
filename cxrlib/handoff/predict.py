"""`python -m cxrlib predict --run runs/x IMAGE_OR_FOLDER ... [--out preds.csv]`: a trained run on new files.

Each JPEG or PNG, of any size, goes through the run's own path: decoded to 8-bit grey and resized
the way its cache was built (resize, decode), normalised by the checkpoint's mean and std, on the
run's device and precision. The output has the 14 probabilities in predictions.csv's columns, the
call at each finding's validation threshold (max-F1; 0.5 where the run has none) and, when the run
was recalibrated, the calibrated probabilities. Folders are searched recursively; files that cannot
be read are listed with the reason and skipped, never stopping the rest. A 16-bit PNG is scaled by the bits
its scanner stored, given once for the call (--bits 12): never guessed from each image's own range.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import labelset, runfiles
from ..data.decode import UndeclaredDepth, decode_image, failure_reason
from ..errors import UserError
from ..evaluation.trained import load_best
from ..fsutil import atomic_write_csv
from ..params import validate
from ..runfiles import METRICS, is_ensemble, member_dirs, prob_column, run_folder
from ..training.runtime import inference_amp

SUFFIXES = {".jpg", ".jpeg", ".png"}
FORMATS = ("JPEG", "PNG")
BATCH = 32


def find_images(inputs) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files in the order given, folders sorted within), [(input, reason)] for inputs that are neither."""
    files, problems = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
            if not found:
                problems.append((text, "folder holds no .jpg, .jpeg or .png file"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append((text, "no such file or folder"))
    return files, problems


def decoded(path: Path, size: int, resize: str, mode: str, bits: int = 0):
    """(pixels or None, why not, notes on how it was read: PIL's warnings, e.g. a very large image)."""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pixels = decode_image(path, size, resize, mode, formats=FORMATS, bits=bits)[0]
        except UndeclaredDepth as error:
            return None, f"{error}: give --bits N, the bits its scanner stored (one value for the call)", []
        except Exception as error:  # every unreadable file is reported, none stops the rest
            return None, failure_reason(error), []
    return pixels, None, [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]


def predict_files(run_dir, p, inputs, batch_size: int = BATCH, progress: bool = True, bits: int = 0):
    """(one row per readable image: path, p_<finding> x 14, call_<finding> x 14 [, cal_<finding> x 14],
    [(path, reason)] for the files skipped, the thresholds' note). bits: the stored bits of 16-bit PNGs."""
    from ..evaluation import analysis, fairness, recalibration  # lazy: keeps scipy, sklearn out of this module's import

    if batch_size < 1:
        raise UserError(f"batch_size {batch_size}: at least 1 image per forward pass")
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        names = ", ".join(d.name for d in member_dirs(run_dir))
        raise UserError(f"{run_dir} is an ensemble (no checkpoint of its own): predict with each member "
                        f"(--run {run_dir.parent}/<member>; members: {names}) and average their p_ columns")
    files, skipped = find_images(inputs)
    model, trained, device, transform = load_best(run_dir, p)   # trained: the checkpoint's own params
    names = model.labels   # the outputs, in order: the checkpoint's model_config
    metrics_file = run_dir / METRICS
    report = runfiles.read_metrics(run_dir) if metrics_file.is_file() else None
    if report:
        thresholds, note = analysis.thresholds_from_report(report, "f1", level="image")
    else:
        thresholds, note = {f: 0.5 for f in names}, "thresholds: fixed 0.5 (the run has no metrics.json yet)"
    calibrator = analysis.fitted_for(report, "image")[1] if report else None
    amp = inference_amp(trained, device)
    rows, probs, notes = [], [], []
    args = (trained.image_size, trained.resize, trained.decode, bits)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # PIL decodes without the GIL
        for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch", disable=not progress):
            batch = files[start:start + batch_size]
            images = []
            for path, (pixels, reason, how) in zip(batch, pool.map(lambda f: decoded(f, *args), batch)):
                if pixels is None:
                    skipped.append((str(path), reason))
                else:
                    rows.append(str(path))
                    images.append(pixels)
                    notes += [(str(path), text) for text in how]
            if images:
                x = transform(torch.from_numpy(np.stack(images))[:, None].to(device))
                with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    probs.append(torch.sigmoid(model(x).float()).cpu().numpy())
    prob = np.concatenate(probs) if probs else np.zeros((0, len(names)), np.float32)
    out = pd.DataFrame({"path": rows})
    out[runfiles.prob_columns(names)] = prob.astype(np.float32)
    cuts = np.array([thresholds[f] for f in names])
    calls = prob >= cuts
    # "Nothing found" means none of the pathologies: not called beside one that is (Support Devices may coexist)
    nothing_found = labelset.load(trained.label_set).nothing_found
    pathologies = [names.index(f) for f in fairness.pathologies(names, nothing_found)]
    calls[:, names.index(nothing_found)] &= ~calls[:, pathologies].any(1)
    out[[f"call_{f}" for f in names]] = calls.astype(np.int8)
    if calibrator and calibrator.get("method", "none") != "none":
        out[[f"cal_{f}" for f in names]] = recalibration.apply(calibrator, prob, names).astype(np.float32)
    out.attrs["notes"] = notes   # [(path, how it was read)]: printed by the command line
    out.attrs["thresholds"] = thresholds
    out.attrs["nothing_found"] = nothing_found
    out.attrs["images_per_second"] = len(out) / max(time.perf_counter() - started, 1e-9)   # decode + forward
    return out, skipped, note


def short_summary(frame: pd.DataFrame, top: int = 3) -> str:
    """Per image, a short block for a terminal: every finding called at the run's thresholds, then the `top`
    highest probabilities, both on one scale (the calibrated one where the run was recalibrated, which keeps the
    calls' order: the map is monotone)."""
    names = runfiles.labels_of(frame)
    calibrated = f"cal_{names[0]}" in frame
    scale = "calibrated probability" if calibrated else "probability"
    blocks = []
    for _, row in frame.iterrows():
        shown = {f: row[f"cal_{f}" if calibrated else prob_column(f)] for f in names}
        called = sorted((f for f in names if row[f"call_{f}"]), key=lambda f: -shown[f])
        listed = ", ".join(f"{f} {shown[f]:.2f}" for f in called)
        best = sorted(shown, key=shown.get, reverse=True)[:top]
        calls = textwrap.fill(f"  called ({scale}): {listed or 'none'}", width=110, subsequent_indent="    ")
        blocks.append(f"{row['path']}\n{calls}\n  top {scale}: " + ", ".join(f"{f} {shown[f]:.2f}" for f in best))
    return "\n".join(blocks)



def cli(command: str, argv: list[str]) -> int:

    ap = argparse.ArgumentParser(prog="python -m cxrlib predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run: runs/<name> or its name")
    ap.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="JPEG/PNG files, or folders of them")
    ap.add_argument("--out", help="CSV to write, every column (default: a short block per image on the terminal)")
    ap.add_argument("--format", choices=["short", "wide"], default="short",
                    help="terminal output: short (the calls and the top 3 probabilities per image) or wide (every "
                         "column, as in --out)")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"images per forward pass (default {BATCH})")
    ap.add_argument("--bits", type=int, default=0, metavar="N",
                    help="bits stored per pixel in 16-bit PNGs (e.g. 12 or 10; the DICOM's BitsStored); without it "
                         "a 16-bit PNG is skipped, with the depth that would hold its values")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="default: the GPU if there is one")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: give the number of images per forward pass, at least 1 "
                        f"(default {BATCH}; lower it if the GPU runs out of memory)")
    if args.bits and not 8 < args.bits <= 16:
        raise UserError(f"--bits {args.bits}: the bits stored per pixel of 16-bit PNGs, 9 to 16 (12 for most scanners)")
    run_dir, p = run_folder(args.run)
    p = validate({**p.to_dict(), "device": args.device}, "--device")
    frame, skipped, note = predict_files(run_dir, p, args.inputs, args.batch, progress=not args.no_progress,
                                        bits=args.bits)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for path, text in frame.attrs.get("notes", []):
        print(f"note {path}: {text}", file=sys.stderr)
    if len(frame):
        print(f"scored {len(frame)} image(s) at {frame.attrs['images_per_second']:,.1f} images/s (decoding, "
              f"resizing and the model on {p.device})", file=sys.stderr)
    if args.out:
        atomic_write_csv(args.out, frame, index=False, float_format="%.9g")
        print(f"{len(frame)} image(s) -> {args.out}; {len(skipped)} skipped; {note}")
    elif frame.empty:
        print(f"no readable image; {len(skipped)} skipped")
    elif args.format == "wide":
        print(frame.to_string(index=False, float_format="%.4f"))
        print(f"{len(skipped)} skipped; {note}")
    else:
        print(short_summary(frame))
        print(f"{len(frame)} image(s), {len(skipped)} skipped; called: p at or above the finding's threshold "
              f"({frame.attrs['nothing_found']} only when no pathology is called); {note}. "
              "Every column: --out FILE.csv or --format wide")
    return 1 if skipped and frame.empty else 0
