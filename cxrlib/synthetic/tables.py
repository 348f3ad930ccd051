"""The synthetic release's tables: IDs, studies, views, sizes, dates, labels and the official split.

Sampled from public summary statistics (label-stats.json, mimic-facts.md); see synth.py for what
follows the real release and what deliberately differs. One RNG, seeded, makes all of them.
"""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd

from ..errors import UserError
from ..labels import FINDINGS
from .label_draw import sample_labels

VERSION = "2.0.0"
METADATA = f"mimic-cxr-{VERSION}-metadata.csv.gz"
NEGBIO = f"mimic-cxr-{VERSION}-negbio.csv.gz"
CHEXPERT = f"mimic-cxr-{VERSION}-chexpert.csv.gz"
SPLIT = f"mimic-cxr-{VERSION}-split.csv.gz"
SUMS = "SHA256SUMS.txt"
LICENSE = "LICENSE.txt"

METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]
LABEL_COLUMNS = ["subject_id", "study_id", *FINDINGS]
SPLIT_COLUMNS = ["dicom_id", "study_id", "subject_id", "split"]
SMALL_FACTOR = 8  # image_size="small": JPEG side = DICOM side / 8

STUDIES_PER_SUBJECT = [33564, 11172, 5921, 3661, 2482, 1665, 1181, 896, 696, 529, 448, 345, 280, 236, 186]
REAL_SUBJECTS, REAL_STUDIES = 65_379, 227_835
TAIL_MAX = 200

# Study types: (views, weight). AP studies are portable (inpatient); the rest ambulatory.
AP_STUDY_TYPES = [(("AP",), 0.3715), (("AP", "AP"), 0.08), (("AP", "LATERAL"), 0.06),
                  (("AP", "LL"), 0.034), (("AP", ""), 0.02)]
OTHER_STUDY_TYPES = [(("PA", "LATERAL"), 0.28), (("PA", "LL"), 0.12), (("PA", "LATERAL", ""), 0.02),
                     (("",), 0.03)]
RARE_VIEWS = ["AP AXIAL", "AP LLD", "PA LLD", "LAO", "RAO", "XTABLE LATERAL", "AP RLD", "SWIMMERS",
              "PA RLD", "LPO"]
VIEW_CODE = {"AP": "antero-posterior", "PA": "postero-anterior", "LATERAL": "lateral",
             "LL": "left lateral", "": "", "AP AXIAL": "antero-posterior", "AP LLD": "antero-posterior",
             "PA LLD": "postero-anterior", "AP RLD": "antero-posterior", "PA RLD": "postero-anterior",
             "LAO": "left anterior oblique", "RAO": "right anterior oblique",
             "LPO": "left posterior oblique", "XTABLE LATERAL": "lateral", "SWIMMERS": "lateral"}
LATERAL_VIEWS = {"LATERAL", "LL", "XTABLE LATERAL", "SWIMMERS"}
# DICOM Rows x Columns with weights; portable detectors give the odd sizes.
SIZES_AP = [((3056, 2544), .45), ((2544, 3056), .12), ((2705, 2539), .25), ((2906, 2258), .10),
            ((3050, 2539), .08)]
SIZES_OTHER = [((3056, 2544), .80), ((2544, 3056), .08), ((3050, 2539), .07), ((2906, 2258), .05)]
PROCEDURES_AP = [("CHEST (PORTABLE AP)", .85), ("CHEST PORT. LINE PLACEMENT", .10),
                 ("CHEST (SINGLE VIEW)", .05)]
PROCEDURES_OTHER = [("CHEST (PA AND LAT)", .88), ("CHEST (PRE-OP PA AND LAT)", .08),
                    ("CHEST (SINGLE VIEW)", .04)]
SPLIT_FRACTIONS = {"train": 0.70, "validate": 0.15, "test": 0.15}


def _pick(rng, options, n):
    """n draws from [(value, weight), ...]; returns an index array into options."""
    w = np.array([o[1] for o in options], dtype=float)
    return rng.choice(len(options), size=n, p=w / w.sum())


# ---------------------------------------------------------------------------------------
# Structure: subjects -> studies -> images

