"""MIMIC-CXR-JPG metadata + labels -> the cohort table: one image per subject, its split and labels.

The defaults are the original project's selection, image for image:
  1. images whose ViewPosition is exactly "AP" (not "AP AXIAL", " AP", "ap" or blank);
  2. per subject, the lowest study_id (string order) among the studies with such an image;
  3. in that study, the lowest dicom_id (string order) among those images;
  4. NegBio labels, 1 -> 1 and 0, -1, blank -> 0 (labels.apply_policies);
  5. test = the studies whose study_id ends in 8 or 9, train = the rest.
A subject whose selected study has no label row is dropped (not moved to its next study),
as the original did; the report lists them. On the real 2.0.0 this gives original.COHORT.

IDs are read as strings exactly as written, so "lowest" is literal string order.
studies_per_subject: all keeps every study with an in-view image (rule 2 off), images_per_study: all
every in-view image of a kept study (rule 3 off); labels are per study, so each image carries its
study's row. split_mode "official" takes each selected image's split from mimic-cxr-2.0.0-split;
val_fraction must then be 0 (the official split has its own validate set).
"""
from __future__ import annotations

import argparse
import hashlib
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labelset
from ..errors import UserError
from ..fsutil import atomic_write_csv, atomic_write_json
from ..labels import COHORT_IDENTITY, FINDINGS, apply_policies, cohort_labels
from ..params import ParamError, Params, load, parse_override
from .funnel import SPLITS, CohortReport, compare_with_reference, prevalence

PHYSIONET_PAGE = "https://physionet.org/content/mimic-cxr-jpg/2.1.0/"
TABLES = {
    "metadata": "mimic-cxr-2.0.0-metadata",
    "negbio": "mimic-cxr-2.0.0-negbio",
    "chexpert": "mimic-cxr-2.0.0-chexpert",
    "split": "mimic-cxr-2.0.0-split",
}
# Only the columns we use; the real files have more, which is fine.
COLUMNS = {
    "metadata": ["dicom_id", "subject_id", "study_id", "ViewPosition"],
    "negbio": ["subject_id", "study_id", *FINDINGS],
    "chexpert": ["subject_id", "study_id", *FINDINGS],
    "split": ["dicom_id", "split"],
}
ID_COLUMNS = ("dicom_id", "subject_id", "study_id")
OUTPUT_COLUMNS = [*COHORT_IDENTITY, *FINDINGS]   # the default set's (chexpert14's) cohort; others: output_columns
SET_SPLIT = "label_set_split"   # the organisers' split of a row, carried through the join


def output_columns(labels) -> list[str]:
    return [*COHORT_IDENTITY, *labels]


# --------------------------------------------------------------------------- reading

def table_path(data_root, kind: str) -> Path:
    """The .csv.gz (preferred, as PhysioNet ships it) or the unzipped .csv of a table."""
    root = Path(data_root)
    stem = TABLES[kind]
    for candidate in (root / f"{stem}.csv.gz", root / f"{stem}.csv"):
        if candidate.is_file():
            return candidate
    where = f"folder {root}" if root.is_dir() else f"folder {root} (which does not exist)"
    raise UserError(
        f"{stem}.csv.gz (or {stem}.csv) not found in {where}. It comes from PhysioNet's MIMIC-CXR-JPG "
        f"page ({PHYSIONET_PAGE}): download it with `make fetch`, or set data_root to the folder that "
        "holds the MIMIC-CXR-JPG CSVs (`make data` writes the synthetic stand-in to data/demo)."
    )


def read_table(data_root, kind: str) -> pd.DataFrame:
    """One of metadata | negbio | chexpert | split, with only the columns we use.

    IDs, ViewPosition and split are strings exactly as in the file (blank -> NaN);
    label columns are floats holding 1, 0, -1 or NaN.
    """
    if kind not in TABLES:
        raise ValueError(f"kind must be one of {list(TABLES)}, got {kind!r}")
    path = table_path(data_root, kind)
    wanted = COLUMNS[kind]
    dtypes = {c: "float64" if c in FINDINGS else str for c in wanted}
    try:
        found = list(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in wanted if c not in found]
        if missing:
            raise UserError(
                f"{path}: missing column(s) {missing}; columns found: {found}. Is it the original "
                f"{TABLES[kind]} table from {PHYSIONET_PAGE}? Re-download it with `make fetch`."
            )
        frame = pd.read_csv(path, usecols=wanted, dtype=dtypes)
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        # Truncated downloads and non-numeric labels end up here.
        raise UserError(f"{path}: could not be read as a {TABLES[kind]} table ({e}). "
                        "Re-download it with `make fetch`.") from None
    _check(frame, path, kind)
    return frame[wanted]


