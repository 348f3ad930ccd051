"""Evaluation figures with their uncertainty: ranking and thresholds (calibration: calibration.py).

Conventions: y (N, F) holds 0, 1 or NaN (a masked label, left out of every figure of its
finding); p (N, F) holds probabilities; groups (N,) holds patient ids (subject_id). F is 14
(cxrlib.labels.FINDINGS) unless `findings` names other columns.

AUROC and AUPRC follow scikit-learn (roc_auc_score, average_precision_score); the point
estimates are computed by scikit-learn itself. Confidence intervals come from a patient-level
(cluster) bootstrap: a resample draws patients with replacement and brings all their images.
A resample is a vector of row multiplicities, so the bootstrap never copies data: with the
rows sorted once by score, AUROC is a weighted Mann-Whitney statistic and average precision a
weighted sum of precisions, both from cumulative sums of the weights (`resample_stats`).
Thresholds are chosen on the validation split only and then applied to the test split. The paired
AUROC test (DeLong's, with Obuchowski's variance for patients with several images) is delong.py's.

Estimable findings. A finding with fewer than `min_positives` patients holding a positive (or a negative)
in a split (patients, not images: the bootstrap's independent units; without `groups`, each row) keeps its
counts and point estimate, flagged `estimable: false`, but gets no CI and stays out of the macro averages,
which name the findings they cover (`macro_findings`). The default, MIN_POSITIVES = 10, comes from the
coverage of the patient-bootstrap percentile interval for one AUROC (binormal scores, AUROC 0.86, 300
negatives; tests/test_metrics.py repeats it): about 52% at 2 positives, 70% at 3, 80% at 5, 85% at 10 and
91% at 20 or more. Below 10 the interval no longer means what its level says.
Every CI carries `n_boot_valid`; one built from fewer than CONDITIONAL_SHARE of the resamples (the rest
lost every positive of a finding) is `conditional: true`, and the reports say so beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import sparse
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from .calibration import calibration
from .inputs import MetricsInputError, check_inputs, group_index, json_number

MIN_POSITIVES = 10          # positive and negative units a finding needs for a CI and a place in the macro
CONDITIONAL_SHARE = 0.99    # a CI from fewer valid resamples than this share is conditional on them


# --------------------------------------------------------------------------- point estimates
def patients_per_class(y, groups=None) -> np.ndarray:
    """(2, F): per finding, the patients with a positive label and those with a negative one (rows without
    `groups` are their own patients). Estimability counts these, the independent units of the bootstrap."""
    y = np.asarray(y, dtype=np.float64)
    if groups is None:
        return np.stack([np.nansum(y == 1, 0), np.nansum(y == 0, 0)]).astype(np.int64)
    patient = group_index(groups, len(y))
    return np.array([[np.unique(patient[y[:, j] == value]).size for j in range(y.shape[1])] for value in (1, 0)],
                    dtype=np.int64)


def ranking_metrics(y, p, findings=None, min_positives: int = 1, groups=None, patients=None) -> dict:
    """AUROC and AUPRC per finding, macro and micro (scikit-learn), with the findings left out.

    A finding with one class among its unmasked labels has no AUROC (`excluded`); one with fewer than
    min_positives patients with a positive (or with a negative) has its figures but is not `estimable`
    (`not_estimable`): on clustered data ten positive images of eight patients are eight independent units.
    Neither enters the macro averages, whose members are `macro_findings`; `notes` says why.
    Micro pools every unmasked cell. patients: patients_per_class(y, groups), when the caller has it.
    """
    y, p, findings = check_inputs(y, p, findings)
    patients = patients_per_class(y, groups) if patients is None else patients
    unit = "patients" if groups is not None else "units"
    per_finding, excluded, not_estimable, notes = {}, [], [], []
    for j, name in enumerate(findings):
        known = ~np.isnan(y[:, j])
        t, s = y[known, j], p[known, j]
        n_pos = int(t.sum())
        n_neg = int(t.size) - n_pos
        entry = {"n": int(t.size), "n_pos": n_pos, "n_neg": n_neg, "auroc": float("nan"), "auprc": float("nan"),
                 "patients_pos": int(patients[0, j]), "patients_neg": int(patients[1, j]),
                 "estimable": bool(min(patients[:, j]) >= max(min_positives, 1))}
        if 0 < n_pos < t.size:
            entry["auroc"] = float(roc_auc_score(t, s))
            entry["auprc"] = float(average_precision_score(t, s))
        else:
            excluded.append(name)
            notes.append(f"{name}: {n_pos} positives among {t.size} labelled units (one class only); "
                         "no AUROC/AUPRC, left out of the macro averages")
        if name not in excluded and not entry["estimable"]:
            not_estimable.append(name)
            notes.append(f"{name}: {n_pos} positive and {n_neg} negative units, from {patients[0, j]} and "
                         f"{patients[1, j]} {unit}, fewer than min_positives = {min_positives} {unit}: point "
                         "estimate only (no CI), left out of the macro averages")
        per_finding[name] = entry
    included = [f for f in findings if per_finding[f]["estimable"] and f not in excluded]
    macro = {m: float(np.mean([per_finding[f][m] for f in included])) if included else float("nan")
             for m in ("auroc", "auprc")}
    known = ~np.isnan(y)
    t, s = y[known], p[known]
    micro = {"auroc": float("nan"), "auprc": float("nan")}
    if 0 < t.sum() < t.size:
        micro = {"auroc": float(roc_auc_score(t, s)), "auprc": float(average_precision_score(t, s))}
    return {"per_finding": per_finding, "macro": macro, "micro": micro, "excluded": excluded,
            "not_estimable": not_estimable, "macro_findings": included, "notes": notes}


# --------------------------------------------------------------------------- weighted statistics
@dataclass
class _RankIndex:
    """One binary problem (a finding, or all cells pooled), sorted once by score.

    `rows` index the weight matrix, so a cell of the pooled problem carries its image's weight.
    """
    neg_rows: np.ndarray   # negatives, scores ascending
    pos_rows: np.ndarray   # positives, scores descending
    below: np.ndarray      # per positive: how many negatives score lower
    not_above: np.ndarray  # per positive: how many negatives score lower or equal
    last_tied: np.ndarray  # per positive: position of the last positive scoring >= it (ties included)


def _rank_index(rows: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Optional[_RankIndex]:
    pos = labels == 1
    if pos.all() or not pos.any():
        return None
    neg_order = np.argsort(scores[~pos], kind="stable")
    neg_sorted = scores[~pos][neg_order]
    pos_order = np.argsort(-scores[pos], kind="stable")
    pos_sorted = scores[pos][pos_order]
    return _RankIndex(
        neg_rows=rows[~pos][neg_order],
        pos_rows=rows[pos][pos_order],
        below=np.searchsorted(neg_sorted, pos_sorted, "left"),
        not_above=np.searchsorted(neg_sorted, pos_sorted, "right"),
        last_tied=np.searchsorted(-pos_sorted, -pos_sorted, "right") - 1,
    )


def _weighted_auroc_auprc(ix: Optional[_RankIndex], w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision for each column of the (rows, b) multiplicities w.

    AUROC = sum over positives of w * (negatives below + half the tied ones) / (P * N), which is
    the trapezoidal area scikit-learn computes. AP = sum over positives of w * precision at the
    positive's own score (TP and FP counted with ties, as at scikit-learn's distinct thresholds) / P.
    """
    b = w.shape[1]
    if ix is None:
        return np.full(b, np.nan), np.full(b, np.nan)
    # Gathered with take (the indices are in range: no checks) and accumulated in place: three times faster
    # than fancy indexing into a new cumsum (bench scale: NIH's 112k images).
    cneg = np.empty((len(ix.neg_rows) + 1, b))
    cneg[0] = 0.0
    np.take(w, ix.neg_rows, axis=0, out=cneg[1:], mode="clip")
    np.cumsum(cneg[1:], axis=0, out=cneg[1:])
    wp = np.take(w, ix.pos_rows, axis=0, mode="clip")
    cpos = wp.copy()
    np.cumsum(cpos, axis=0, out=cpos)
    n_pos, n_neg = cpos[-1], cneg[-1]
    below = cneg[ix.below]
    wins = np.einsum("ij,ij->j", wp, below + cneg[ix.not_above])
    tp = cpos[ix.last_tied]
    called = tp + (n_neg - below)
    # A positive of weight 0 with nothing called above it contributes 0 * 0/0; count it as 0.
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    ap_sum = np.einsum("ij,ij->j", wp, precision)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = wins / (2.0 * n_pos * n_neg)
        auprc = ap_sum / n_pos
    one_class = (n_pos == 0) | (n_neg == 0)
    auroc[one_class] = np.nan
    auprc[one_class] = np.nan
    return auroc, auprc