def studies_per_subject_pmf(max_studies: int | None = None) -> np.ndarray:
    """P(k studies) for k = 1..K: the table for 1-15, then a power-law tail.

    The tail holds the subjects the table lacks (65,379 real subjects minus the table's
    63,262) and its exponent is fitted so that the mean matches 227,835 / 65,379.
    """
    head = np.array(STUDIES_PER_SUBJECT, dtype=float)
    tail_mass = REAL_SUBJECTS - head.sum()
    tail_mean = (REAL_STUDIES - (head * np.arange(1, 16)).sum()) / tail_mass
    k = np.arange(16, TAIL_MAX + 1, dtype=float)
    lo, hi = 0.0, 6.0
    for _ in range(60):  # bisection on the exponent: the mean falls as it grows
        a = (lo + hi) / 2
        w = k ** -a
        lo, hi = (a, hi) if (w * k).sum() / w.sum() > tail_mean else (lo, a)
    pmf = np.concatenate([head, tail_mass * w / w.sum()])
    if max_studies is not None:
        pmf = pmf[:max_studies]
    return pmf / pmf.sum()


def _dicom_ids(rng, n: int) -> list[str]:
    h = rng.bytes(20 * n).hex()
    return [f"{h[i:i+8]}-{h[i+8:i+16]}-{h[i+16:i+24]}-{h[i+24:i+32]}-{h[i+32:i+40]}"
            for i in range(0, 40 * n, 40)]


