"""A synthetic stand-in for MIMIC-CXR-JPG 2.1.0: same files, columns, IDs and folders.

Nobody on the team holds the credentialed release, so every downstream step
(cohort, fetch, cache, training, error analysis) is developed against this tree and
must then run unchanged on the real one. `generate(out)` writes into `out`:

    LICENSE.txt                         says the data are synthetic, and how they were made
    mimic-cxr-2.0.0-metadata.csv.gz     one row per image (12 columns, MIMIC's order)
    mimic-cxr-2.0.0-chexpert.csv.gz     one row per study: subject_id, study_id, 14 findings
    mimic-cxr-2.0.0-negbio.csv.gz       the same from a second "labeler" (about 2% of cells differ)
    mimic-cxr-2.0.0-split.csv.gz        dicom_id, study_id, subject_id, split
    mimic-cxr-2.1.0-test-set-labeled.csv  radiologist labels for some official test studies
                                        (study_id, Airspace Opacity for Lung Opacity; test_labels.py
                                        says how and how often they disagree with the NLP tables)
    IMAGE_FILENAMES, RECORDS            one image path / one study folder per line
    mimic-iv/hosp/patients.csv.gz, admissions.csv.gz   MIMIC-IV demographics (mimic_iv.py;
                                        another project, so outside SHA256SUMS.txt)
    mimic-iv/PLANTED.json               the planted disparity: women's findings drawn at 0.3 strength
    files/pXX/pSUBJECT/sSTUDY/DICOM.jpg 8-bit grayscale JPEG, quality 95
    SHA256SUMS.txt                      `<sha256>  <path>` for every other file; written last,
                                        so its presence means "complete"

Where it follows the real release (see /work/shared/mimic-facts.md):
- IDs: subject_id 1xxxxxxx (folder pXX = its first two digits), study_id 5xxxxxxx in an
  order unrelated to StudyDate, dicom_id five dash-separated groups of 8 hex digits.
- Studies per subject: label-stats.json's table for 1-15, plus a power-law tail up to 200
  so that 65,379 subjects give about 228k studies; `max_studies` caps it.
- Study types (AP alone, AP+AP, PA+LATERAL, PA+LL, ...) chosen so that about 1.65 images per
  study come out with the real ViewPosition mix (AP 39%, PA 25.5%, LATERAL 22%, LL 9.3%,
  blank 4%) and about half of the subjects have an AP image (the original cohort: 33,501 of
  65,379). Subjects with many studies are mostly inpatients, so mostly AP.
- A few rare views (AP AXIAL, AP LLD, PA LLD, LAO, ...) as extra images of random studies:
  max(3, 0.5% of images), at most 40 (the release has 1-4 of each).
- Labels: the CheXpert study-level rates and positive co-occurrence of label-stats.json
  through a Gaussian copula, with every positive rate scaled by one factor so that the
  original project's statistic holds: 12.5% positives among the 14 labels. No Finding follows
  the CheXpert labeler's rule: 1.0 when no pathology is positive or uncertain (Support
  Devices allowed), blank otherwise. Chronic findings persist across a subject's studies.
- max(3, 0.1%) of studies have no label row; about half of them are a subject's lowest AP
  study, which the original cohort would select.

Where it deliberately differs:
- split: per subject 70% train / 15% validate / 15% test (the release: 97.8 / 0.8 / 1.4% of
  images), so that small demos have validation and test subjects on the official split.
- radiologist labels for 60% of the official test studies (the release: 687 studies).
- image_size="small" (the default) writes JPEGs downscaled by a fixed factor 8 from the
  DICOM size (3056x2544 -> 382x318) so the demo is fast; the metadata keeps the full DICOM
  Rows/Columns. image_size="full" writes exactly Rows x Columns pixels (for decode benchmarks).
- Images are drawn, not acquired: body, lungs, heart, mediastinum, diaphragm, ribs,
  clavicles, spine, noise; lateral views show one lung field with the spine behind. Each
  positive finding has a visible signature (a larger heart, a basal fluid level, an apical
  lucency, tubes and wires, ...); uncertain findings are drawn faintly or not at all.
- A planted disparity: the findings of female patients (MIMIC-IV's gender F) are drawn at
  mimic_iv.SIGNATURE_STRENGTH (0.3) of their strength, so that the audit has a known gap to find
  (mimic_iv.PLANTED; --no-planted-gap draws everyone alike).

Everything is determined by the seed: the tables come from one RNG, each image from an RNG
seeded with (seed, row of the image in the metadata table) and its anatomy from one seeded
with (seed, subject_id), so the bytes do not depend on the number of workers. gzip headers
carry no timestamp. Every file goes to a temp name and is renamed into place (the JPEGs
without a per-file fsync; one sync precedes SHA256SUMS.txt), so an interrupted run leaves
only complete files and the same command continues it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..data.sources import SOURCES
from ..errors import UserError
from ..fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from ..labels import FINDINGS
from . import cxr_lt, external_standins, mimic_iv, test_labels
from .draw import jpeg_bytes
from .tables import (
    CHEXPERT,
    LABEL_COLUMNS,
    LICENSE,
    METADATA,
    METADATA_COLUMNS,
    NEGBIO,
    SMALL_FACTOR,
    SPLIT,
    SPLIT_COLUMNS,
    SUMS,
    _csv_gz,
    build_tables,
    image_path,
)


def _is_complete_jpeg(path: Path) -> bool:
    if not path.is_file():
        return False
    data = path.read_bytes()
    return data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"


def _replace_into(path: Path, data: bytes) -> None:
    """Temp file then os.replace, like fsutil.atomic_write_bytes but without a per-file fsync
    (it cost as much as drawing the image); generate() syncs once before SHA256SUMS.txt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_chunk(args) -> list[tuple[str, str, bool]]:
    """Worker: write the chunk's JPEGs, keeping complete ones; returns (path, sha256, written)."""
    root, seed, image_size, jobs = args
    out = []
    for job in jobs:
        path = Path(root) / job[1]
        if _is_complete_jpeg(path):  # from an interrupted run: same seed, same bytes
            out.append((job[1], sha256_file(path), False))
            continue
        data = jpeg_bytes(job, seed, image_size)
        _replace_into(path, data)
        out.append((job[1], hashlib.sha256(data).hexdigest(), True))
    return out


