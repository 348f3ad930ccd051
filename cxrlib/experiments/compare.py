"""Several runs at once (a sweep, or RUNS=a,b,c): headline table, seeds pooled, each run against a baseline.

    make compare RUNS=seed-ablation           (a sweep folder: its members, and its ensemble if built)
    make compare RUNS=a,b,c BASELINE=a        (run names under runs/)

- `headline_table`: one row per run: what it changed, its seed, the test headline figures with CIs,
  validation AUROC macro, best epoch.
- `pooled_seeds`: runs that differ only by seed pooled into one row per setting: mean and SD
  (n - 1 in the denominator) across seeds of each headline figure, and the number of seeds.
- `against_baseline`: each run minus the baseline on the shared test units, patient-paired bootstrap
  (compare.compare_runs): difference, CI and p for AUROC and AUPRC macro, and the clustered DeLong p
  for AUROC macro, each with Holm's adjustment across the runs compared, per metric.
The baseline is the grid's `baseline:`, else the first run. Notebook 06 renders all three.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import runfiles
from ..errors import UserError
from ..fsutil import atomic_write_json, jsonable
from ..params import STAGES, validate
from ..runfiles import COMPARE_NOTEBOOK, HISTORY, METRICS, PARAMS, is_ensemble
from ..stats.multiplicity import holm
from .runs import execute, project_root
from .sweep import read_frozen_grid

FIGURES = ("auroc_macro", "auprc_macro", "auroc_micro", "auprc_micro")
HEADLINE_KEY = {"auroc_macro": "AUROC macro", "auprc_macro": "AUPRC macro", "auroc_micro": "AUROC micro",
                "auprc_micro": "AUPRC micro"}   # metrics.json's headline names
IGNORED = ("name", "runs_dir", "seed", "compare_with") + STAGES["runtime"]


def resolve_runs(spec: str, runs_dir="runs") -> tuple[list[Path], str]:
    """(run folders, baseline name) from 'a,b,c' or one sweep's name."""
    runs_dir = Path(runs_dir)
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise UserError("name the runs: make compare RUNS=a,b,c, or RUNS=<sweep name>")
    if len(names) == 1 and (runs_dir / names[0] / "sweep.yaml").is_file():

        sweep_dir = runs_dir / names[0]
        grid = read_frozen_grid(sweep_dir)
        members = sorted((d for d in sweep_dir.iterdir() if (d / METRICS).is_file()),
                         key=lambda d: (d.name == "ensemble", d.name))
        if not members:
            raise UserError(f"{sweep_dir}: no member has metrics.json yet; run the sweep first (make sweep GRID=...)")
        return members, grid.get("baseline") or members[0].name
    folders = [runs_dir / n for n in names]
    missing = [f.name for f in folders if not (f / METRICS).is_file()]
    if missing:
        known = sorted(f.name for f in runfiles.run_folders(runs_dir, members=False) if (f / METRICS).is_file())
        raise UserError(f"run(s) {missing} have no metrics.json under {runs_dir}/ (evaluate them first); "
                        f"evaluated runs: {', '.join(known) or 'none'}")
    return folders, names[0]


def not_evaluated(spec: str, runs_dir="runs") -> list[str]:
    """A sweep's members that have parameters but no metrics.json yet: left out of the comparison, and named."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    sweep_dir = Path(runs_dir) / names[0] if len(names) == 1 else None
    if sweep_dir is None or not (sweep_dir / "sweep.yaml").is_file():
        return []
    return sorted(d.name for d in sweep_dir.iterdir() if (d / PARAMS).is_file() and not (d / METRICS).is_file())


def settings(folders: list[Path]) -> dict[str, dict]:
    """{run: the parameters it sets differently from the others}, seed and runtime fields left out."""
    frozen = {f.name: runfiles.frozen_if_any(f) for f in folders}
    keys = sorted({k for values in frozen.values() for k in values if k not in IGNORED})
    varying = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in frozen.values()}) > 1]
    return {name: {k: values.get(k) for k in varying} for name, values in frozen.items()}


def setting_label(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "(same settings)"


def headline_table(folders: list[Path]) -> pd.DataFrame:
    rows = []
    changed = settings(folders)
    for folder in folders:
        report = json.loads((folder / METRICS).read_text())
        ensemble = is_ensemble(folder)   # its parameters are its best member's
        row = {"run": folder.name, "setting": "ensemble of the members" if ensemble else setting_label(changed[folder.name]),
               "seed": report["params"]["seed"], "ensemble": ensemble,
               "val_auroc_macro": report["splits"].get("validate", {}).get("macro", {}).get("auroc", {}).get("value"),
               "best_epoch": report["selection"].get("best_epoch"),
               "selected_on": "TEST (optimistic)" if report.get("test_selected") else report["selection"].get("select_on"),
               "macro_findings": len(report.get("macro", {}).get("findings", [])) or None}
        for key in FIGURES:
            figure = report["headline"][HEADLINE_KEY[key]]
            row.update({key: figure["value"], f"{key}_lo": figure["lo"], f"{key}_hi": figure["hi"]})
        rows.append(row)
    return pd.DataFrame(rows)


VALIDATION_NOTE = ("val_auroc_macro is notebook 03's figure for the selected model: the validation split at the run's "
                   "eval_level, over its estimable findings; make runs' 'best val' is training's per-epoch figure on "
                   "validation images, over every finding with a positive, so the two differ")


def selection_statement(table: pd.DataFrame) -> str:
    """How the compared runs chose their models, read from each run's metrics.json (never assumed)."""
    on_test = table.loc[table["selected_on"].str.startswith("TEST"), "run"].tolist()
    if not on_test:
        return (f"All {len(table)} runs chose their model on their validation split: the test figures below chose "
                "nothing, and neither does this comparison.")
    return (f"WARNING: {len(on_test)} of {len(table)} runs chose their model on the TEST split ({', '.join(on_test)}): "
            "their test figures are optimistic, and a comparison with them is not a held-out comparison.")


