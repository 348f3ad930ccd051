"""Data-efficiency curves: test macro AUROC (or AUPRC) against the number of labelled training patients, one line
per encoder, from runs that differ in `train_fraction`, seed and encoder (params/grids/data-efficiency.yaml).

    make efficiency                  the demo grid, then this
    python -m cxrlib efficiency --runs data-efficiency [--metric auprc_macro]
    python -m cxrlib efficiency --runs a,b,c

Every figure is read from the runs' metrics.json: its value, its patient-bootstrap interval on the test split
(conditional on that run's trained head: the test patients resampled, the training not) and its unit (image or
study, the runs' eval_level). Each seed is drawn as a point with its interval; the line joins the seeds' mean at
each share of patients. A zero-shot run (train_from: zero_shot) labels no patient: it is drawn as a dashed
horizontal line at its value, with its interval shaded. Writes efficiency.csv and efficiency.png into the sweep's
folder (or runs/efficiency-a+b+c/).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..fsutil import atomic_path, atomic_write_csv
from ..runfiles import METRICS
from .compare import HEADLINE_KEY, output_folder, resolve_runs

METRICS_SHOWN = {"auroc_macro": "macro AUROC", "auprc_macro": "macro AUPRC (mAP)"}


def encoder_name(params: dict) -> str:
    weights = Path(str(params["weights"])).name
    return f"{params['arch']} {weights}"


def curve_table(folders: list[Path], metric: str = "auroc_macro") -> pd.DataFrame:
    """One row per run: encoder, how it learnt, its labelled patients and images, seed, the figure and interval."""
    rows = []
    for folder in folders:
        report = json.loads((Path(folder) / METRICS).read_text())
        params, model = report["params"], report.get("model") or {}
        figure = report["headline"][HEADLINE_KEY[metric]]
        rows.append({"run": Path(folder).name, "encoder": encoder_name(params),
                     "train_from": params.get("train_from", "images"), "train_fraction": params.get("train_fraction", 1.0),
                     "labelled_patients": 0 if params.get("train_from") == "zero_shot" else model.get("train_patients"),
                     "labelled_images": 0 if params.get("train_from") == "zero_shot" else model.get("train_images"),
                     "seed": params["seed"], "metric": metric, "value": figure["value"], "lo": figure["lo"],
                     "hi": figure["hi"], "ci_level": (report.get("ci") or {}).get("level", 0.95),
                     "level": (report.get("level") or {}).get("headline", params.get("eval_level")),
                     "contaminated": bool(report.get("contaminated"))})
    table = pd.DataFrame(rows)
    if table.empty:
        raise UserError("no runs to draw a curve from")
    return table.sort_values(["encoder", "train_from", "labelled_patients", "seed"]).reset_index(drop=True)


def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """Per encoder, way of learning and share of patients: the seeds' mean figure, their spread and how many."""
    grouped = table.groupby(["encoder", "train_from", "train_fraction"], sort=True)
    return grouped.agg(labelled_patients=("labelled_patients", "median"), seeds=("seed", "nunique"),
                       mean=("value", "mean"), seed_sd=("value", "std")).reset_index()


def plot(table: pd.DataFrame):
    import matplotlib  # lazy: matplotlib, for the figure only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = table["metric"].iat[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trained = table[table["train_from"] != "zero_shot"]
    means = seed_means(trained)
    colours = {}
    for encoder, rows in trained.groupby("encoder", sort=True):
        line = means[means["encoder"] == encoder].sort_values("labelled_patients")
        drawn = ax.plot(line["labelled_patients"], line["mean"], marker="o", label=f"{encoder} (probe, mean of seeds)")
        colours[encoder] = drawn[0].get_color()
        ax.errorbar(rows["labelled_patients"], rows["value"], yerr=[rows["value"] - rows["lo"], rows["hi"] - rows["value"]],
                    fmt=".", color=colours[encoder], alpha=0.5, capsize=2)
    for _, row in table[table["train_from"] == "zero_shot"].groupby("encoder").first().reset_index().iterrows():
        ax.axhline(row["value"], linestyle="--", color=colours.get(row["encoder"]), label=f"{row['encoder']} zero-shot")
        ax.axhspan(row["lo"], row["hi"], alpha=0.1, color=colours.get(row["encoder"]))
    ax.set_xscale("log")
    level = table["level"].iat[0]
    ax.set_xlabel("labelled training patients (log scale)")
    ax.set_ylabel(f"test {METRICS_SHOWN.get(metric, metric)}, per {level}")
    ax.set_title(f"Data efficiency: bars are each run's {table['ci_level'].iat[0]:.0%} patient-bootstrap CI on the "
                 "test split", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def efficiency(spec: str, runs_dir="runs", metric: str = "auroc_macro") -> dict:
    folders, _ = resolve_runs(spec, runs_dir)
    folders = [f for f in folders if f.name != "ensemble"]
    table = curve_table(folders, metric)
    out = output_folder(spec, runs_dir, prefix="efficiency")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "efficiency.csv", table, index=False)
    figure = plot(table)
    with atomic_path(out / "efficiency.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return {"table": table, "means": seed_means(table), "folder": out}


def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m cxrlib {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a sweep's name, or run names a,b,c")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--metric", choices=list(METRICS_SHOWN), default="auroc_macro")
    args = parser.parse_args(argv)
    result = efficiency(args.runs, args.runs_dir, args.metric)
    shown = result["table"][["encoder", "train_from", "train_fraction", "labelled_patients", "seed", "value", "lo", "hi",
                             "level"]]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if result["table"]["contaminated"].any():
        print("WARNING: some runs' starting weights may have seen their test patients (contaminated: see each run)")
    print(f"wrote {result['folder'] / 'efficiency.csv'} and {result['folder'] / 'efficiency.png'}")
    return 0
