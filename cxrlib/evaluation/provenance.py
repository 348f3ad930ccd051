"""Where a run's figures come from: fingerprints of the data files (no private paths) and the software versions."""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..data.cache import cache_path
from ..fsutil import sha256_file
from ..runfiles import COHORT, PREDICTIONS


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def fingerprint(run_dir, p, predictions: pd.DataFrame, model: dict) -> dict:
    """What data the figures come from: enough to tell two runs' test sets apart, no private paths."""
    run_dir = Path(run_dir)
    manifest, folder = {}, None
    if model.get("image_size") and model.get("resize"):   # an ensemble of members with other caches: none
        folder = cache_path(p.resolved_cache_dir(), model["image_size"], model["resize"],
                                      model.get("decode", "fast"))
    if folder is not None and (folder / "manifest.json").is_file():
        manifest = json.loads((folder / "manifest.json").read_text())
    return {
        "data_root_name": Path(p.data_root).resolve().name,
        "cohort_sha256": _sha256(run_dir / COHORT),
        "cache_index_sha256": _sha256(folder / "index.csv") if folder is not None else None,
        "cache": {k: manifest.get(k) for k in ("cache_version", "size", "resize", "decode", "created", "images", "failed")},
        "images_per_split": {s: int(n) for s, n in predictions["split"].value_counts().sort_index().items()},
        "patients_per_split": {s: int(n) for s, n in
                               predictions.groupby("split")["subject_id"].nunique().sort_index().items()},
        "predictions_sha256": _sha256(run_dir / PREDICTIONS),
    }


def versions() -> dict:
    import sklearn
    import torchvision


    out = {"cxrlib": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": np.__version__, "pandas": pd.__version__,
           "scikit-learn": sklearn.__version__}
    try:
        root = Path(__file__).resolve().parent.parent
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out
