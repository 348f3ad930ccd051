"""A synthetic stand-in for MIMIC-CXR-JPG 2.0.0: same files, columns, IDs and folders.

Nobody on the team holds the credentialed release, so every downstream step
(cohort, fetch, cache, training, error analysis) is developed against this tree and
must then run unchanged on the real one. `generate(out)` writes into `out`:

    LICENSE.txt                         says the data are synthetic, and how they were made
    mimic-cxr-2.0.0-metadata.csv.gz     one row per image (12 columns, MIMIC's order)
    mimic-cxr-2.0.0-chexpert.csv.gz     one row per study: subject_id, study_id, 14 findings
    mimic-cxr-2.0.0-negbio.csv.gz       the same from a second "labeler" (about 2% of cells differ)
    mimic-cxr-2.0.0-split.csv.gz        dicom_id, study_id, subject_id, split
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
- split: per subject 90% train / 5% validate / 5% test (the release: 97.8 / 0.8 / 1.4% of
  images), so that small demos have validation and test subjects.
- image_size="small" (the default) writes JPEGs downscaled by a fixed factor 8 from the
  DICOM size (3056x2544 -> 382x318) so the demo is fast; the metadata keeps the full DICOM
  Rows/Columns. image_size="full" writes exactly Rows x Columns pixels (for decode benchmarks).
- Images are drawn, not acquired: body, lungs, heart, mediastinum, diaphragm, ribs,
  clavicles, spine, noise; lateral views show one lung field with the spine behind. Each
  positive finding has a visible signature (a larger heart, a basal fluid level, an apical
  lucency, tubes and wires, ...); uncertain findings are drawn faintly or not at all.

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
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from .errors import UserError
from .fsutil import atomic_write_bytes, atomic_write_text
from .labels import FINDINGS

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

# ---------------------------------------------------------------------------------------
# Figures taken from the public statistics (label-stats.json, copied here so the package
# does not depend on /work/shared). Rates: positive, negative, uncertain, blank per study.
RATES = {
    "Atelectasis": (0.1563, 0.0054, 0.1566, 0.6817),
    "Cardiomegaly": (0.1226, 0.0411, 0.0352, 0.8012),
    "Consolidation": (0.0678, 0.1023, 0.1278, 0.7020),
    "Edema": (0.2606, 0.0835, 0.0617, 0.5942),
    "Enlarged Cardiomediastinum": (0.0481, 0.0801, 0.0541, 0.8177),
    "Fracture": (0.0387, 0.0104, 0.0026, 0.9483),
    "Lung Lesion": (0.0365, 0.0040, 0.0057, 0.9537),
    "Lung Opacity": (0.4939, 0.0264, 0.0231, 0.4566),
    "No Finding": (0.0886, 0.0, 0.0, 0.9114),
    "Pleural Effusion": (0.4034, 0.1323, 0.0502, 0.4141),
    "Pleural Other": (0.0130, 0.0011, 0.0094, 0.9765),
    "Pneumonia": (0.0244, 0.0098, 0.0834, 0.8824),
    "Pneumothorax": (0.0923, 0.2505, 0.0142, 0.6430),
    "Support Devices": (0.5640, 0.0280, 0.0048, 0.4032),
}
# P(i = 1 and j = 1), FINDINGS order; the No Finding row is derived, not sampled.
COOCCURRENCE = np.array([
    [.1563, .0178, .0094, .0451, .0068, .0057, .0044, .0663, 0, .0767, .0015, .0026, .0150, .0997],
    [.0178, .1226, .0065, .0567, .0083, .0033, .0024, .0612, 0, .0551, .0012, .0021, .0037, .0746],
    [.0094, .0065, .0678, .0159, .0027, .0018, .0030, .0256, 0, .0347, .0011, .0041, .0035, .0386],
    [.0451, .0567, .0159, .2606, .0106, .0049, .0041, .1379, 0, .1327, .0014, .0057, .0075, .1720],
    [.0068, .0083, .0027, .0106, .0481, .0030, .0020, .0237, 0, .0181, .0007, .0007, .0037, .0268],
    [.0057, .0033, .0018, .0049, .0030, .0387, .0012, .0162, 0, .0112, .0011, .0006, .0050, .0170],
    [.0044, .0024, .0030, .0041, .0020, .0012, .0365, .0215, 0, .0132, .0011, .0016, .0040, .0143],
    [.0663, .0612, .0256, .1379, .0237, .0162, .0215, .4939, 0, .2507, .0072, .0168, .0442, .3064],
    [0, 0, 0, 0, 0, 0, 0, 0, .0886, 0, 0, 0, 0, .0390],
    [.0767, .0551, .0347, .1327, .0181, .0112, .0132, .2507, 0, .4034, .0036, .0073, .0313, .2630],
    [.0015, .0012, .0011, .0014, .0007, .0011, .0011, .0072, 0, .0036, .0130, .0004, .0011, .0056],
    [.0026, .0021, .0041, .0057, .0007, .0006, .0016, .0168, 0, .0073, .0004, .0244, .0007, .0083],
    [.0150, .0037, .0035, .0075, .0037, .0050, .0040, .0442, 0, .0313, .0011, .0007, .0923, .0575],
    [.0997, .0746, .0386, .1720, .0268, .0170, .0143, .3064, .0390, .2630, .0056, .0083, .0575, .5640],
])
TARGET_POSITIVE_FRACTION = 58_839 / 469_014  # the original project's AP cohort on NegBio
# How much of a finding's latent is the subject's rather than the study's: chronic findings recur.
PERSISTENCE = {"Cardiomegaly": 0.6, "Enlarged Cardiomediastinum": 0.5, "Lung Lesion": 0.6,
               "Fracture": 0.5, "Pleural Other": 0.5, "Support Devices": 0.5,
               "Pleural Effusion": 0.35, "Consolidation": 0.2, "Pneumonia": 0.2, "Pneumothorax": 0.2}
LABELER_DISAGREEMENT = 0.05  # NegBio cells redrawn from the marginal rates (about half change)

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
SPLIT_FRACTIONS = {"train": 0.90, "validate": 0.05, "test": 0.05}


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


# ---------------------------------------------------------------------------------------
# Labels: a Gaussian copula over the 13 sampled findings (No Finding is derived)

SAMPLED = [f for f in FINDINGS if f != "No Finding"]
_SAMPLED_IDX = [FINDINGS.index(f) for f in SAMPLED]
_PATHOLOGY = np.array([f != "Support Devices" for f in SAMPLED])
_PHI = NormalDist()


def _upper_tail_joint(h: np.ndarray, k: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """P(X > h, Y > k) for standard bivariate normals with correlation rho (vectorised).

    Plackett's identity: dP/drho equals the bivariate density at (h, k), so the joint is the
    independent product plus a 1-D integral over rho, done with Gauss-Legendre nodes.
    """
    nodes, weights = np.polynomial.legendre.leggauss(24)
    r = rho[..., None] * (nodes + 1) / 2
    density = np.exp(-(h[..., None] ** 2 - 2 * r * h[..., None] * k[..., None] + k[..., None] ** 2)
                     / (2 * (1 - r * r))) / (2 * np.pi * np.sqrt(1 - r * r))
    tail = lambda z: 1 - np.vectorize(_PHI.cdf)(z)  # noqa: E731
    return tail(h) * tail(k) + (density * weights).sum(-1) * rho / 2


def latent_correlation() -> np.ndarray:
    """The latent correlation whose thresholded pairs reproduce the co-occurrence table."""
    idx = _SAMPLED_IDX
    p = np.array([RATES[f][0] for f in SAMPLED])
    thr = np.array([_PHI.inv_cdf(1 - q) for q in p])
    target = COOCCURRENCE[np.ix_(idx, idx)]
    h, k = np.meshgrid(thr, thr, indexing="ij")
    lo, hi = np.full_like(h, -0.95), np.full_like(h, 0.95)
    for _ in range(30):  # bisection for every pair at once; the joint grows with rho
        mid = (lo + hi) / 2
        above = _upper_tail_joint(h, k, mid) > target
        lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
    rho = (lo + hi) / 2
    np.fill_diagonal(rho, 1.0)
    rho = (rho + rho.T) / 2
    # Pairwise fits need not form a valid correlation matrix: clip the eigenvalues.
    values, vectors = np.linalg.eigh(rho)
    rho = vectors @ np.diag(np.clip(values, 1e-3, None)) @ vectors.T
    d = np.sqrt(np.diag(rho))
    return rho / np.outer(d, d)


def _states(z: np.ndarray, u: np.ndarray, scale: float) -> np.ndarray:
    """Latent normals and uniforms -> 1/0/-1/NaN for the 13 sampled findings.

    Positives are the top `scale * p` of each latent; the rest are split into uncertain,
    negative and blank in the table's proportions.
    """
    rates = np.array([RATES[f] for f in SAMPLED])
    pos = scale * rates[:, 0]
    thr = np.array([_PHI.inv_cdf(1 - q) for q in pos])
    rest = rates[:, 1:].sum(1)
    p_unc, p_neg = rates[:, 2] / rest, rates[:, 1] / rest
    out = np.where(u < p_unc, -1.0, np.where(u < p_unc + p_neg, 0.0, np.nan))
    return np.where(z > thr, 1.0, out)


def _with_no_finding(sampled: np.ndarray) -> np.ndarray:
    """Insert No Finding by the CheXpert rule: 1 when no pathology is positive or uncertain."""
    mentioned = np.isin(sampled[:, _PATHOLOGY], (1.0, -1.0)).any(1)
    out = np.empty((len(sampled), len(FINDINGS)))
    out[:, _SAMPLED_IDX] = sampled
    out[:, FINDINGS.index("No Finding")] = np.where(mentioned, np.nan, 1.0)
    return out


def positive_scale(corr: np.ndarray) -> float:
    """The factor on every positive rate that gives 12.5% positives over the 14 labels.

    Found by bisection on a fixed Monte-Carlo sample (No Finding depends on the joint).
    """
    rng = np.random.default_rng(12345)
    z = rng.standard_normal((40_000, len(SAMPLED))) @ np.linalg.cholesky(corr).T
    u = rng.random(z.shape)
    lo, hi = 0.2, 1.0
    for _ in range(25):
        mid = (lo + hi) / 2
        frac = (_with_no_finding(_states(z, u, mid)) == 1.0).mean()
        lo, hi = (mid, hi) if frac < TARGET_POSITIVE_FRACTION else (lo, mid)
    return (lo + hi) / 2


def sample_labels(rng, subject_index: np.ndarray, n_subjects: int) -> tuple[np.ndarray, np.ndarray]:
    """(chexpert, negbio) label arrays, one row per study, FINDINGS order, 1/0/-1/NaN."""
    corr = latent_correlation()
    scale = positive_scale(corr)
    chol = np.linalg.cholesky(corr)
    w = np.array([PERSISTENCE.get(f, 0.3) for f in SAMPLED])
    z_subject = rng.standard_normal((n_subjects, len(SAMPLED))) @ chol.T
    z_study = rng.standard_normal((len(subject_index), len(SAMPLED))) @ chol.T
    z = np.sqrt(w) * z_subject[subject_index] + np.sqrt(1 - w) * z_study
    chexpert = _states(z, rng.random(z.shape), scale)
    # The second labeler: some cells redrawn from the marginal rates, then its own No Finding.
    redraw = rng.random(z.shape) < LABELER_DISAGREEMENT
    fresh = _states(rng.standard_normal(z.shape), rng.random(z.shape), scale)
    negbio = np.where(redraw, fresh, chexpert)
    return _with_no_finding(chexpert), _with_no_finding(negbio)


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


# ---------------------------------------------------------------------------------------
# Images. Coordinates: x across, y down, the thorax roughly in [-1, 1]; a frame maps pixels
# to them with a per-image shift, zoom and small rotation. "Density" D is drawn additively
# (tissue adds, air subtracts) and windowed to 8 bits at the end, like a radiograph.

class Frame:
    """Pixel grid -> thorax coordinates (x, y arrays), with a random shift, zoom and tilt."""

    def __init__(self, h: int, w: int, rng):
        self.h, self.w = h, w
        self.cx = w / 2 + rng.normal(0, 0.02) * w
        self.cy = h / 2 + rng.normal(0.03, 0.02) * h
        self.s = min(h, w) / 2 * rng.uniform(0.88, 1.0)
        angle = math.radians(rng.normal(0, 2.5))
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        r = (np.arange(h, dtype=np.float32)[:, None] - self.cy) / self.s
        c = (np.arange(w, dtype=np.float32)[None, :] - self.cx) / self.s
        self.x = (self.cos * c + self.sin * r).astype(np.float32)
        self.y = (-self.sin * c + self.cos * r).astype(np.float32)

    def box(self, x0, x1, y0, y1):
        """Pixel slices covering the thorax box [x0, x1] x [y0, y1]; None when off-image."""
        xs, ys = np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1])
        cols = self.cx + self.s * (self.cos * xs - self.sin * ys)
        rows = self.cy + self.s * (self.sin * xs + self.cos * ys)
        c0, c1 = max(0, int(cols.min()) - 1), min(self.w, int(cols.max()) + 2)
        r0, r1 = max(0, int(rows.min()) - 1), min(self.h, int(rows.max()) + 2)
        return (slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None


def _ramp(v, width):
    """0 below -width/2, 1 above +width/2: a cheap soft edge."""
    v = v * (1.0 / width)
    v += 0.5
    return np.minimum(np.maximum(v, 0.0, out=v), 1.0, out=v)


def _sq(v):
    return v * v


def _ellipse(x, y, cx, cy, ax, ay):
    return _sq((x - cx) / ax) + _sq((y - cy) / ay)


def _add_disc(D, f, cx, cy, rx, ry, value, edge=0.15):
    sl = f.box(cx - rx, cx + rx, cy - ry, cy + ry)
    if sl:
        D[sl] += value * _ramp(1 - _ellipse(f.x[sl], f.y[sl], cx, cy, rx, ry), edge)


def _add_blob(D, f, cx, cy, sx, sy, value, mask=None):
    sl = f.box(cx - 3 * sx, cx + 3 * sx, cy - 3 * sy, cy + 3 * sy)
    if sl:
        blob = np.exp(-0.5 * _ellipse(f.x[sl], f.y[sl], cx, cy, sx, sy))
        D[sl] += value * (blob if mask is None else blob * mask[sl])


def _add_stroke(D, f, points, width, value):
    """A bright polyline (tube, wire, plate) of the given width."""
    pts = np.asarray(points, dtype=np.float32)
    sl = f.box(pts[:, 0].min() - width, pts[:, 0].max() + width,
               pts[:, 1].min() - width, pts[:, 1].max() + width)
    if not sl:
        return
    x, y = f.x[sl], f.y[sl]
    dist = np.full(x.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        dist = np.minimum(dist, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    D[sl] += value * _ramp(width / 2 - dist, width / 2)


def _curve(p0, p1, p2, n=10):
    """A quadratic Bezier from p0 to p2 bending towards p1, as n points."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=float) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t * t * p2