@dataclass
class ResamplePlan:
    """Everything the weighted statistics need, computed once per (y, p)."""
    findings: list
    per_finding: list           # _RankIndex or None per finding
    pooled: Optional[_RankIndex]
    included: np.ndarray        # findings with two classes and min_positives of each: the macro's members
    design: sparse.csr_matrix   # (N, K) columns whose weighted sums give calibration statistics
    n_bins: int


def resample_plan(y, p, findings: list, n_bins: int = 10, min_positives: int = 1, groups=None,
                  patients=None, micro: bool = True) -> ResamplePlan:
    """The rank indexes and calibration design of (y, p), for plan_stats on any number of weight sets.
    micro=False: no pooled ranking (the micro figures come out NaN), for callers that never report them; it
    costs as much as every finding's together."""
    n, f = y.shape
    rows = np.arange(n)
    known = ~np.isnan(y)
    per = [_rank_index(rows[known[:, j]], p[known[:, j], j], y[known[:, j], j]) for j in range(f)]
    cell_rows = np.broadcast_to(rows[:, None], y.shape)[known]
    pooled = _rank_index(cell_rows, p[known], y[known]) if micro else None
    # Calibration with equal-width bins (scikit-learn's calibration_curve binning): per finding and
    # bin the weighted count, sum of p and sum of y; ECE = sum over bins |sum y - sum p| / count.
    # Sparse: each row has 4 entries per finding among its 3 * F * n_bins + F columns, so the weighted sums of
    # B resamples cost 4 F N B, not (3 n_bins + 1) F N B (a dense product grew to minutes on NIH's 112k images).
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], np.nan_to_num(p))
    k = f * n_bins
    cell_row, cell_finding = np.nonzero(known)
    cols = cell_finding * n_bins + bins[known]
    y0, p0 = y[known], p[known]
    design = sparse.csr_matrix(
        (np.concatenate([np.ones(len(y0)), p0, y0, (p0 - y0) ** 2]),
         (np.tile(cell_row, 4), np.concatenate([cols, k + cols, 2 * k + cols, 3 * k + cell_finding]))),
        shape=(n, 3 * k + f))
    patients = patients_per_class(y, groups) if patients is None else patients
    included = np.array([ix is not None for ix in per]) & (patients.min(0) >= max(min_positives, 1))
    return ResamplePlan(findings, per, pooled, included, design, n_bins)