def _check(frame: pd.DataFrame, path: Path, kind: str) -> None:
    for column in (c for c in ID_COLUMNS if c in frame):
        blank = int(frame[column].isna().sum())
        if blank:
            raise UserError(f"{path}: {blank} row(s) have a blank {column}; every row needs one. "
                            "Re-download the file with `make fetch`.")
    present = [f for f in FINDINGS if f in frame]
    if present:
        values = frame[present].to_numpy()
        bad = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
        if bad.any():
            column = present[int(np.argwhere(bad)[0][1])]
            examples = sorted(set(values[bad].tolist()))[:5]
            raise UserError(f"{path}: column {column!r} holds {examples}; labels must be 1, 0, -1 or blank.")
    if kind == "split":
        unknown = sorted(set(pd.unique(frame["split"].dropna())) - set(SPLITS))   # unique first: 377k rows
        if unknown or frame["split"].isna().any():
            raise UserError(f"{path}: column 'split' must hold {list(SPLITS)} on every row; "
                            f"found {unknown or ['blank']}.")


def load_raw_labels(data_root, label_source: str = "negbio", study_ids=None) -> pd.DataFrame:
    """The source's raw label rows (1, 0, -1, NaN) for error analysis, e.g. which test labels were -1.

    With study_ids, one row per given ID in the given order (all-NaN findings where the source
    has no row); without, the whole table.
    """
    labels = _unique_studies(read_table(data_root, label_source), table_path(data_root, label_source))
    if study_ids is None:
        return labels.reset_index(drop=True)
    wanted = pd.DataFrame({"study_id": pd.Series(list(study_ids), dtype="str")})
    return wanted.merge(labels, on="study_id", how="left")[["subject_id", "study_id", *FINDINGS]]


def _unique_studies(labels: pd.DataFrame, path: Path) -> pd.DataFrame:
    duplicated = labels["study_id"].duplicated()
    if duplicated.any():
        warnings.warn(f"{path}: {int(duplicated.sum())} study_id(s) have more than one label row "
                      f"(e.g. {labels['study_id'][duplicated].iloc[0]}); using the first row of each.")
        labels = labels[~duplicated]
    return labels


# --------------------------------------------------------------------------- selection

def select_images(metadata: pd.DataFrame, views=("AP",), studies_per_subject: str = "first",
                  images_per_study: str = "first") -> pd.DataFrame:
    """Rules 1-3, sorted by (subject_id, study_id, dicom_id).

    With the defaults, one image per subject: sorting the in-view images and keeping each subject's first
    row picks the lowest study among the studies with an in-view image and, in it, the lowest in-view
    dicom_id. studies_per_subject: all keeps every study with an in-view image; images_per_study: all
    keeps every in-view image of a kept study.
    """
    in_view = metadata[metadata["ViewPosition"].isin(list(views))]
    # np.lexsort over fixed-width unicode copies: the order sort_values gives, 5x faster (its string
    # argsort was a third of a full-data cohort's time)
    keys = [in_view[c].to_numpy(dtype="U") for c in ("dicom_id", "study_id", "subject_id")]
    chosen = in_view.iloc[np.lexsort(keys)] if len(in_view) else in_view
    if studies_per_subject == "first":
        first_study = chosen.groupby("subject_id", sort=False)["study_id"].transform("first")
        chosen = chosen[chosen["study_id"] == first_study]
    if images_per_study == "first":
        chosen = chosen.drop_duplicates(["subject_id", "study_id"], keep="first")
    chosen = chosen.rename(columns={"ViewPosition": "view"})
    return chosen[["subject_id", "study_id", "dicom_id", "view"]].reset_index(drop=True)


def image_paths(frame: pd.DataFrame) -> pd.Series:
    """files/pXX/p<subject>/s<study>/<dicom>.jpg, relative to the data root (XX: subject's first two digits)."""
    # One f-string per row: 4x faster than pandas string arithmetic over the 240k rows of a full cohort.
    paths = [f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg" for subject, study, dicom in
             zip(frame["subject_id"].tolist(), frame["study_id"].tolist(), frame["dicom_id"].tolist())]
    return pd.Series(paths, index=frame.index, dtype="str")


def seed_splits(study_ids: pd.Series) -> pd.Series:
    """Rule 5: test when the study_id ends in 8 or 9, else train."""
    return pd.Series(np.where(study_ids.str[-1].isin(["8", "9"]), "test", "train"),
                     index=study_ids.index, dtype="str")