def pooled_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (ensembles apart): mean and SD across its seeds of every headline figure."""
    members = table[~table["ensemble"]]
    rows = []
    for setting, part in members.groupby("setting", sort=False):
        row = {"setting": setting, "seeds": int(part["seed"].nunique()), "runs": ", ".join(part["run"])}
        for key in FIGURES + ("val_auroc_macro",):
            values = part[key].astype(float).to_numpy()
            row[f"{key}_mean"] = float(np.mean(values))
            row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def against_baseline(folders: list[Path], baseline: str, p=None) -> pd.DataFrame:
    """Each run minus the baseline, paired on patients; Holm across the runs, per metric."""
    from ..evaluation.paired import compare_runs  # lazy: keeps scipy, sklearn out of this module's import

    by_name = {f.name: f for f in folders}
    if baseline not in by_name:
        raise UserError(f"baseline {baseline!r} is not among the runs compared: {', '.join(by_name)}")
    base = by_name[baseline]
    p = p or runfiles.load_frozen(base)
    rows = []
    for folder in folders:
        if folder.name == baseline:
            continue
        table = compare_runs(folder, base, p)
        a = table.attrs
        for metric in ("auroc", "auprc"):
            entry = table[(table["finding"] == "macro") & (table["metric"] == metric)].iloc[0]
            rows.append({"run": folder.name, "baseline": baseline, "metric": f"{metric}_macro",
                         "units": f"{a['shared_images']} shared ({a['this_images']} / {a['other_images']})"
                                  if not a["identical"] else f"{a['shared_images']} (identical)",
                         "run_value": float(entry["this_run"]), "baseline_value": float(entry["other_run"]),
                         "diff": float(entry["diff"]), "lo": float(entry["lo"]), "hi": float(entry["hi"]),
                         "p_value": float(entry["p_value"]), "n_boot_valid": int(entry["n_boot_valid"]),
                         "delong_p": float(entry["delong_p"]) if pd.notna(entry["delong_p"]) else float("nan")})
    out = pd.DataFrame(rows, columns=["run", "baseline", "metric", "units", "run_value", "baseline_value", "diff", "lo",
                                      "hi", "p_value", "n_boot_valid", "p_holm", "delong_p", "delong_p_holm"])
    for metric, part in out.groupby("metric"):
        out.loc[part.index, "p_holm"] = holm(part["p_value"].to_numpy(float))
        out.loc[part.index, "delong_p_holm"] = holm(part["delong_p"].to_numpy(float))
    return out


def plot_members(table: pd.DataFrame, key: str = "auroc_macro"):
    """Forest plot: every run's test figure with its CI, grouped by setting, seeds side by side."""
    from matplotlib.figure import Figure

    ordered = table.sort_values(["ensemble", "setting", "seed"], kind="stable").reset_index(drop=True)
    fig = Figure(figsize=(7, 0.3 * len(ordered) + 1.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(ordered))[::-1]
    settings_seen = list(dict.fromkeys(ordered["setting"]))
    colors = [f"C{settings_seen.index(s) % 10}" for s in ordered["setting"]]
    ax.hlines(y, ordered[f"{key}_lo"], ordered[f"{key}_hi"], colors=colors, lw=1.2)
    ax.scatter(ordered[key], y, c=colors, s=18, zorder=3)
    ax.set_yticks(y, [f"{r} (seed {s})" for r, s in zip(ordered["run"], ordered["seed"])], fontsize=7)
    ax.set_xlabel(f"test {key.replace('_', ' ').upper()} with its patient-bootstrap CI")
    ax.grid(axis="x", lw=0.3)
    return fig


def plot_curves(folders: list[Path], column: str = "val_auroc_macro"):
    """Training curves overlaid: history.csv's `column` per epoch, one line per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, folder in enumerate(f for f in folders if (f / HISTORY).is_file()):
        history = pd.read_csv(folder / HISTORY)
        for ax, name in zip(axes, ("train_loss", column)):
            if name in history:
                ax.plot(history["epoch"], history[name], lw=1, color=f"C{i % 10}", label=folder.name)
    for ax, name in zip(axes, ("train_loss", column)):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(lw=0.3)
    axes[1].legend(fontsize=6)
    return fig


def compare_group(spec: str, runs_dir="runs", baseline: str = "", out_dir=None, overrides=None) -> dict:
    """The three tables for the runs of `spec`; written to <out_dir>/comparison.json (runfiles.COMPARISON).
    The paired bootstrap uses the baseline's evaluation parameters, with `overrides` (bootstrap, seed, ...)."""

    folders, default_baseline = resolve_runs(spec, runs_dir)
    baseline = baseline or default_baseline
    if baseline not in {f.name for f in folders}:
        raise UserError(f"baseline {baseline!r} is not among the runs compared: {', '.join(f.name for f in folders)}")
    base = runfiles.load_frozen(next(f for f in folders if f.name == baseline))
    p = validate({**base.to_dict(), **(overrides or {})}, f"the baseline {baseline}'s parameters")
    table = headline_table(folders)
    result = {"runs": [f.name for f in folders], "not_evaluated": not_evaluated(spec, runs_dir),
              "baseline": baseline, "headline": table,
              "pooled": pooled_seeds(table), "against_baseline": against_baseline(folders, baseline, p)}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / runfiles.COMPARISON,
                          jsonable({k: v.to_dict("records") if isinstance(v, pd.DataFrame) else v
                                     for k, v in result.items()}))
    return {**result, "folders": folders}