def plan_stats(plan: ResamplePlan, w: np.ndarray) -> dict[str, np.ndarray]:
    """Every bootstrap statistic for the (N, b) multiplicities w; arrays with a leading b axis."""
    f, k = len(plan.findings), len(plan.findings) * plan.n_bins
    pairs = [_weighted_auroc_auprc(ix, w) for ix in plan.per_finding]
    out = {"auroc": np.stack([a for a, _ in pairs], 1), "auprc": np.stack([b for _, b in pairs], 1)}
    for m in ("auroc", "auprc"):
        # Same members as the point estimate; a resample missing one of them has no macro value.
        members = out[m][:, plan.included]
        out[f"{m}_macro"] = members.mean(1) if members.shape[1] else np.full(w.shape[1], np.nan)
    out["auroc_micro"], out["auprc_micro"] = _weighted_auroc_auprc(plan.pooled, w)
    sums = np.asarray((plan.design.T @ w).T)
    count = sums[:, :k].reshape(-1, f, plan.n_bins)
    gap = np.abs(sums[:, 2 * k:3 * k] - sums[:, k:2 * k]).reshape(-1, f, plan.n_bins)
    squared = sums[:, 3 * k:]
    n = count.sum(2)
    pooled_gap = np.abs((sums[:, 2 * k:3 * k] - sums[:, k:2 * k]).reshape(-1, f, plan.n_bins).sum(1)).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["brier"] = squared / n
        out["ece"] = gap.sum(2) / n
        out["brier_pooled"] = squared.sum(1) / n.sum(1)
        out["ece_pooled"] = pooled_gap / n.sum(1)
    return out