def _smooth_noise(rng, h, w, cells):
    """Low-frequency noise: a coarse normal grid upsampled bicubically."""
    ch, cw = max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w))
    coarse = Image.fromarray(rng.standard_normal((ch, cw)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((w, h), Image.BICUBIC))


def _anatomy(rng, lateral: bool) -> dict:
    """One subject's geometry (the anatomy RNG is seeded per subject). Findings edit it."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if lateral:
        lung = dict(cx=0.05, cy=-0.12, ax=u(0.48, 0.54), ay=u(0.6, 0.66), dome=u(0.36, 0.44),
                    tilt=0.08, taper=0.15, lat=1.0)
        return dict(lateral=True, tissue=u(0.5, 0.58), body_ax=u(0.74, 0.82), lungs=[lung],
                    heart=dict(cx=-0.2, cy=u(0.2, 0.26), ax=u(0.25, 0.29), ay=u(0.22, 0.26)),
                    rib=u(0.1, 0.115))
    lungs = [dict(cx=side * u(0.36, 0.4), cy=u(-0.14, -0.08), ax=u(0.27, 0.31) - 0.02 * (side > 0),
                  ay=u(0.6, 0.66), dome=u(0.38, 0.46) + 0.04 * (side > 0), tilt=0.0, taper=0.3, lat=side)
             for side in (-1.0, 1.0)]
    return dict(lateral=False, tissue=u(0.5, 0.58), body_ax=u(0.86, 0.96), lungs=lungs,
                heart=dict(cx=u(0.08, 0.12), cy=u(0.17, 0.23), ax=u(0.27, 0.31), ay=u(0.2, 0.23)),
                med_w=u(0.09, 0.11), med_upper=1.0, rib=u(0.1, 0.115))


def _lung_shape(x, y, lung):
    """Normalised radius^2 of a lung: narrow apex, broad base."""
    v = (y - lung["cy"]) / lung["ay"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # far outside: inf, as it should be
        return _sq((x - lung["cx"]) / (lung["ax"] * (1 + lung["taper"] * v))) + _sq(v)


def _lung_mask(f, lung):
    """Where the lung's air is: inside its outline and above its diaphragm dome."""
    sl = f.box(lung["cx"] - 1.5 * lung["ax"], lung["cx"] + 1.5 * lung["ax"], lung["cy"] - lung["ay"],
               lung["cy"] + lung["ay"])
    mask = np.zeros_like(f.x)
    if sl:
        x, y = f.x[sl], f.y[sl]
        across = (x - lung["cx"]) / lung["ax"]
        # Domes sit lowest laterally (the costophrenic angles); on a lateral view, posteriorly.
        dome = lung["dome"] + 0.12 * _sq(across) + lung["tilt"] * across
        mask[sl] = _ramp(1 - _lung_shape(x, y, lung), 0.15) * _ramp(dome - y, 0.03)
    return mask


def _draw_base(f, a, rng):
    """The normal chest: returns density D and each lung's visible-air mask."""
    x, y, ax_ = f.x, f.y, np.abs(f.x)
    width = a["body_ax"] * (1 - 0.06 * y)
    shoulders = -0.95 + 0.6 * _sq(np.maximum(ax_ - 0.25, 0))
    body = np.maximum(_ramp(width - ax_, 0.08) * _ramp(y - shoulders, 0.1), _ramp(0.26 - ax_, 0.08))
    D = a["tissue"] * body * (1 - 0.25 * _sq(x / width))  # thicker in the middle
    h = a["heart"]
    heart = np.zeros_like(x)
    sl = f.box(h["cx"] - h["ax"], h["cx"] + h["ax"], h["cy"] - h["ay"], h["cy"] + h["ay"])
    if sl:
        heart[sl] = _ramp(1 - _ellipse(x[sl], y[sl], h["cx"], h["cy"], h["ax"], h["ay"]), 0.3)
    if a["lateral"]:
        occluders = heart
    else:  # mediastinum: widens towards the heart; an aortic knob on the left
        med_w = a["med_w"] * np.where(y < -0.1, a["med_upper"], 1 + 0.5 * (y + 0.1)).astype(np.float32)
        med = _ramp(med_w - np.abs(x - 0.01), 0.04) * _ramp(h["cy"] - y, 0.1)
        occluders = np.maximum(heart, med)
        sl = f.box(0.0, 0.24, -0.45, -0.25)
        if sl:
            occluders[sl] = np.maximum(occluders[sl], _ramp(1 - _ellipse(x[sl], y[sl], 0.11, -0.35, 0.08, 0.07), 0.3))
    visible = []
    for lung in a["lungs"]:
        m = _lung_mask(f, lung) * (1 - occluders)
        visible.append(m)
        # Air: darkest where the lung is thickest.
        D -= 0.38 * m * (0.7 + 0.3 * _ramp(1 - _lung_shape(x, y, lung), 1.0))
    D += 0.06 * heart * body
    if not a["lateral"]:  # the trachea's air column
        D -= 0.08 * _ramp(0.035 - np.abs(x - 0.005), 0.02) * _ramp(-0.35 - y, 0.1)
    lo = max(l["dome"] for l in a["lungs"])
    D += 0.1 * _ramp(y - lo - 0.05, 0.25) * body  # liver and abdomen below the domes
    if not a["lateral"]:
        _add_disc(D, f, 0.3, a["lungs"][1]["dome"] + 0.12, 0.09, 0.05, -0.1)  # gastric bubble
    air = visible[0] if len(visible) == 1 else np.maximum(visible[0], visible[1])
    # Lung markings: vessels fanning out from the hila, denser centrally.
    hilum = 1.0 if a["lateral"] else 0.5 + _ramp(1 - _ellipse(ax_, y, 0.15, -0.02, 0.35, 0.45), 1.0)
    D += 0.06 * _smooth_noise(rng, f.h, f.w, 28) * air * hilum
    _draw_bones(D, f, a, body, air)
    return D, visible


def _draw_bones(D, f, a, body, air):
    x, y = f.x, f.y
    if a["lateral"]:
        # Spine behind the lungs: vertebral bodies with darker discs; a thin sternum in front.
        column = _ramp(0.085 - np.abs(x - 0.6 - 0.05 * y), 0.03)
        discs = 0.6 + 0.4 * _ramp(np.cos(2 * np.pi * y / 0.13) + 0.7, 0.6)
        D += 0.22 * column * discs * body
        D += 0.1 * _ramp(0.025 - np.abs(x + 0.6 - 0.12 * y), 0.02) * _ramp(0.2 - y, 0.1) * body
        ribs = np.cos(2 * np.pi * (y - 0.3 * x) / a["rib"])
        D += 0.04 * _ramp(ribs - 0.5, 0.4) * (0.3 + air)
        return
    thorax = _ramp(1 - _ellipse(x, y, 0.0, -0.14, 0.72, 0.74), 0.15) * _ramp(np.abs(x) - 0.07, 0.04)
    posterior = np.cos(2 * np.pi * (y - 0.35 * _sq(x)) / a["rib"])
    anterior = np.cos(2 * np.pi * (y + 0.25 * _sq(x)) / (a["rib"] * 1.15))
    # Ribs show through air, hardly through the mediastinum or the abdomen.
    D += (0.07 * _ramp(posterior - 0.45, 0.35) + 0.03 * _ramp(anterior - 0.5, 0.4)) * thorax * (0.25 + air)
    spine = _ramp(0.065 - np.abs(x - 0.005), 0.02)
    D += 0.1 * spine * (0.7 + 0.3 * np.cos(2 * np.pi * y / 0.12)) * body
    for side in (-1, 1):  # clavicles
        _add_stroke(D, f, _curve((side * 0.08, -0.68), (side * 0.35, -0.76), (side * 0.68, -0.86)), 0.05, 0.18)


# --- findings: each edits the geometry (before drawing) or adds density (after) ----------

def _pick_lung(a, rng):
    return int(rng.integers(len(a["lungs"])))


def _geometry_findings(a, strength: dict, rng):
    if s := strength.get("Cardiomegaly"):
        a["heart"]["ax"] *= 1 + 0.5 * s
        a["heart"]["ay"] *= 1 + 0.15 * s
        a["heart"]["cx"] += 0.06 * s
    if (s := strength.get("Enlarged Cardiomediastinum")) and not a["lateral"]:
        a["med_upper"] = 1 + 2.2 * s
    if s := strength.get("Atelectasis"):  # volume loss lifts the hemidiaphragm on that side
        a["lungs"][_pick_lung(a, rng)]["dome"] -= 0.12 * s


def _draw_findings(D, f, a, visible, strength: dict, rng):
    x, y = f.x, f.y
    lungs, lateral = a["lungs"], a["lateral"]
    air = visible[0] if len(visible) == 1 else np.maximum(visible[0], visible[1])
    fill = np.zeros_like(D)  # opacities replace air: together no denser than soft tissue, only where air was
    if (s := strength.get("Enlarged Cardiomediastinum")) and lateral:
        _add_blob(D, f, -0.38, -0.3, 0.14, 0.2, 0.22 * s)  # retrosternal space filled
    if s := strength.get("Pleural Effusion"):  # basal fluid: a meniscus climbing the lateral wall
        for i in (range(len(lungs)) if rng.random() < 0.4 else [_pick_lung(a, rng)]):
            lung = lungs[i]
            across = np.clip((x - lung["cx"]) / lung["ax"] * lung["lat"], -1, 1)
            level = lung["dome"] - rng.uniform(0.15, 0.35) - 0.15 * across
            fill += 0.45 * s * _ramp(y - level, 0.08) * visible[i]
    if s := strength.get("Pneumothorax"):
        _draw_pneumothorax(D, f, lungs[i := _pick_lung(a, rng)], visible[i], s)
    if s := strength.get("Edema"):  # bilateral perihilar haze, reticular
        texture = 0.7 + 0.3 * _smooth_noise(rng, f.h, f.w, 40)
        for cx in ((-0.2, 0.22) if not lateral else (0.0,)):
            _add_blob(fill, f, cx, -0.02, 0.2, 0.26, 0.3 * s, mask=air * texture)
    if s := strength.get("Consolidation"):  # one lobe, dense and homogeneous, sharp fissure
        i = _pick_lung(a, rng)
        lung = lungs[i]
        fissure = lung["cy"] + rng.uniform(0.0, 0.2) + 0.3 * (x - lung["cx"]) / lung["ax"] * lung["lat"]
        lobe = _ramp(y - fissure, 0.03) if rng.random() < 0.7 else _ramp(fissure - 0.3 - y, 0.03)
        fill += 0.45 * s * lobe * visible[i]
    if s := strength.get("Pneumonia"):  # patchy, multifocal, mottled
        mottle = np.clip(0.7 + 0.5 * _smooth_noise(rng, f.h, f.w, 48), 0, None)
        for _ in range(rng.integers(5, 10)):
            lung = lungs[_pick_lung(a, rng)]
            _add_blob(fill, f, lung["cx"] + rng.uniform(-0.6, 0.6) * lung["ax"],
                      lung["cy"] + rng.uniform(0.0, 0.55) * lung["ay"],
                      rng.uniform(0.06, 0.1), rng.uniform(0.06, 0.1), 0.4 * s, mask=air * mottle)
    if s := strength.get("Lung Opacity"):  # broad ground-glass haze over a large zone
        lung = lungs[_pick_lung(a, rng)]
        _add_blob(fill, f, lung["cx"] + rng.uniform(-0.2, 0.2) * lung["ax"],
                  lung["cy"] + rng.uniform(-0.4, 0.2) * lung["ay"], 0.3, 0.35, 0.22 * s, mask=air)
    if s := strength.get("Atelectasis"):  # a plate: thin, near-horizontal, in the lower zone
        lung = lungs[_pick_lung(a, rng)]
        cx = lung["cx"] + lung["lat"] * rng.uniform(0.0, 0.4) * lung["ax"]  # lateral, clear of the heart
        cy = lung["dome"] - rng.uniform(0.15, 0.28)
        half, tilt = rng.uniform(0.13, 0.18), rng.uniform(-0.06, 0.06)
        _add_stroke(fill, f, [(cx - half, cy - tilt), (cx + half, cy + tilt)], 0.08, 0.55 * s)
    if s := strength.get("Pleural Other"):  # thickening along the lateral chest wall
        i = _pick_lung(a, rng)
        lung = lungs[i]
        r2 = _lung_shape(x, y, lung)
        side = _ramp((x - lung["cx"]) * lung["lat"], 0.1)
        fill += 0.45 * s * _ramp(r2 - 0.5, 0.15) * side * visible[i]
    D += np.minimum(fill, 0.4 * air)
    if s := strength.get("Lung Lesion"):  # a nodule with a sharp edge
        lung = lungs[_pick_lung(a, rng)]
        r = rng.uniform(0.10, 0.14)
        _add_disc(D, f, lung["cx"] + rng.uniform(-0.5, 0.5) * lung["ax"],
                  lung["cy"] + rng.uniform(-0.6, 0.3) * lung["ay"], r, r, 0.75 * s, edge=0.2)
    if s := strength.get("Fracture"):  # healing rib fracture: bright callus and a step-off
        lung = lungs[_pick_lung(a, rng)]
        v = rng.uniform(-0.7, 0.3)
        cx = lung["cx"] + lung["lat"] * lung["ax"] * (1 + lung["taper"] * v) * math.sqrt(1 - v * v)
        cy = lung["cy"] + v * lung["ay"]
        _add_disc(D, f, cx, cy, 0.12, 0.08, 0.75 * s, edge=0.3)
        _add_stroke(D, f, [(cx - 0.15, cy + 0.05), (cx, cy + 0.05)], 0.05, 0.45 * s)
        _add_stroke(D, f, [(cx, cy - 0.05), (cx + 0.15, cy - 0.05)], 0.05, 0.45 * s)
    if s := strength.get("Support Devices"):
        _draw_devices(D, f, a, s, rng)


def _draw_pneumothorax(D, f, lung, visible, s):
    """Air between chest wall and a collapsed lung: black, no markings, a thin pleural line."""
    shrink = 0.5 * s
    inner = dict(lung, ax=lung["ax"] * (1 - shrink), ay=lung["ay"] * (1 - 0.6 * shrink),
                 cx=lung["cx"] - lung["lat"] * lung["ax"] * shrink, cy=lung["cy"] + lung["ay"] * shrink * 0.6)
    r2 = _lung_shape(f.x, f.y, inner)
    D -= 0.22 * s * visible * _ramp(r2 - 1, 0.08)
    D += 0.16 * s * visible * _ramp(0.1 - np.abs(r2 - 1), 0.08)


def _draw_devices(D, f, a, s, rng):
    tube_x = 0.0 if not a["lateral"] else 0.1
    for kind in rng.permutation(["ett", "ng", "line", "ecg", "pacer"])[: rng.integers(2, 5)]:
        if kind == "ett":
            _add_stroke(D, f, [(tube_x, -1.2), (tube_x + 0.01, rng.uniform(-0.55, -0.4))], 0.045, 0.55 * s)
        elif kind == "ng":
            end = (0.3, a["lungs"][-1]["dome"] + 0.15)
            _add_stroke(D, f, _curve((tube_x - 0.02, -1.2), (0.02, 0.2), end), 0.03, 0.5 * s)
        elif kind == "line":
            side = float(rng.choice([-1, 1]))
            _add_stroke(D, f, _curve((side * 0.75, -0.85), (side * 0.2, -0.7), (0.02 * side, -0.2)), 0.03, 0.55 * s)
        elif kind == "ecg":
            for _ in range(rng.integers(3, 6)):
                cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.5)
                _add_disc(D, f, cx, cy, 0.05, 0.05, 0.6 * s, edge=0.4)
                _add_stroke(D, f, _curve((cx, cy), (cx + rng.uniform(-0.3, 0.3), cy + 0.2),
                                         (math.copysign(1.1, cx), cy + rng.uniform(-0.2, 0.4)), 6), 0.015, 0.4 * s)
        elif kind == "pacer":
            cx = float(rng.choice([-0.5, 0.5]))
            _add_disc(D, f, cx, -0.68, 0.1, 0.07, 0.7 * s, edge=0.15)
            h = a["heart"]
            _add_stroke(D, f, _curve((cx, -0.68), (0.0, -0.5), (h["cx"] + 0.05, h["cy"])), 0.025, 0.55 * s)


