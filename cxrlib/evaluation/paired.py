"""Two runs on the same test images: paired differences on shared patient resamples (notebook 03's compare_with),
and DeLong's test clustered by patient beside them for AUROC (per finding, macro), Holm-adjusted across findings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..runfiles import check_same_labels, prob_columns, read_predictions
from ..stats import levels, paired_bootstrap
from ..stats.delong import delong_macro, delong_test
from ..stats.multiplicity import format_p, holm


def compare_runs(run_dir, other_run_dir, p) -> pd.DataFrame:
    """This run minus the other on the test images both predicted, scored on the same patient resamples.

    Rows: per finding then macro and micro, metrics AUROC and AUPRC (and pooled ECE, Brier);
    columns this_run, other_run, diff (= this - other), lo, hi, p_value (bootstrap), p_holm (across findings);
    for AUROC also delong_se, delong_p and delong_p_holm (with_delong). Refuses when the runs share
    no test image or label those they share differently (other policies or label source), and, unless
    p.compare_on is "shared", when their test units differ at all: a difference on the units two runs
    happen to share is not the difference of their reported figures. The table's attrs say how many
    units it compares and how many each run has.
    """
    run_dir, other_run_dir = Path(run_dir), Path(other_run_dir)
    ours, theirs = read_predictions(run_dir), read_predictions(other_run_dir)
    names = check_same_labels(ours, theirs, run_dir.name, other_run_dir.name, "A paired comparison")
    # At study level both runs' images are aggregated the same way, and the studies are paired.
    ours, theirs = (levels.rows_at(frame[frame["split"] == "test"], p.eval_level, p.study_aggregate)
                    for frame in (ours, theirs))
    key = "study_id" if p.eval_level == "study" else "dicom_id"
    shared = ours.merge(theirs, on=key, suffixes=("", "_other"))
    units = levels.plural(p.eval_level)
    if shared.empty:
        raise UserError(f"{run_dir.name} and {other_run_dir.name} share no test {p.eval_level} (joined on {key}); "
                        "compare runs built on the same cohort and test split (compare_with)")
    if p.compare_on == "identical" and not (len(shared) == len(ours) == len(theirs)):
        raise UserError(f"{run_dir.name} has {len(ours)} test {units} and {other_run_dir.name} {len(theirs)}; they share "
                        f"{len(shared)}. A paired comparison needs the same test set (same views, cohort rules and "
                        "split); to compare on the shared ones only, and say so on every line, set compare_on: shared "
                        "(make evaluate ... COMPARE_ON=shared, or make compare ... COMPARE_ON=shared)")
    a_labels = shared[names].to_numpy(dtype=np.float64)
    b_labels = shared[[f"{f}_other" for f in names]].to_numpy(dtype=np.float64)
    same = (a_labels == b_labels) | (np.isnan(a_labels) & np.isnan(b_labels))
    if not same.all():
        bad = [f for j, f in enumerate(names) if not same[:, j].all()]
        raise UserError(f"{run_dir.name} and {other_run_dir.name} label the shared test images differently for "
                        f"{bad[:4]} (another label_source or uncertain/blank policy); paired differences need the "
                        "same labels: compare runs with the same label settings (compare_with)")
    p_this = shared[prob_columns(names)].to_numpy(dtype=np.float64)
    p_other = shared[[f"{c}_other" for c in prob_columns(names)]].to_numpy(dtype=np.float64)
    # paired_bootstrap.paired_bootstrap reports b - a: a is the other run, b this one.
    result = paired_bootstrap.paired_bootstrap(a_labels, p_other, p_this, shared["subject_id"].to_numpy(dtype=str),
                                      n_boot=p.bootstrap, seed=p.seed, ci_level=p.ci_level,
                                      min_positives=p.min_positives, findings=names)
    rows = []

    def add(name, metric, e):
        rows.append({"finding": name, "metric": metric, "this_run": e["b"], "other_run": e["a"], "diff": e["diff"],
                     "lo": e["lo"], "hi": e["hi"], "p_value": e["p_value"], "n_boot_valid": e["n_boot_valid"]})

    for name, entry in result["per_finding"].items():
        for m in ("auroc", "auprc"):
            add(name, m, entry[m])
    for avg in ("macro", "micro"):
        for m in ("auroc", "auprc"):
            add(avg, m, result[avg][m])
    for m in ("ece", "brier"):
        add("pooled", m, result["calibration"][m])
    table = pd.DataFrame(rows)
    estimable = np.array([f in result["macro_findings"] for f in names])
    table = with_delong(table, a_labels, p_this, p_other, shared["subject_id"].to_numpy(dtype=str), estimable, names)
    table = table.astype({c: "Float64" for c in ("this_run", "other_run", "diff", "lo", "hi", "p_value", "delong_se",
                                                 "delong_p", "p_holm", "delong_p_holm")})
    table.attrs.update(this=run_dir.name, other=other_run_dir.name, shared_images=int(len(shared)),
                       this_images=int(len(ours)), other_images=int(len(theirs)),
                       patients=int(shared["subject_id"].nunique()), ci_level=p.ci_level, n_boot=p.bootstrap,
                       level=p.eval_level, macro_findings=result["macro_findings"],
                       min_positives=p.min_positives, compare_on=p.compare_on,
                       identical=bool(len(shared) == len(ours) == len(theirs)))
    return table


def with_delong(table: pd.DataFrame, y, p_this, p_other, patients, estimable, names) -> pd.DataFrame:
    """DeLong's test (clustered by patient) beside the bootstrap for each finding's AUROC and the macro one,
    and Holm's adjustment across the findings of both tests' p-values (per metric for the bootstrap).

    estimable: per finding, whether it has min_positives positive and negative units; the others get no
    test (as in the bootstrap) and stay out of the macro, so both tests compare the same macro.
    """
    table = table.assign(delong_se=np.nan, delong_p=np.nan, p_holm=np.nan, delong_p_holm=np.nan)
    for j, name in enumerate(names):
        if not estimable[j]:
            continue
        row = (table["finding"] == name) & (table["metric"] == "auroc")
        result = delong_test(y[:, j], p_this[:, j], p_other[:, j], clusters=patients)
        table.loc[row, ["delong_se", "delong_p"]] = [result["se"], result["p"]]
    macro = delong_macro(y, p_this, p_other, clusters=patients, findings=names, include=estimable)
    table.loc[(table["finding"] == "macro") & (table["metric"] == "auroc"), ["delong_se", "delong_p"]] = \
        [macro["se"], macro["p"]]
    table.attrs["delong_macro_findings"] = macro["included"]
    per_finding = table["finding"].isin(names)
    for metric in ("auroc", "auprc"):
        rows = per_finding & (table["metric"] == metric)
        table.loc[rows, "p_holm"] = holm(table.loc[rows, "p_value"].to_numpy(float))
    rows = per_finding & (table["metric"] == "auroc")
    table.loc[rows, "delong_p_holm"] = holm(table.loc[rows, "delong_p"].to_numpy(float))
    return table


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """compare_runs' table for a report: figures to 3 decimals, p-values as '< 0.001', n/a for undefined."""
    out = table.copy()
    for column in ("this_run", "other_run", "diff", "lo", "hi"):
        out[column] = [("n/a" if pd.isna(v) else f"{v:.3f}") for v in table[column]]
    for column in ("p_value", "p_holm", "delong_p", "delong_p_holm"):
        out[column] = ["" if pd.isna(v) else format_p(v) for v in table[column]]
    out["delong_se"] = ["" if pd.isna(v) else f"{v:.4f}" for v in table["delong_se"]]
    return out


def plot_differences(table: pd.DataFrame):
    """Forest plot of the paired differences (this - other) with their CIs, AUROC and AUPRC side by side."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(table.loc[table["metric"].isin(["auroc", "auprc"]), "finding"]))
    fig = Figure(figsize=(10, 0.3 * len(names) + 1.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ypos = np.arange(len(names))[::-1]
    for ax, m in zip(axes, ("auroc", "auprc")):
        rows = table[table["metric"] == m].set_index("finding").reindex(names)
        diff = rows["diff"].to_numpy(dtype=float, na_value=np.nan)
        err = np.abs(np.vstack([diff - rows["lo"].to_numpy(dtype=float, na_value=np.nan),
                                rows["hi"].to_numpy(dtype=float, na_value=np.nan) - diff]))
        ax.errorbar(diff, ypos, xerr=np.nan_to_num(err), fmt="o", ms=4, color="#c44e52", capsize=2)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_xlabel(f"{m.upper()} difference ({table.attrs.get('this', 'this')} - {table.attrs.get('other', 'other')})",
                      fontsize=8)
        ax.grid(axis="x", lw=0.3)
    axes[0].set_yticks(ypos, names, fontsize=8)
    return fig