def _study_dates(rng, first_of_subject: np.ndarray, n_studies: int) -> tuple[np.ndarray, np.ndarray]:
    """StudyDate (YYYYMMDD, shifted into 2105-2205 as MIMIC does) and StudyTime (HHMMSS.fff)."""
    n_subjects = len(first_of_subject)
    base = rng.integers(0, 100 * 365, n_subjects)
    # Inpatients are imaged again within days, outpatients months apart; some the same day.
    gaps = np.where(rng.random(n_studies) < 0.5, rng.exponential(3.0, n_studies),
                    rng.exponential(200.0, n_studies)).astype(np.int64)
    gaps[first_of_subject] = 0
    subject_of = np.repeat(np.arange(n_subjects), np.diff(np.append(first_of_subject, n_studies)))
    day = base[subject_of] + np.cumsum(gaps) - np.cumsum(gaps)[first_of_subject][subject_of]
    dates = np.datetime64("2105-01-01") + day.astype("timedelta64[D]")
    yyyymmdd = np.char.replace(np.datetime_as_string(dates, unit="D"), "-", "").astype(np.int64)
    seconds = rng.integers(0, 86400, n_studies)
    millis = np.where(rng.random(n_studies) < 0.1, 0, rng.integers(0, 1000, n_studies))
    hhmmss = (seconds // 3600) * 10000 + (seconds // 60 % 60) * 100 + seconds % 60
    return yyyymmdd, np.round(hhmmss + millis / 1000, 3)


def _study_types(rng, n_studies_of: np.ndarray, subject_of: np.ndarray):
    """Each study's tuple of views. P(AP study) is a per-subject propensity that grows with
    the number of studies: frequent flyers are inpatients imaged with the portable unit."""
    k = n_studies_of.astype(float)
    mean = np.clip(0.34 + 0.1 * np.log(k), 0.05, 0.9)
    propensity = rng.beta(mean, 1 - mean)
    is_ap = rng.random(len(subject_of)) < propensity[subject_of]
    types = [t for t, _ in AP_STUDY_TYPES] + [t for t, _ in OTHER_STUDY_TYPES]
    ap_pick = _pick(rng, AP_STUDY_TYPES, len(subject_of))
    other_pick = _pick(rng, OTHER_STUDY_TYPES, len(subject_of)) + len(AP_STUDY_TYPES)
    return types, np.where(is_ap, ap_pick, other_pick)


def _ensure_edge_cases(rng, types, type_of, study_ids, first_of_subject, n_studies_of):
    """Small demos must still show the cases the cohort rules have to handle:
    a study with two AP images, and a subject whose lowest study_id has no AP image
    although a later study does. Forced on random studies only when chance missed them."""
    has_ap = np.array(["AP" in t for t in types])
    ap_ap = types.index(("AP", "AP"))
    pa_lat = types.index(("PA", "LATERAL"))
    if not (type_of == ap_ap).any():
        type_of[rng.integers(len(type_of))] = ap_ap
    for s, first in enumerate(first_of_subject):
        rows = np.arange(first, first + n_studies_of[s])
        lowest = rows[np.argmin(study_ids[rows])]
        if len(rows) > 1 and not has_ap[type_of[lowest]] and has_ap[type_of[rows]].any():
            return
    multi = np.flatnonzero(n_studies_of > 1)
    if len(multi) == 0:
        return
    s = rng.choice(multi)
    rows = np.arange(first_of_subject[s], first_of_subject[s] + n_studies_of[s])
    lowest = rows[np.argmin(study_ids[rows])]
    type_of[lowest] = pa_lat
    other = rng.choice(rows[rows != lowest])
    if not has_ap[type_of[other]]:
        type_of[other] = types.index(("AP",))


def build_structure(n_subjects: int, rng, max_studies: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(studies, images): one row per study and per image, with everything but the labels."""
    pmf = studies_per_subject_pmf(max_studies)
    n_studies_of = rng.choice(np.arange(1, len(pmf) + 1), size=n_subjects, p=pmf)
    subject_ids = 10_000_000 + np.sort(rng.choice(10_000_000, n_subjects, replace=False))
    n_studies = int(n_studies_of.sum())
    first_of_subject = np.concatenate([[0], np.cumsum(n_studies_of)[:-1]])
    subject_of = np.repeat(np.arange(n_subjects), n_studies_of)
    study_ids = 50_000_000 + rng.choice(10_000_000, n_studies, replace=False)
    dates, times = _study_dates(rng, first_of_subject, n_studies)
    types, type_of = _study_types(rng, n_studies_of, subject_of)
    _ensure_edge_cases(rng, types, type_of, study_ids, first_of_subject, n_studies_of)

    portable = np.array(["AP" in t or t == ("",) for t in types])[type_of]
    procedure = np.where(
        portable,
        np.array([p for p, _ in PROCEDURES_AP])[_pick(rng, PROCEDURES_AP, n_studies)],
        np.array([p for p, _ in PROCEDURES_OTHER])[_pick(rng, PROCEDURES_OTHER, n_studies)],
    )
    studies = pd.DataFrame({
        "subject_id": subject_ids[subject_of], "study_id": study_ids, "StudyDate": dates,
        "StudyTime": times, "procedure": procedure, "subject_index": subject_of,
    })

    n_views = np.array([len(t) for t in types])[type_of]
    study_of_image = np.repeat(np.arange(n_studies), n_views)
    views = [v for i in type_of for v in types[i]]
    # A few rare views as extra images of random studies (so no study loses its AP image);
    # AP AXIAL and AP LLD always among them.
    n_rare = min(max(3, round(0.005 * len(views))), 4 * len(RARE_VIEWS), n_studies)
    study_of_image = np.concatenate([study_of_image, rng.choice(n_studies, n_rare, replace=False)])
    views = np.array(views + (RARE_VIEWS[:2] + list(rng.choice(RARE_VIEWS, n_rare)))[:n_rare], dtype=object)
    n_images = len(views)

    is_ap_image = np.isin(views, ["AP", "AP AXIAL", "AP LLD", "AP RLD"]) | (views == "")
    sizes = np.where(
        is_ap_image[:, None],
        np.array([s for s, _ in SIZES_AP])[_pick(rng, SIZES_AP, n_images)],
        np.array([s for s, _ in SIZES_OTHER])[_pick(rng, SIZES_OTHER, n_images)],
    )
    orientation = np.where(
        is_ap_image,
        np.array(["Erect", "Recumbent", ""])[rng.choice(3, n_images, p=[.35, .35, .30])],
        np.array(["Erect", ""])[rng.choice(2, n_images, p=[.9, .1])],
    )
    procedure_of_image = procedure[study_of_image]
    performed = np.where(rng.random(n_images) < 0.03, "", procedure_of_image)
    images = pd.DataFrame({
        "dicom_id": _dicom_ids(rng, n_images),
        "subject_id": studies["subject_id"].to_numpy()[study_of_image],
        "study_id": study_ids[study_of_image],
        "PerformedProcedureStepDescription": performed,
        "ViewPosition": views.astype(str),
        "Rows": sizes[:, 0],
        "Columns": sizes[:, 1],
        "StudyDate": dates[study_of_image],
        "StudyTime": times[study_of_image],
        "ProcedureCodeSequence_CodeMeaning": procedure_of_image,
        "ViewCodeSequence_CodeMeaning": [VIEW_CODE[v] for v in views],
        "PatientOrientationCodeSequence_CodeMeaning": orientation,
    })
    images = images.sort_values(["subject_id", "study_id", "dicom_id"], ignore_index=True)
    studies = studies.sort_values(["subject_id", "study_id"], ignore_index=True)
    return studies, images


def assign_split(rng, subject_ids: np.ndarray) -> dict:
    """subject_id -> train/validate/test, per subject; at least one of each when possible."""
    names = list(SPLIT_FRACTIONS)
    pick = rng.choice(len(names), size=len(subject_ids), p=list(SPLIT_FRACTIONS.values()))
    for needed in (1, 2):
        if len(subject_ids) >= 3 and not (pick == needed).any():
            pick[rng.choice(np.flatnonzero(pick == 0))] = needed
    return dict(zip(subject_ids.tolist(), np.array(names)[pick]))


def build_tables(n_subjects: int, seed: int, max_studies: int | None = None) -> dict:
    """All four tables as DataFrames (and the labels the images are drawn from)."""
    if n_subjects < 1:
        raise UserError(f"--subjects {n_subjects}: ask for at least 1 subject")
    rng = np.random.default_rng([seed, 0])
    studies, images = build_structure(n_subjects, rng, max_studies)
    chexpert, negbio = sample_labels(rng, studies["subject_index"].to_numpy(), n_subjects)

    # Studies without a label row; half of them the study the original cohort selects.
    ap = images[images["ViewPosition"] == "AP"]
    lowest_ap = ap.groupby("subject_id")["study_id"].min().to_numpy()
    n_missing = min(max(3, round(0.001 * len(studies))), max(1, len(studies) // 4))
    from_cohort = rng.choice(lowest_ap, min(len(lowest_ap), (n_missing + 1) // 2), replace=False)
    others = np.setdiff1d(studies["study_id"].to_numpy(), from_cohort)
    missing = np.concatenate([from_cohort, rng.choice(others, n_missing - len(from_cohort), replace=False)])
    keep = ~studies["study_id"].isin(missing).to_numpy()

    def label_table(values):
        table = pd.DataFrame(values, columns=FINDINGS)
        table.insert(0, "study_id", studies["study_id"].to_numpy())
        table.insert(0, "subject_id", studies["subject_id"].to_numpy())
        return table[keep].reset_index(drop=True)

    split_of = assign_split(rng, np.unique(images["subject_id"].to_numpy()))
    split = images[["dicom_id", "study_id", "subject_id"]].copy()
    split["split"] = split["subject_id"].map(split_of)
    # The images show the CheXpert table's findings; NegBio, the second labeler, differs a little.
    drawn = pd.DataFrame(chexpert, columns=FINDINGS, index=studies["study_id"].to_numpy())
    return {
        "metadata": images,
        "chexpert": label_table(chexpert),
        "negbio": label_table(negbio),
        "split": split,
        "image_labels": drawn.loc[images["study_id"].to_numpy()].to_numpy(),
        "missing_label_studies": np.sort(missing),
    }


def _csv_gz(frame: pd.DataFrame) -> bytes:
    """CSV, gzip-compressed without a timestamp, so equal tables give equal bytes."""
    return gzip.compress(frame.to_csv(index=False, lineterminator="\n").encode(), compresslevel=6, mtime=0)


def image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    """files/pXX/pSUBJECT/sSTUDY/DICOM.jpg, relative to the dataset root."""
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