def render(h: int, w: int, view: str, labels: np.ndarray, rng, anatomy_rng, draw_scale: int = 2,
           blur: float = 0.8) -> np.ndarray:
    """One radiograph as an (h, w) uint8 array. labels: FINDINGS order, 1/0/-1/NaN.

    The anatomy is drawn at 1/draw_scale of the size and upsampled (it is smooth anyway);
    the grain is added at full size, then blurred by `blur` pixels.
    """
    lateral = view in LATERAL_VIEWS
    a = _anatomy(anatomy_rng, lateral)
    strength = {}
    for finding, value in zip(FINDINGS, labels):
        if finding == "No Finding":
            continue
        if value == 1.0:
            strength[finding] = rng.uniform(0.8, 1.2)
        elif value == -1.0 and rng.random() < 0.5:
            strength[finding] = rng.uniform(0.2, 0.45)  # uncertain: faint, or not drawn
    f = Frame(math.ceil(h / draw_scale), math.ceil(w / draw_scale), rng)
    _geometry_findings(a, strength, rng)
    D, visible = _draw_base(f, a, rng)
    _draw_findings(D, f, a, visible, strength, rng)
    # Exposure: window, uneven brightness, grain, gamma (a lookup table), slight blur.
    lo, hi = rng.uniform(-0.02, 0.06), rng.uniform(0.8, 0.95)
    D = (D - lo) * (255 / (hi - lo)) + 8 * _smooth_noise(rng, f.h, f.w, 6)
    if draw_scale > 1:
        D = np.asarray(Image.fromarray(D, mode="F").resize((w, h), Image.BICUBIC))
    D = D + rng.standard_normal(D.shape, dtype=np.float32) * 6.0
    image = Image.fromarray(np.clip(D + 0.5, 0, 255).astype(np.uint8), mode="L")
    gamma = rng.uniform(0.85, 1.15)
    image = image.point([round(255 * (v / 255) ** gamma) for v in range(256)])
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius=blur)) if blur else image)