def resample_stats(y, p, weights, findings=None, n_bins: int = 10) -> dict[str, np.ndarray]:
    """All bootstrap statistics for resamples given as row multiplicities `weights` (B, N).

    Keys: auroc, auprc, brier, ece (B, F); auroc_macro, auroc_micro, auprc_macro, auprc_micro,
    brier_pooled, ece_pooled (B,). With integer weights each value equals the plain statistic
    on the data with row i repeated weights[b, i] times; NaN where a resample has one class.
    """
    y, p, findings = check_inputs(y, p, findings)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != len(y):
        raise MetricsInputError(f"weights must be (B, {len(y)}), got {w.shape}")
    return plan_stats(resample_plan(y, p, findings, n_bins), np.ascontiguousarray(w.T))


def patient_weights(groups, n: int, n_boot: int, seed: int = 0, chunk: int = 64):
    """Yield (N, b) row multiplicities for n_boot resamples, b <= chunk at a time.

    Each resample draws as many patients as there are, with replacement; every image of a drawn
    patient comes along (so two images of one patient always share a weight). The draws are the
    same whatever `chunk` is.
    """
    group_of_row = group_index(groups, n)
    g = int(group_of_row.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, g, size=(b, g))
        counts = np.bincount((draws + g * np.arange(b)[:, None]).ravel(), minlength=b * g).reshape(b, g)
        yield np.ascontiguousarray(counts.T, dtype=np.float64)[group_of_row]