def output_folder(spec: str, runs_dir="runs", prefix: str = "compare") -> Path:
    """Where make compare writes: the sweep's own folder, or runs/<prefix>-a+b+c for a list of runs."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if len(names) == 1 and (Path(runs_dir) / names[0] / "sweep.yaml").is_file():
        return Path(runs_dir) / names[0]
    return Path(runs_dir) / (f"{prefix}-" + "+".join(names))


def print_tables(result: dict) -> None:
    if result.get("not_evaluated"):
        print(f"left out, not evaluated yet (no metrics.json): {', '.join(result['not_evaluated'])}")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(selection_statement(result["headline"]))
        print(VALIDATION_NOTE)
        print(result["headline"][["run", "setting", "seed", "auroc_macro", "auroc_macro_lo", "auroc_macro_hi",
                                  "auprc_macro", "val_auroc_macro", "selected_on"]].to_string(index=False))
        pooled = result["pooled"]
        if len(pooled):
            print("\nacross seeds (mean, SD):")
            print(pooled[["setting", "seeds", "auroc_macro_mean", "auroc_macro_sd", "auprc_macro_mean",
                          "auprc_macro_sd"]].to_string(index=False))
        if len(result["against_baseline"]):
            print(f"\nagainst {result['baseline']} (paired patient bootstrap; Holm across runs):")
            print(result["against_baseline"][["run", "metric", "units", "diff", "lo", "hi", "p_value", "p_holm",
                                              "delong_p"]].to_string(index=False))


def cli(command: str, argv: list[str]) -> int:
    import argparse


    ap = argparse.ArgumentParser(prog="python -m cxrlib compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="a sweep's name, or run names separated by commas")
    ap.add_argument("--baseline", default="", help="the run the others are compared with (default: the grid's, "
                                                   "else the first)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--no-notebook", action="store_true", help="print the tables; do not render notebook 06")
    ap.add_argument("--compare-on", choices=["identical", "shared"], default="identical",
                    help="shared: compare runs with different test sets on the units they share (counts on every line)")
    args = ap.parse_args(argv)
    out_dir = output_folder(args.runs, args.runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = compare_group(args.runs, args.runs_dir, args.baseline, out_dir=out_dir,
                           overrides={"compare_on": args.compare_on})
    print_tables(result)
    if not args.no_notebook:
        base = runfiles.load_frozen(next(f for f in result["folders"] if f.name == result["baseline"]))
        root = project_root()
        execute(COMPARE_NOTEBOOK, base, root, (root / out_dir) if not out_dir.is_absolute() else out_dir, progress=False,
                extra={"runs": args.runs, "runs_root": str(Path(args.runs_dir).resolve()),
                       "baseline": args.baseline, "compare_on": args.compare_on})
    return 0