# ---------------------------------------------------------------------------------------
# The whole tree

def _license_text(subjects, seed, image_size, images, max_studies, planted_gap) -> str:
    command = f"python -m cxrlib demo-data --subjects {subjects} --seed {seed} --image-size {image_size}"
    command += f" --max-studies {max_studies}" if max_studies else ""
    command += "" if planted_gap else " --no-planted-gap"
    command += " --tables-only" if not images else ""
    return (
        "SYNTHETIC DATA - NOT MIMIC-CXR-JPG.\n\n"
        "This folder imitates the layout, file names, columns and identifier formats of\n"
        "MIMIC-CXR-JPG 2.1.0 (PhysioNet) so that software can be developed without the\n"
        "credentialed data. No patient data went into it: the tables are sampled from public\n"
        "summary statistics and the images are drawn by a program. It is not the PhysioNet\n"
        "Credentialed Health Data License; you may use and share this synthetic data freely.\n\n"
        f"Generated by: {command}\n"
        + ("Tables only: the image files listed in the metadata were not written.\n" if not images else "")
    )


def _summary(out: Path, tables: dict, seconds: float, written: int, images: bool) -> dict:
    meta, negbio = tables["metadata"], tables["negbio"]
    views = meta["ViewPosition"].replace("", "(blank)").value_counts()
    split = tables["split"]
    ap_subjects = meta.loc[meta["ViewPosition"] == "AP", "subject_id"].nunique()
    return {
        "out": str(out),
        "subjects": int(meta["subject_id"].nunique()),
        "studies": int(meta["study_id"].nunique()),
        "images": len(meta),
        "images_written": written,
        "tables_only": not images,
        "subjects_with_ap": int(ap_subjects),
        "views": {k: int(v) for k, v in views.items()},
        "split_images": {k: int(v) for k, v in split["split"].value_counts().items()},
        "split_subjects": {k: int(v) for k, v in split.drop_duplicates("subject_id")["split"].value_counts().items()},
        "studies_without_labels": len(tables["missing_label_studies"]),
        "negbio_positive_fraction": round(float((negbio[FINDINGS] == 1.0).to_numpy().mean()), 4),
        "seconds": round(seconds, 1),
    }