def chunk_size(y: np.ndarray) -> int:
    # About 4M cells per (cells, b) array keeps a chunk's working set near 200 MB.
    cells = max(int((~np.isnan(y)).sum()), 1)
    return int(np.clip(4_000_000 // cells, 8, 256))


def bootstrap_plans(plans: list[ResamplePlan], y, groups, n_boot: int, seed: int, progress: bool) -> list[dict]:
    """The statistics of every plan on the same n_boot patient resamples (paired when several)."""
    chunks = [[] for _ in plans]
    size = chunk_size(y)
    weights = patient_weights(groups, len(y), n_boot, seed, size)
    for w in tqdm(weights, total=-(-n_boot // size), desc="bootstrap", disable=not progress, leave=False):
        for out, plan in zip(chunks, plans):
            out.append(plan_stats(plan, w))
    return [{k: np.concatenate([c[k] for c in out]) for k in out[0]} for out in chunks]


def percentile_interval(samples: np.ndarray, ci_level: float) -> tuple[float, float, int]:
    valid = samples[~np.isnan(samples)]
    if not valid.size:
        return float("nan"), float("nan"), 0
    tail = 100 * (1 - ci_level) / 2
    lo, hi = np.percentile(valid, [tail, 100 - tail])
    return float(lo), float(hi), int(valid.size)


def _figure(value, samples, ci_level, estimable: bool = True) -> dict:
    """{value, lo, hi, n_boot_valid, conditional}; no interval for a figure that is not estimable."""
    lo, hi, valid = percentile_interval(samples, ci_level)
    if not estimable:
        lo = hi = float("nan")
    return {"value": json_number(value), "lo": json_number(lo), "hi": json_number(hi), "n_boot_valid": valid,
            "conditional": bool(estimable and valid < CONDITIONAL_SHARE * len(samples))}


def check_boot(n_boot: int, ci_level: float) -> None:
    if n_boot < 1:
        raise MetricsInputError(f"bootstrap = {n_boot}: use at least 1 resample (1000 for reported intervals)")
    if not 0 < ci_level < 1:
        raise MetricsInputError(f"ci_level = {ci_level}: give a level in (0, 1), e.g. 0.95")


# --------------------------------------------------------------------------- summaries
def summarize(y, p, groups=None, n_boot: int = 1000, seed: int = 0, ci_level: float = 0.95,
              findings=None, n_bins: int = 10, progress: bool = False, min_positives: int = MIN_POSITIVES) -> dict:
    """Every figure with its percentile CI from a patient-level bootstrap; JSON-able (NaN -> None).

    Each figure is {value, lo, hi, n_boot_valid, conditional}; n_boot_valid < n_boot means some
    resamples had one class for that finding and were skipped. A finding with fewer than min_positives
    positive or negative units has AUROC and AUPRC without a CI and is left out of the macro
    averages (`macro_findings` lists their members). ECE and Brier use equal-width bins.
    """
    check_boot(n_boot, ci_level)
    y, p, findings = check_inputs(y, p, findings)
    patients = patients_per_class(y, groups)   # once: the point estimates and the plan both need it
    point = ranking_metrics(y, p, findings, min_positives, groups, patients)
    cal = calibration(y, p, n_bins, "uniform", findings)
    plan = resample_plan(y, p, findings, n_bins, min_positives, groups, patients)
    boot = bootstrap_plans([plan], y, groups, n_boot, seed, progress)[0]
    per_finding = {}
    for j, name in enumerate(findings):
        pf = point["per_finding"][name]
        per_finding[name] = {"n": pf["n"], "n_pos": pf["n_pos"], "n_neg": pf["n_neg"], "patients_pos": pf["patients_pos"],
                             "patients_neg": pf["patients_neg"], "estimable": pf["estimable"],
                             **{m: _figure(pf[m], boot[m][:, j], ci_level, pf["estimable"]) for m in ("auroc", "auprc")},
                             **{m: _figure(cal["per_finding"][name][m], boot[m][:, j], ci_level)
                                for m in ("ece", "brier")}}
    notes = list(point["notes"])
    for name, entry in per_finding.items():
        skipped = n_boot - entry["auroc"]["n_boot_valid"]
        if entry["estimable"] and skipped:
            notes.append(f"{name}: {skipped} of {n_boot} resamples had one class and were skipped"
                         + ("; its CI is conditional on the others" if entry["auroc"]["conditional"] else ""))
    return {
        "n_images": int(len(y)),
        "n_patients": int(group_index(groups, len(y)).max() + 1) if len(y) else 0,
        "n_boot": n_boot, "seed": seed, "ci_level": ci_level,
        "ci_method": "percentile; patient-level (cluster) bootstrap",
        "macro": {m: _figure(point["macro"][m], boot[f"{m}_macro"], ci_level) for m in ("auroc", "auprc")},
        "micro": {m: _figure(point["micro"][m], boot[f"{m}_micro"], ci_level) for m in ("auroc", "auprc")},
        "calibration": {"n_bins": n_bins, "strategy": "uniform",
                        "pooled": {m: _figure(cal["pooled"][m], boot[f"{m}_pooled"], ci_level)
                                   for m in ("ece", "brier")}},
        "per_finding": per_finding,
        "excluded": point["excluded"],
        "not_estimable": point["not_estimable"],
        "macro_findings": point["macro_findings"],
        "min_positives": min_positives,
        "notes": notes,
    }