def hash_fractions(subject_ids, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per subject from sha256(f"{seed}:{subject_id}").

    It depends on the subject alone, so adding or removing other subjects never moves one
    between splits (unlike a shuffled permutation).
    """
    digests = b"".join(hashlib.sha256(f"{seed}:{s}".encode()).digest()[:8] for s in subject_ids)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


def carve_validation(frame: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Move the train subjects whose hash fraction is < val_fraction to validate; test is untouched."""
    split = frame["split"].copy()
    if val_fraction <= 0:
        return split
    train = split == "train"
    chosen = hash_fractions(frame.loc[train, "subject_id"], seed) < val_fraction
    split.loc[train[train].index[chosen]] = "validate"
    return split


# --------------------------------------------------------------------------- the cohort

def set_labels(lset: labelset.LabelSet, root: Path, split_mode: str) -> pd.DataFrame:
    """A label set's own tables as one frame keyed by its key; with split_mode: label_set, each row's
    organisers' split in SET_SPLIT (a patient in two splits is refused there)."""
    if split_mode == "label_set":
        return labelset.organisers_split(lset, root).rename(columns={"split": SET_SPLIT})
    rows = pd.concat([labelset.read_table(lset, root, t) for t in lset.tables], ignore_index=True)
    return rows.drop_duplicates(lset.key)


def build_cohort(data_root=None, params: Params | None = None) -> tuple[pd.DataFrame, CohortReport]:
    """The cohort table (OUTPUT_COLUMNS, sorted by subject_id) and its report, for `params`."""
    start = time.perf_counter()
    p = params or Params()
    root = Path(data_root if data_root is not None else p.data_root)
    metadata = read_table(root, "metadata")
    lset = labelset.load(p.label_set)
    names = list(lset.labels)
    if lset.splits == "release":   # MIMIC-CXR-JPG's own labeler tables, one row per study (chexpert14)
        key, label_path = "study_id", table_path(root, p.label_source)
        labels = _unique_studies(read_table(root, p.label_source), label_path)
    else:
        key, labels, label_path = lset.key, set_labels(lset, root, p.split_mode), lset.folder(root)

    if p.split_mode == "official" and p.val_fraction > 0:
        raise ParamError("val_fraction must be 0 with split_mode: official, whose split table has its "
                                    "own validate set (set val_fraction: 0, or split_mode: seed)")
    in_view = metadata["ViewPosition"].isin(list(p.views))
    blank_view = metadata["ViewPosition"].isna() | (metadata["ViewPosition"].astype(str).str.strip() == "")
    chosen = select_images(metadata, p.views, p.studies_per_subject, p.images_per_study)
    merged = chosen.merge(labels.drop(columns="subject_id", errors="ignore"), on=key, how="left", indicator=True)
    has_labels = (merged.pop("_merge") == "both").to_numpy()
    excluded_no_labels = (merged.loc[~has_labels, ["subject_id", "study_id"]].drop_duplicates()
                          .to_dict("records"))
    if excluded_no_labels:
        one_study = p.studies_per_subject == "first"
        warnings.warn(f"{len(excluded_no_labels)} {'subject(s)' if one_study else 'selected stud(ies)'} dropped: "
                      f"{'their selected study has' if one_study else 'they have'} no row in "
                      f"{label_path.name if lset.splits == 'release' else f'label set {lset.name} ({label_path})'} "
                      "(as in the original project, they are not moved to another study), "
                      f"e.g. study {excluded_no_labels[0]['study_id']}.")
    frame = merged[has_labels].reset_index(drop=True)

    excluded_no_split = []
    if p.split_mode == "official":
        split_path = table_path(root, "split")
        official = read_table(root, "split")
        # A dict lookup, reversed so that a repeated dicom_id keeps its first row: faster than a merge.
        split_of = dict(zip(official["dicom_id"].tolist()[::-1], official["split"].tolist()[::-1]))
        frame["split"] = pd.Series([split_of.get(d) for d in frame["dicom_id"].tolist()], index=frame.index,
                                   dtype="str")
        missing = frame["split"].isna().to_numpy()
        excluded_no_split = frame.loc[missing, ["subject_id", "study_id", "dicom_id"]].to_dict("records")
        if excluded_no_split:
            warnings.warn(f"{len(excluded_no_split)} selected image(s) dropped: not in {split_path.name}, "
                          f"e.g. {excluded_no_split[0]['dicom_id']}.")
        frame = frame[~missing].reset_index(drop=True)
    elif p.split_mode == "label_set":
        frame["split"] = frame.pop(SET_SPLIT)
    else:
        frame["split"] = seed_splits(frame["study_id"])
        frame["split"] = carve_validation(frame, p.val_fraction, p.split_seed)

    raw = frame[names]
    targets = apply_policies(raw, p.uncertain_policy, p.blank_policy, names)
    frame = pd.concat([frame[["subject_id", "study_id", "dicom_id", "view", "split"]], targets], axis=1)
    frame["path"] = image_paths(frame)
    frame = frame[output_columns(names)]

    values = targets.to_numpy()
    report = CohortReport(
        data_root=str(root),
        settings={k: getattr(p, k) for k in ("views", "studies_per_subject", "images_per_study", "label_source",
                                             "uncertain_policy", "blank_policy", "split_mode", "val_fraction",
                                             "split_seed")} | ({} if lset.splits == "release" else
                                                               {"label_set": lset.record()}),
        sources={kind: str(table_path(root, kind)) for kind in
                 ("metadata", *([p.label_source] if lset.splits == "release" else []),
                  *(["split"] if p.split_mode == "official" else []))}
        | ({} if lset.splits == "release" else {"label_set": str(label_path)}),
        metadata_rows=len(metadata),
        images_in_view=int(in_view.sum()),
        images_blank_view=int(blank_view.sum()),
        selected_images=len(chosen),
        images_with_labels=int(has_labels.sum()),
        studies_in_view=int(metadata.loc[in_view, "study_id"].nunique()),
        subjects_in_view=int(chosen["subject_id"].nunique()),
        subjects_with_labels=int(chosen.loc[has_labels, "subject_id"].nunique()),
        excluded_no_labels=excluded_no_labels,
        excluded_no_split=excluded_no_split,
        split_counts={s: int((frame["split"] == s).sum()) for s in SPLITS},
        positives=int((values == 1).sum()),
        negatives=int((values == 0).sum()),
        ignored=int(np.isnan(values).sum()),
        label_cells=int((~np.isnan(values)).sum()),
        prevalence=prevalence(frame, raw, names),
    )
    report.seconds = round(time.perf_counter() - start, 3)
    return frame, report


def write_cohort(frame: pd.DataFrame, path) -> Path:
    """Write the cohort CSV atomically; ignored labels (NaN) are empty cells."""
    atomic_write_csv(path, frame[output_columns(cohort_labels(frame))])
    return Path(path)


def write_report(report: CohortReport, path) -> Path:
    atomic_write_json(path, report.to_dict())
    return Path(path)


def read_cohort(path, required=OUTPUT_COLUMNS) -> pd.DataFrame:
    """Read a cohort CSV back with IDs as strings (as written) and float labels; the one reader of them.

    required: the columns it must have (the cache needs only dicom_id, path and split); with the
    default, exactly the cohort's columns come back, in order.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no cohort table. Build it with notebook 01 (`make cohort`) or "
                        "`python -m cxrlib cohort --data-root DIR --out FILE.csv`.")
    names = cohort_labels(pd.read_csv(path, nrows=0))   # the run's labels, in output order
    frame = pd.read_csv(path, dtype={c: str for c in COHORT_IDENTITY} | {f: "float32" for f in names})
    required = output_columns(names) if required is OUTPUT_COLUMNS else required
    missing = [c for c in required if c not in frame]
    if missing or not names:
        raise UserError(f"{path}: missing column(s) {missing or ['(labels)']}; columns found: {list(frame.columns)}. "
                        "Rebuild it with `python -m cxrlib cohort`.")
    return frame[output_columns(names)] if required == output_columns(names) else frame


# --------------------------------------------------------------------------- command line

def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxrlib cohort",
        description="Build the cohort table (one image per subject, split, labels) from MIMIC-CXR-JPG's CSVs.")
    parser.add_argument("--data-root", help="folder with the mimic-cxr-2.0.0-*.csv(.gz) tables "
                                            "(default: the data_root parameter)")
    parser.add_argument("--out", required=True, help="where to write the cohort CSV")
    parser.add_argument("--params", help="a parameter file, e.g. params/seed-nopos.yaml")
    parser.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -p views=[AP,PA] -p val_fraction=0.1")
    parser.add_argument("--report", help="also write the report as JSON here")
    args = parser.parse_args(argv)

    overrides = dict(parse_override(o) for o in args.overrides)
    if args.data_root:
        overrides["data_root"] = args.data_root
    p = load(args.params, overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame, report = build_cohort(p.data_root, p)
        reference = compare_with_reference(report)
    write_cohort(frame, args.out)
    if args.report:
        write_report(report, args.report)

    for w in caught:
        print(f"warning: {w.message}")
    splits = ", ".join(f"{s} {n:,}" for s, n in report.split_counts.items())
    print(f"cohort: {report.images:,} images ({splits}) from {report.metadata_rows:,} metadata rows; "
          f"{len(report.excluded_no_labels)} subject(s) excluded without labels"
          + (f", {len(report.excluded_no_split)} without an official split" if report.excluded_no_split else ""))
    print(f"labels: {report.positives:,} positives of {report.label_cells:,} label cells"
          + (f", {report.ignored:,} ignored" if report.ignored else ""))
    if report.looks_like_full_release() and report.uses_original_rules():
        verdict = "differs, see warning" if reference["flag"].any() else "matches"
        print(f"reference (original project on 2.0.0): {verdict}")
    print(f"wrote {args.out} in {report.seconds:.2f} s")
    return 0