def _resolve_workers(workers: int) -> int:
    if workers < 0:
        raise UserError(f"--workers {workers}: use 0 for all cores or a positive number")
    if workers == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return workers


def _write_images(out: Path, tables: dict, seed: int, image_size: str, n_workers: int, progress: bool,
                  sums: dict, signature_of: dict) -> int:
    """Draw every JPEG not already complete, in parallel; fills sums, returns how many were written."""
    for stray in (out / "files").glob("**/.*.tmp"):  # left by a run killed mid-write
        stray.unlink()
    meta = tables["metadata"]
    subjects = meta["subject_id"].tolist()
    paths = [image_path(*ids) for ids in zip(subjects, meta["study_id"].tolist(), meta["dicom_id"].tolist())]
    jobs = list(zip(range(len(meta)), paths, meta["Rows"].tolist(), meta["Columns"].tolist(),
                    meta["ViewPosition"].tolist(), tables["image_labels"], subjects,
                    [signature_of.get(s, 1.0) for s in subjects]))
    size = 16 if image_size == "small" else 1
    chunks = [(str(out), seed, image_size, jobs[i:i + size]) for i in range(0, len(jobs), size)]
    written = 0
    pool = multiprocessing.Pool(n_workers) if n_workers > 1 else contextlib.nullcontext()
    with pool, tqdm(total=len(jobs), desc="synthetic images", unit="img", disable=not progress) as bar:
        for done in (pool.imap_unordered(_write_chunk, chunks) if n_workers > 1 else map(_write_chunk, chunks)):
            for path, digest, was_written in done:
                sums[path] = digest
                written += was_written
            bar.update(len(done))
    return written


def generate(out, subjects: int = 2000, seed: int = 0, image_size: str = "small", workers: int = 0,
             progress: bool = True, images: bool = True, max_studies: int | None = None,
             planted_gap: bool = True) -> dict:
    """Write the synthetic MIMIC-CXR-JPG tree into `out`; returns summary counts.

    Rerunning into a complete tree made with the same settings does nothing; an
    interrupted one continues (finished JPEGs are kept). A folder holding anything else
    is refused. images=False writes only the tables (fast, even at the real scale of
    65,379 subjects). planted_gap=False draws every patient's findings at the same strength.
    """
    start = time.time()
    out = Path(out)
    if image_size not in ("small", "full"):
        raise UserError(f"--image-size {image_size!r}: choose small (DICOM size / {SMALL_FACTOR}) or full")
    if max_studies is not None and max_studies < 1:
        raise UserError(f"--max-studies {max_studies}: must be at least 1 (or leave it out)")
    n_workers = _resolve_workers(workers)
    license_text = _license_text(subjects, seed, image_size, images, max_studies, planted_gap)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()):
        license = out / LICENSE
        if not license.is_file() or license.read_text() != license_text:
            raise UserError(
                f"--out {out}: the folder is not empty and does not hold a synthetic dataset made with "
                f"these settings (see its {LICENSE}). Choose another --out, or delete the folder to regenerate.")
    tables = build_tables(subjects, seed, max_studies)
    if (out / SUMS).is_file():
        if not (out / cxr_lt.FOLDER).is_dir():   # a tree from before the CXR-LT stand-in
            cxr_lt.write(out, tables["metadata"], tables["chexpert"], seed)
        return {**_summary(out, tables, time.time() - start, 0, images), "already_complete": True}

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / LICENSE, license_text)
    sums = {LICENSE: hashlib.sha256(license_text.encode()).hexdigest()}
    for name, key, columns in ((METADATA, "metadata", METADATA_COLUMNS), (NEGBIO, "negbio", LABEL_COLUMNS),
                               (CHEXPERT, "chexpert", LABEL_COLUMNS), (SPLIT, "split", SPLIT_COLUMNS)):
        data = _csv_gz(tables[key][columns])
        atomic_write_bytes(out / name, data)
        sums[name] = hashlib.sha256(data).hexdigest()
    gold = test_labels.gold_table(tables["chexpert"], tables["split"], seed)
    extra = {test_labels.GOLD_FILE: gold.to_csv(index=False, lineterminator="\n"),
             **test_labels.listing_files(tables["metadata"])}
    for name, text in extra.items():
        atomic_write_text(out / name, text)
        sums[name] = hashlib.sha256(text.encode()).hexdigest()
    # MIMIC-IV is another PhysioNet project: its tables sit beside the release, outside its SHA256SUMS.
    iv_tables = mimic_iv.build(tables["metadata"], seed)
    for name, frame in iv_tables.items():
        (out / mimic_iv.FOLDER / "hosp").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / mimic_iv.FOLDER / "hosp" / f"{name}.csv.gz", mimic_iv.csv_gz(frame))
    planted_file = out / mimic_iv.FOLDER / mimic_iv.PLANTED_FILE
    if planted_gap:
        atomic_write_text(planted_file, json.dumps(mimic_iv.PLANTED, indent=1) + "\n")
    signature_of = mimic_iv.signature_strength(iv_tables["patients"], planted_gap)
    # CXR-LT's tables are another PhysioNet project's too (the challenge's), beside the release like MIMIC-IV.
    cxr_lt.write(out, tables["metadata"], tables["chexpert"], seed)

    written = 0
    if images:
        written = _write_images(out, tables, seed, image_size, n_workers, progress, sums, signature_of)
    if hasattr(os, "sync"):
        os.sync()  # the images are on disk before the "complete" marker is
    atomic_write_text(out / SUMS, "".join(f"{sums[p]}  {p}\n" for p in sorted(sums)))
    return {**_summary(out, tables, time.time() - start, written, images), "already_complete": False}


