"""Tables as a person reads them: parameters shown once as a small table (with what a value means on this
machine), and any report table with its floats rounded, p-values never printed as 0.000 and blanks for
missing values. Light (pandas only): every notebook's first cell shows its parameters through it.
"""
from __future__ import annotations

import pandas as pd

from ..stats.multiplicity import format_p

TRAINING_RECIPE = ["device", "gpus", "arch", "head", "weights", "freeze", "train_from", "train_fraction",
                   "backbone_lr", "image_size", "dropout", "epochs",
                   "batch_size", "lr",
                   "optimizer", "weight_decay", "schedule", "warmup_epochs", "grad_clip", "pos_weight", "loss", "augment",
                   "select_on", "select_metric", "patience", "amp", "channels_last", "cpu_amp", "compile", "seed",
                   "checkpoint_minutes", "resume"]
GPU_ONLY = ("amp", "channels_last")


def shown_value(p, name: str) -> str:
    """A parameter as a person reads it: 1e-03 not 0.0010, what null means, GPU-only settings on a CPU."""
    value = getattr(p, name)
    if name in GPU_ONLY and p.device == "cpu" and getattr(p, "cpu_amp", False):
        shown = "bf16" if name == "amp" and value != "off" else value
        return f"{shown} (on this CPU run too: cpu_amp)" if value not in ("off", False) else str(value)
    if name in GPU_ONLY and p.device == "cpu":
        return f"{value} (GPU only; off on this CPU run)" if value not in ("off", False) else str(value)
    if name in ("mean", "std") and value is None:
        return "from the cache's training images"
    if isinstance(value, float):
        return f"{value:.0e}" if value and abs(value) < 1e-2 else f"{value:g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value) if value != "" else "(none)"


P_COLUMNS = ("p_value", "p_adjusted", "p_holm", "q_value", "delong_p", "delong_p_holm")


def table(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A table for a report: floats to `digits` decimals, p-values as '< 0.001' below that (never 0.000), the
    learning rate to 3 significant digits, missing values blank (not <NA> or NaN)."""
    out = frame.copy()
    for column in out.columns:
        if column in P_COLUMNS:
            out[column] = ["" if pd.isna(v) else format_p(v) for v in out[column]]
        elif column == "lr":
            out[column] = ["" if pd.isna(v) else f"{v:.3g}" for v in out[column]]
        elif pd.api.types.is_float_dtype(out[column]):
            out[column] = [("" if pd.isna(v) else f"{v:.{digits}f}") for v in out[column]]
        elif out[column].isna().any():   # nullable integers (counts) print <NA>
            out[column] = ["" if pd.isna(v) else str(v) for v in out[column]]
    return out


def params_table(p, names) -> pd.DataFrame:
    """Parameters as a small two-column table (the reports show parameters once, this way)."""
    return pd.DataFrame({"value": [shown_value(p, n) for n in names]}, index=pd.Index(list(names), name="parameter"))


def config_table(params) -> pd.DataFrame:
    """The parameters that shape training, as a one-column table."""
    return params_table(params, TRAINING_RECIPE)