def jpeg_bytes(job: tuple, seed: int, image_size: str) -> bytes:
    """The JPEG for one metadata row. job = (row, rel_path, rows, cols, view, labels, subject_id)."""
    row, _, rows, cols, view, labels, subject_id = job
    rng = np.random.default_rng([seed, 1, row])
    anatomy_rng = np.random.default_rng([seed, 2, subject_id])
    if image_size == "full":  # a light blur on the grain gives JPEG sizes near the release's ~1.5 MB
        pixels = render(rows, cols, view, labels, rng, anatomy_rng, draw_scale=4, blur=0.75)
    else:
        pixels = render(max(1, round(rows / SMALL_FACTOR)), max(1, round(cols / SMALL_FACTOR)),
                        view, labels, rng, anatomy_rng)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


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
            out.append((job[1], hashlib.sha256(path.read_bytes()).hexdigest(), False))
            continue
        data = jpeg_bytes(job, seed, image_size)
        _replace_into(path, data)
        out.append((job[1], hashlib.sha256(data).hexdigest(), True))
    return out


# ---------------------------------------------------------------------------------------
# The whole tree

def _license_text(subjects, seed, image_size, images, max_studies) -> str:
    command = f"python -m cxrlib demo-data --subjects {subjects} --seed {seed} --image-size {image_size}"
    command += f" --max-studies {max_studies}" if max_studies else ""
    command += " --tables-only" if not images else ""
    return (
        "SYNTHETIC DATA - NOT MIMIC-CXR-JPG.\n\n"
        "This folder imitates the layout, file names, columns and identifier formats of\n"
        "MIMIC-CXR-JPG 2.0.0 (PhysioNet) so that software can be developed without the\n"
        "credentialed data. No patient data went into it: the tables are sampled from public\n"
        "summary statistics and the images are drawn by a program. It is not the PhysioNet\n"
        "Credentialed Health Data License; you may use and share this synthetic data freely.\n\n"
        f"Generated by: {command}\n"
        + ("Tables only: the image files listed in the metadata were not written.\n" if not images else "")
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
                  sums: dict) -> int:
    """Draw every JPEG not already complete, in parallel; fills sums, returns how many were written."""
    for stray in (out / "files").glob("**/.*.tmp"):  # left by a run killed mid-write
        stray.unlink()
    meta = tables["metadata"]
    subjects = meta["subject_id"].tolist()
    paths = [image_path(*ids) for ids in zip(subjects, meta["study_id"].tolist(), meta["dicom_id"].tolist())]
    jobs = list(zip(range(len(meta)), paths, meta["Rows"].tolist(), meta["Columns"].tolist(),
                    meta["ViewPosition"].tolist(), tables["image_labels"], subjects))
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
             progress: bool = True, images: bool = True, max_studies: int | None = None) -> dict:
    """Write the synthetic MIMIC-CXR-JPG tree into `out`; returns summary counts.

    Rerunning into a complete tree made with the same settings does nothing; an
    interrupted one continues (finished JPEGs are kept). A folder holding anything else
    is refused. images=False writes only the tables (fast, even at the real scale of
    65,379 subjects).
    """
    start = time.time()
    out = Path(out)
    if image_size not in ("small", "full"):
        raise UserError(f"--image-size {image_size!r}: choose small (DICOM size / {SMALL_FACTOR}) or full")
    if max_studies is not None and max_studies < 1:
        raise UserError(f"--max-studies {max_studies}: must be at least 1 (or leave it out)")
    n_workers = _resolve_workers(workers)
    license_text = _license_text(subjects, seed, image_size, images, max_studies)
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
        return {**_summary(out, tables, time.time() - start, 0, images), "already_complete": True}

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / LICENSE, license_text)
    sums = {LICENSE: hashlib.sha256(license_text.encode()).hexdigest()}
    for name, key, columns in ((METADATA, "metadata", METADATA_COLUMNS), (NEGBIO, "negbio", LABEL_COLUMNS),
                               (CHEXPERT, "chexpert", LABEL_COLUMNS), (SPLIT, "split", SPLIT_COLUMNS)):
        data = _csv_gz(tables[key][columns])
        atomic_write_bytes(out / name, data)
        sums[name] = hashlib.sha256(data).hexdigest()

    written = 0
    if images:
        written = _write_images(out, tables, seed, image_size, n_workers, progress, sums)
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
        if not (out / path).is_file() or _sha256(out / path) != digest:
            bad.append(path)
    return bad


def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m cxrlib {command}",
        description="Write a synthetic MIMIC-CXR-JPG 2.0.0 stand-in (same files, columns, IDs, folders).")
    parser.add_argument("--out", required=True, help="dataset folder to create, e.g. data/demo")
    parser.add_argument("--subjects", type=int, default=2000, help="number of patients (real release: 65379)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", choices=["small", "full"], default="small",
                        help=f"small: DICOM size / {SMALL_FACTOR} (fast demo); full: Rows x Columns pixels")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing images; 0 = all cores")
    parser.add_argument("--max-studies", type=int, default=None, help="cap on studies per subject")
    parser.add_argument("--tables-only", action="store_true", help="write the CSV tables but no images")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    summary = generate(args.out, subjects=args.subjects, seed=args.seed, image_size=args.image_size,
                       workers=args.workers, progress=not args.no_progress, images=not args.tables_only,
                       max_studies=args.max_studies)
    state = "already complete, nothing to do" if summary["already_complete"] else f"{summary['seconds']} s"
    print(f"{summary['subjects']} subjects, {summary['studies']} studies, {summary['images']} images "
          f"in {args.out} ({state})")
    print(json.dumps(summary))
    return 0
