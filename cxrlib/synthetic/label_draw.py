"""The synthetic release's labels: per-study CheXpert and NegBio tables drawn from MIMIC-CXR's public label
statistics (label-stats.json), with their co-occurrence, the recurrence of chronic findings across a subject's
studies, and a second labeler that disagrees a little. synthetic/tables.py places them on the studies.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from ..labels import FINDINGS

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
