"""The synthetic release's tables: IDs, studies, views, sizes, dates, labels and the official split.

Sampled from public summary statistics (label-stats.json, mimic-facts.md); see synth.py for what
follows the real release and what deliberately differs. One RNG, seeded, makes all of them.
"""
from __future__ import annotations

import gzip
from statistics import NormalDist

import numpy as np
import pandas as pd

from ..errors import UserError
from ..labels import FINDINGS

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


