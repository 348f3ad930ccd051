"""The audit by patient group: per-group figures, gaps between groups, and one error rate for the whole audit.

    rows = audit(units, groups, thresholds, n_boot=1000, seed=0, min_group_patients=30)

`units` are the scored test rows (images or studies, as the run's eval_level says) with p_<finding>,
<finding> and subject_id; `groups` holds one column per attribute (sex, age_band, race, insurance,
race_sex) aligned with them; `thresholds` are the validation-chosen ones ({finding: value}).

The procedure, declared before any figure is seen:
- Comparisons. Within an attribute, the groups with a known value and at least min_group_patients
  patients are compared. Two such groups give ONE comparison (the first in sorted order against the
  other: F vs M, never also M vs F); more give each group against the rest of them. Unknown and
  suppressed units are left out of every comparison; Unknown's own figures are still reported.
- Primary tests (the audit's decisions): for each comparison of sex, age_band, race and insurance,
  (1) the macro AUROC gap, the mean over findings with min_cases positives and negatives on both sides
  of each side's AUROC (prevalence-free ranking), and (2) the underdiagnosis gap: the rate at which a
  unit whose No Finding label is 0 is called "No Finding" at its threshold, i.e. the No Finding
  false-positive rate of Seyyed-Kalantari et al. (Nature Medicine 2021). Decisions are Bonferroni over
  all primary tests of the audit (m of them, family-wise error <= alpha under any dependence), and each
  primary gap's interval is Bonferroni-simultaneous at 1 - alpha / m: a gap is significant exactly when
  that interval excludes 0. (Holm would reject at least as much but has no intervals that match.)
- Exploratory tests, no decisions: per finding AUROC, TPR and FPR gaps, the share of units with a
  pathology called "No Finding" (`missed_pathology`, which earlier versions called underdiagnosis), and
  every race_sex comparison. Benjamini-Hochberg q-values across all of them, and per-comparison 95%
  intervals. FNR is 1 - TPR and is not reported twice. AUPRC and ECE gaps get intervals and no test:
  AUPRC moves with a group's prevalence, ECE with its size.
- Intervals: estimate +- z * SE, where SE is the patient bootstrap's standard deviation (one draw of
  patients serves every group, so a patient's images move together), never below the SE the gap would
  have under no difference (two-proportion, or Hanley-McNeil for AUROC): a rate of 24 of 24 varies in
  no resample. A group's own rate gets Wilson's interval on its effective sample size (n over the
  bootstrap's design effect). Every interval contains its estimate; ranges are clipped to [0, 1].
- Small cells: a group under min_group_patients patients is shown as "<N" with no figures (the
  patients missing from MIMIC-IV, unknown sex or age, are coverage: counted, never hidden). If that
  leaves one hidden cell in a margin whose total is known (an attribute's groups; a race's or a sex's
  race_sex cells), another cell is hidden too (complementary suppression: an Unknown
  one first, else the smallest), so no count can be recovered by subtraction. A hidden cell publishes
  nothing: no count, no figure (a rate's denominator is a count), no comparison (a gap beside the other
  side's figures is its figure), and it is left out of every "rest" a group is compared with.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..runfiles import labels_of, prob_columns
from ..stats import metrics
from ..stats.multiplicity import benjamini_hochberg, bonferroni, normal_quantile, p_from_z

ATTRIBUTES = ("sex", "age_band", "race", "insurance", "race_sex")
PRIMARY_ATTRIBUTES = ("sex", "age_band", "race", "insurance")   # race_sex: exploratory (many small cells)
UNKNOWN = "Unknown"
NOT_PATHOLOGY = ("Support Devices",)   # a positive label that is no disease (besides the set's "nothing found")
NOTHING_FOUND = "No Finding"           # the CheXpert sets' name; a label set names its own (CXR-LT 2024: Normal)
PER_FINDING = ("auroc", "auprc", "ece", "tpr", "fpr")
TESTED_PER_FINDING = ("auroc", "tpr", "fpr")
RATES = ("tpr", "fpr", "underdiagnosis", "missed_pathology")
PRIMARY_METRICS = ("auroc_macro", "underdiagnosis")
UNDER_DETECTION = {"auroc": -1, "auroc_macro": -1, "tpr": -1, "underdiagnosis": 1, "missed_pathology": 1}
COLUMNS = ["attribute", "group", "reference", "finding", "metric", "tier", "value", "lo", "hi", "n_patients", "gap",
           "gap_lo", "gap_hi", "ci", "p_value", "p_adjusted", "adjustment", "significant"]


# --------------------------------------------------------------------------- statistics for a set of weights
class _Units:
    """The audited units once: labels, calls and the ranking plan shared by every group and resample."""

    def __init__(self, units: pd.DataFrame, thresholds: dict, nothing_found: str = NOTHING_FOUND):
        self.names = labels_of(units)   # the run's labels, in output order
        if nothing_found not in self.names:
            raise ValueError(f"the audit's 'nothing found' label {nothing_found!r} is not among the run's labels")
        self.y = units[self.names].to_numpy(np.float64)
        self.p = units[prob_columns(self.names)].to_numpy(np.float64)
        called = self.p >= np.array([thresholds[f] for f in self.names], dtype=float)
        no_finding = self.names.index(nothing_found)
        known = ~np.isnan(self.y)
        self.pos = np.where(known, np.nan_to_num(self.y), 0.0)
        self.neg = np.where(known, 1 - np.nan_to_num(self.y), 0.0)
        self.called = called.astype(float)
        self.healthy_call = self.called[:, no_finding]
        self.not_healthy = self.neg[:, no_finding]                                     # nothing-found label 0
        self.pathology = (np.nan_to_num(units[pathologies(self.names, nothing_found)].to_numpy(np.float64)) == 1
                          ).any(1).astype(float)
        self.plan = metrics.resample_plan(self.y, self.p, self.names, micro=False)   # the audit has no micro
        self.subjects = units["subject_id"].to_numpy(str)

    def stats(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Every audited statistic for row weights w (N, b): (b, F) per finding, (b,) for the rest."""
        ranked = metrics.plan_stats(self.plan, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {m: ranked[m] for m in ("auroc", "auprc", "ece")}
            out["tpr"] = (w.T @ (self.pos * self.called)) / (w.T @ self.pos)
            out["fpr"] = (w.T @ (self.neg * self.called)) / (w.T @ self.neg)
            out["underdiagnosis"] = (w.T @ (self.not_healthy * self.healthy_call)) / (w.T @ self.not_healthy)
            out["missed_pathology"] = (w.T @ (self.pathology * self.healthy_call)) / (w.T @ self.pathology)
        return out

    def counts(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Cases behind each statistic inside `mask`: positives and negatives per finding, the rates' denominators."""
        return {"pos": self.pos[mask].sum(0), "neg": self.neg[mask].sum(0),
                "underdiagnosis": self.not_healthy[mask].sum(), "missed_pathology": self.pathology[mask].sum()}


def pathologies(names, nothing_found: str = NOTHING_FOUND) -> list[str]:
    """The labels that are a disease: all but "nothing found" and the devices."""
    return [f for f in names if f != nothing_found and f not in NOT_PATHOLOGY]


def _macro(auroc: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Mean AUROC over the member findings, per resample (NaN if a resample lost one of them)."""
    return auroc[:, members].mean(1) if members.any() else np.full(len(auroc), np.nan)


def _hanley_mcneil(auc: float, n_pos: float, n_neg: float) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC of `auc` on n_pos positives, n_neg negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(np.sqrt(max(variance, 0.0)))


def _sd(samples: np.ndarray) -> float:
    valid = samples[~np.isnan(samples)]
    return float(np.std(valid, ddof=1)) if valid.size > 1 else float("nan")


def _se(samples: np.ndarray, floor: float) -> float:
    """The bootstrap SD, never below `floor`; the floor alone when no resample gave a value (NaN without one)."""
    sd = _sd(samples)
    if np.isnan(sd):
        return floor if floor > 0 else float("nan")
    return max(sd, floor)


def _wilson(rate: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion on n (effective) trials; always contains `rate`."""
    if not n > 0 or np.isnan(rate):
        return float("nan"), float("nan")
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(min(centre - half, rate)), float(max(centre + half, rate))


# --------------------------------------------------------------------------- groups, comparisons, suppression
def is_coverage(attribute: str, value) -> bool:
    """A cell that is the record linkage's coverage, not a patient group: unknown sex or age means no MIMIC-IV
    patients row (anchor_age and gender are never blank there), so these patients are exactly the ones the run
    reports as missing from MIMIC-IV (mimic-facts: report them, never drop them silently). Their count is
    published, never suppressed; race and insurance Unknown also hold answers (declined, no admission) and are
    cells like the others."""
    if attribute in ("sex", "age_band"):
        return str(value) == UNKNOWN
    return attribute == "race_sex" and str(value).split(" / ")[-1] == UNKNOWN


def _hidden(counts: dict, margins: list[list], minimum: int, published=frozenset()) -> tuple[set, set]:
    """(cells under `minimum`, cells hidden to protect them): while a margin (cells summing to a published
    total) has exactly one hidden cell, hide another: an Unknown one first, else the smallest. `published`:
    cells whose counts are published whatever their size (coverage), never hidden."""
    small = {c for c, n in counts.items() if n < minimum and c not in published}
    complementary: set = set()
    changed = True
    while changed:
        changed = False
        for margin in margins:
            cells = [c for c in margin if c in counts and counts[c] > 0]
            hidden = [c for c in cells if c in small or c in complementary]
            # an Unknown cell first (hiding it costs no comparison), then the smallest
            visible = sorted((c for c in cells if c not in hidden and c not in published),
                             key=lambda c: (not is_unknown(c), counts[c], str(c)))
            if len(hidden) == 1 and visible:
                complementary.add(visible[0])
                changed = True
    return small, complementary


def is_unknown(value) -> bool:
    """Unknown, or an intersection with an unknown part ('Unknown / F'): reported, never compared."""
    return UNKNOWN in str(value).split(" / ")


def _margins(attribute: str, values: list) -> list[list]:
    # every cell sums to the audited patients (published); the known cells' total is published only where it
    # reveals no cell (audit.verdicts, audit.test_coverage), so it is no margin here
    margins = [list(values)]
    if attribute == "race_sex":   # "race / sex": each race's cells and each sex's cells sum to published totals
        parts = {v: str(v).split(" / ", 1) for v in values}
        for index in (0, 1):
            for key in {p[index] for p in parts.values() if len(p) == 2}:
                margins.append([v for v, p in parts.items() if len(p) == 2 and p[index] == key])
    return margins


def plan_groups(groups: pd.DataFrame, subjects: np.ndarray, attributes, min_group_patients: int) -> dict:
    """Per attribute: {value: mask}, patients per value, the suppressed and complementary cells, and the
    comparisons [(group, reference name, reference mask)]."""
    out = {}
    for attribute in attributes:
        column = groups[attribute].astype(str).to_numpy()
        values = sorted(pd.unique(column))
        masks = {v: column == v for v in values}
        patients = {v: int(len(np.unique(subjects[m]))) for v, m in masks.items()}
        coverage = {v for v in values if is_coverage(attribute, v)}
        small, complementary = _hidden(patients, _margins(attribute, values), min_group_patients, coverage)
        # a hidden cell is compared with nothing: a gap beside the other side's published figures is its figure
        known = [v for v in values if not is_unknown(v) and v not in small and v not in complementary]
        if len(known) == 2:
            comparisons = [(known[0], known[1], masks[known[1]])]
        elif len(known) > 2:
            comparisons = [(v, "rest", np.any([masks[o] for o in known if o != v], axis=0)) for v in known]
        else:
            comparisons = []
        out[attribute] = {"masks": masks, "patients": patients, "small": small, "complementary": complementary,
                          "known": known, "comparisons": comparisons}
    return out


def group_sizes(plan: dict, min_group_patients: int) -> list[dict]:
    """Patients per (attribute, group) as published: '<N' for a small cell, 'hidden' for its complement (whose
    figures are withheld too)."""
    out = []
    for attribute, part in plan.items():
        for value, n in part["patients"].items():
            shown = (f"<{min_group_patients}" if value in part["small"] else
                     "hidden (complementary suppression)" if value in part["complementary"] else n)
            out.append({"attribute": attribute, "group": value, "patients": shown})
    return out


# --------------------------------------------------------------------------- the audit
def audit(units: pd.DataFrame, groups: pd.DataFrame, thresholds: dict, n_boot: int = 1000, seed: int = 0,
          ci_level: float = 0.95, min_group_patients: int = 30, attributes=ATTRIBUTES, min_cases: int = 10,
          alpha: float = 0.05, nothing_found: str = NOTHING_FOUND) -> pd.DataFrame:
    """One row per (attribute, group, finding, metric) with COLUMNS; the procedure is the module docstring's.
    The labels are the units' p_<label> columns; `nothing_found` is the set's label for a normal study."""
    data = _Units(units, thresholds, nothing_found)
    n = len(units)
    plan = plan_groups(groups, data.subjects, attributes, min_group_patients)
    # Every mask whose statistics are needed: each shown group, and each comparison's reference.
    sides = {}
    for attribute, part in plan.items():
        for value, mask in part["masks"].items():
            if value not in part["small"] and value not in part["complementary"]:
                sides[(attribute, value)] = mask
        for group, reference, mask in part["comparisons"]:
            if reference == "rest":
                sides[(attribute, f"rest of {group}")] = mask
    # Each side's statistics from its own rows: the same figures as the whole set's with the others weighted 0,
    # at the cost of its rows, not of all N (the audit grew with N times the number of groups).
    own = {key: _Units(units[mask], thresholds, nothing_found) for key, mask in sides.items()}
    point = {key: own[key].stats(np.ones((int(mask.sum()), 1))) for key, mask in sides.items()}
    chunks: dict = {key: [] for key in sides}
    for w in metrics.patient_weights(data.subjects, n, n_boot, seed, chunk=metrics.chunk_size(data.y)):
        for key, mask in sides.items():
            chunks[key].append(own[key].stats(w[mask]))
    boot = {key: {m: np.concatenate([c[m] for c in parts]) for m in parts[0]} for key, parts in chunks.items()}
    whole = data.stats(np.ones((n, 1)))
    z_row = normal_quantile(ci_level)
    rows = []
    for attribute, part in plan.items():
        for value in part["patients"]:
            rows += _group_rows(attribute, value, part, point, boot, data, z_row, min_group_patients, min_cases)
        for group, reference, ref_mask in part["comparisons"]:
            ref_key = (attribute, f"rest of {group}") if reference == "rest" else (attribute, reference)
            counts = (data.counts(part["masks"][group]), data.counts(ref_mask))
            rows += _gap_rows(attribute, group, reference, (attribute, group), ref_key, point, boot, whole, counts,
                              min_cases, data.names)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS + ["se"])
    for column in ("reference", "tier", "ci", "adjustment"):
        table[column] = table[column].astype(object)
    return _decide(table, alpha, ci_level)[COLUMNS]


def _group_rows(attribute, value, part, point, boot, data, z, min_group_patients, min_cases) -> list[dict]:
    """The group's own figures (no gap): per finding, the rates, and its macro AUROC."""
    base = {"attribute": attribute, "group": value, "reference": ""}
    if value in part["small"] or value in part["complementary"]:   # its rates' denominators would give its count
        return [{**base, "finding": "all", "metric": "suppressed", "tier": "suppressed",
                 "n_patients": f"<{min_group_patients}" if value in part["small"] else "hidden"}]
    shown = part["patients"][value]
    if shown < min_group_patients:   # coverage: its count published, too few for figures
        return [{**base, "finding": "all", "metric": "too_few", "tier": "descriptive", "n_patients": shown}]
    own, samples, counts = point[(attribute, value)], boot[(attribute, value)], data.counts(part["masks"][value])
    enough = (counts["pos"] >= min_cases) & (counts["neg"] >= min_cases)
    rows = []

    def add(finding, metric, v, lo, hi):
        rows.append({**base, "finding": finding, "metric": metric, "tier": "descriptive", "value": v, "lo": lo,
                     "hi": hi, "n_patients": shown})

    for metric in PER_FINDING:
        for j, finding in enumerate(data.names):
            need = {"tpr": counts["pos"][j] >= min_cases, "fpr": counts["neg"][j] >= min_cases}.get(metric, enough[j])
            v = float(own[metric][0, j])
            if not need or np.isnan(v):
                add(finding, metric, np.nan, np.nan, np.nan)
                continue
            if metric in RATES:
                trials = counts["pos"][j] if metric == "tpr" else counts["neg"][j]
                lo, hi = _wilson(v, trials / _design_effect(_sd(samples[metric][:, j]), v, trials), z)
            else:
                floor = _hanley_mcneil(v, counts["pos"][j], counts["neg"][j]) if metric == "auroc" else 0.0
                se = _se(samples[metric][:, j], floor)
                lo, hi = max(v - z * se, 0.0), min(v + z * se, 1.0)
            add(finding, metric, v, lo, hi)
    for metric in ("underdiagnosis", "missed_pathology"):
        v, trials = float(own[metric][0]), counts[metric]
        if trials < min_cases or np.isnan(v):
            add("any", metric, np.nan, np.nan, np.nan)
            continue
        lo, hi = _wilson(v, trials / _design_effect(_sd(samples[metric]), v, trials), z)
        add("any", metric, v, lo, hi)
    v = float(_macro(own["auroc"], enough)[0])
    se = _se(_macro(samples["auroc"], enough), 0.0)
    add("macro", "auroc_macro", v, *((max(v - z * se, 0.0), min(v + z * se, 1.0)) if enough.any() else (np.nan,) * 2))
    return rows


def _design_effect(sd: float, rate: float, trials: float) -> float:
    """The bootstrap variance over the binomial one (at least 1): patients with several units count less."""
    binomial = rate * (1 - rate) / trials if trials > 0 else 0.0
    return max(1.0, sd * sd / binomial) if binomial > 0 and not np.isnan(sd) else 1.0


def _gap_rows(attribute, group, reference, key, ref_key, point, boot, whole, counts, min_cases, names) -> list[dict]:
    """The group minus its reference for every metric, with the SE each test and interval will use."""
    exploratory = attribute not in PRIMARY_ATTRIBUTES
    (mine, ref), (cg, cr) = (point[key], point[ref_key]), counts
    base = {"attribute": attribute, "group": group, "reference": reference}
    rows = []

    def add(finding, metric, gap, samples, floor, tier):
        rows.append({**base, "finding": finding, "metric": metric, "tier": tier, "gap": gap,
                     "se": _se(samples, floor) if not np.isnan(gap) else np.nan})

    both = lambda c: (c["pos"] >= min_cases) & (c["neg"] >= min_cases)  # noqa: E731
    members = both(cg) & both(cr)
    for metric in PER_FINDING:
        tier = "exploratory" if metric in TESTED_PER_FINDING else "descriptive"
        for j, finding in enumerate(names):
            need = {"tpr": min(cg["pos"][j], cr["pos"][j]) >= min_cases,
                    "fpr": min(cg["neg"][j], cr["neg"][j]) >= min_cases}.get(metric, members[j])
            gap = float(mine[metric][0, j] - ref[metric][0, j]) if need else np.nan
            floor = _null_se(metric, float(whole[metric][0, j]), (cg["pos"][j], cg["neg"][j]),
                             (cr["pos"][j], cr["neg"][j]))
            add(finding, metric, gap, boot[key][metric][:, j] - boot[ref_key][metric][:, j], floor, tier)
    for metric in ("underdiagnosis", "missed_pathology"):
        need = min(cg[metric], cr[metric]) >= min_cases
        gap = float(mine[metric][0] - ref[metric][0]) if need else np.nan
        floor = _null_se("rate", float(whole[metric][0]), cg[metric], cr[metric])
        tier = "primary" if metric == "underdiagnosis" and not exploratory else "exploratory"
        add("any", metric, gap, boot[key][metric] - boot[ref_key][metric], floor, tier)
    gap = float(_macro(mine["auroc"], members)[0] - _macro(ref["auroc"], members)[0]) if members.any() else np.nan
    floor = float(np.sqrt(sum(_null_se("auroc", float(whole["auroc"][0, j]), (cg["pos"][j], cg["neg"][j]),
                                       (cr["pos"][j], cr["neg"][j])) ** 2 for j in np.flatnonzero(members))))
    floor /= max(int(members.sum()), 1)
    add("macro", "auroc_macro", gap, _macro(boot[key]["auroc"], members) - _macro(boot[ref_key]["auroc"], members),
        floor, "exploratory" if exploratory else "primary")
    return rows


def _null_se(metric: str, pooled: float, group, rest) -> float:
    """The gap's SE if both sides shared the whole test set's value: two proportions, or Hanley-McNeil."""
    if np.isnan(pooled):
        return 0.0
    if metric in ("tpr", "fpr", "rate"):
        n_g, n_r = (group, rest) if metric == "rate" else (group[0], rest[0]) if metric == "tpr" else (group[1], rest[1])
        return float(np.sqrt(pooled * (1 - pooled) * (1 / n_g + 1 / n_r))) if min(n_g, n_r) > 0 else 0.0
    if metric == "auroc" and min(*group, *rest) > 0:
        return float(np.hypot(_hanley_mcneil(pooled, *group), _hanley_mcneil(pooled, *rest)))
    return 0.0


def _decide(table: pd.DataFrame, alpha: float, ci_level: float) -> pd.DataFrame:
    """p-values, the audit-wide adjustment and the intervals that match each decision rule."""
    table = table.copy()
    se = table.pop("se") if "se" in table else pd.Series(np.nan, index=table.index)
    gap, se = table["gap"].to_numpy(float), se.to_numpy(float)
    tested = table["tier"].isin(["primary", "exploratory"]).to_numpy() & ~np.isnan(gap) & (se > 0)
    z = np.divide(gap, se, out=np.full(len(gap), np.nan), where=tested)
    table["p_value"] = [p_from_z(v) if t else np.nan for v, t in zip(z, tested)]
    degenerate = table["tier"].isin(["primary", "exploratory"]).to_numpy() & ~np.isnan(gap) & (se == 0)
    table.loc[degenerate, "p_value"] = np.where(gap[degenerate] == 0, 1.0, 0.0)
    primary = (table["tier"] == "primary").to_numpy() & table["p_value"].notna().to_numpy()
    exploratory = (table["tier"] == "exploratory").to_numpy() & table["p_value"].notna().to_numpy()
    m = int(primary.sum())
    table.loc[primary, "p_adjusted"] = bonferroni(table.loc[primary, "p_value"].to_numpy(float))
    table.loc[primary, "adjustment"] = f"Bonferroni over the audit's {m} primary tests"
    table.loc[exploratory, "p_adjusted"] = benjamini_hochberg(table.loc[exploratory, "p_value"].to_numpy(float))
    table.loc[exploratory, "adjustment"] = f"Benjamini-Hochberg q over {int(exploratory.sum())} exploratory tests"
    z_sim = normal_quantile(1 - alpha / max(m, 1))
    z_one = normal_quantile(ci_level)
    width = np.where((table["tier"] == "primary").to_numpy(), z_sim, z_one) * np.nan_to_num(se)
    has_gap = ~np.isnan(gap)
    table.loc[has_gap, "gap_lo"] = np.maximum(gap - width, -1.0)[has_gap]
    table.loc[has_gap, "gap_hi"] = np.minimum(gap + width, 1.0)[has_gap]
    table.loc[has_gap, "ci"] = np.where((table["tier"] == "primary").to_numpy(),
                                        f"simultaneous {1 - alpha:.0%} (Bonferroni, m={m})",
                                        f"per comparison {ci_level:.0%}")[has_gap]
    table["significant"] = pd.array([bool(p < alpha) if ok else pd.NA for p, ok in
                                     zip(table["p_adjusted"].to_numpy(float), primary)], dtype="boolean")
    return table