def verify(out) -> list[str]:
    """Paths under `out` whose SHA-256 differs from SHA256SUMS.txt (empty: all good)."""
    out = Path(out)
    bad = []
    for line in (out / SUMS).read_text().splitlines():
        digest, path = line.split("  ", 1)
        if not (out / path).is_file() or sha256_file(out / path) != digest:
            bad.append(path)
    return bad


def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m cxrlib {command}",
        description="Write a synthetic MIMIC-CXR-JPG 2.1.0 stand-in (same files, columns, IDs, folders), or "
                    "with --source one of an external dataset (CheXpert, NIH, PadChest, VinDr-CXR) with a planted "
                    "site shift.")
    parser.add_argument("--out", required=True, help="dataset folder to create, e.g. data/demo")
    parser.add_argument("--source", choices=["mimic", *SOURCES], default="mimic",
                        help="which dataset's layout (default mimic)")
    external_standins.add_arguments(parser)
    parser.add_argument("--subjects", type=int, default=2000, help="number of patients (real release: 65379)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", choices=["small", "full"], default="small",
                        help=f"small: DICOM size / {SMALL_FACTOR} (fast demo); full: Rows x Columns pixels")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing images; 0 = all cores")
    parser.add_argument("--max-studies", type=int, default=None, help="cap on studies per subject")
    parser.add_argument("--tables-only", action="store_true", help="write the CSV tables but no images")
    parser.add_argument("--no-planted-gap", action="store_true",
                        help="draw every patient's findings alike (default: women's at 0.3 strength, "
                             "the disparity the audit should find)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.source != "mimic":
        return external_standins.cli_external(args)
    summary = generate(args.out, subjects=args.subjects, seed=args.seed, image_size=args.image_size,
                       workers=args.workers, progress=not args.no_progress, images=not args.tables_only,
                       max_studies=args.max_studies, planted_gap=not args.no_planted_gap)
    state = "already complete, nothing to do" if summary["already_complete"] else f"{summary['seconds']} s"
    print(f"{summary['subjects']} subjects, {summary['studies']} studies, {summary['images']} images "
          f"in {args.out} ({state})")
    print(json.dumps(summary))
    return 0
