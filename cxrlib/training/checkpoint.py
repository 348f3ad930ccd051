"""Checkpoints: save and load atomically, every RNG's state, and what shaped the model.

`last.pt` holds everything a resume needs (model, optimizer, scheduler, scaler, position, selection,
history, RNG states, params); `best.pt` the selected epoch's weights and what evaluation needs, no
optimizer state. Both load with weights_only=True. The
checkpoint is the authority on what shaped its model: `model_config` records the architecture, head,
image size, resize, label policies and the normalisation mean/std actually used, so evaluation
reproduces the training input exactly whatever has happened to the shared cache since.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .. import labelset
from ..errors import UserError
from ..fsutil import atomic_path, disk_full
from ..params import validate
from ..runfiles import BEST, CHECKPOINTS, LAST


def rng_state() -> dict:
    """Every RNG's state as tensors and plain lists, loadable with weights_only=True."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, checkpoint: dict) -> None:
    """torch.save to a temp file beside `path`, fsync, os.replace: a kill leaves the old file whole, and so
    does a full disk, which is said in one line (torch's own message is a stream writer's position)."""
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(checkpoint, tmp)
    except (OSError, RuntimeError) as error:
        full = disk_full(error, Path(path).parent)
        if full is None:
            raise
        raise UserError(f"{path}: not saved: {full}. The previous checkpoint is intact; free some space (or move "
                        "runs_dir to a larger disk) and continue with RESUME=1") from None


RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng")


def for_evaluation(state: dict) -> dict:
    """best.pt: the weights and what evaluation reads (params, model_config, selection, history), without the
    optimizer, scheduler, scaler and RNG states only a resume needs (those live in last.pt): a third of the size
    with Adam."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint; train the run first (notebook 02, `make train`)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a foreign or damaged file
        raise UserError(f"{path}: cannot be read as a cxrlib checkpoint ({e})") from None


MODEL_FIELDS = ("arch", "head", "dropout", "image_size", "resize", "decode", "views", "label_set", "label_source",
                "uncertain_policy", "blank_policy")


def model_config(params, transform, model=None, starting: dict | None = None, labels=None) -> dict:
    """What shaped the model, as evaluation must reproduce it: the fields above, the mean/std used, the shape a
    weights file fixed (arch_kwargs), what the run started from (starting_weights, with its contamination), and
    the labels its outputs are, in order (every later stage reads them here)."""
    values = params.to_dict()
    config = {**{k: values[k] for k in MODEL_FIELDS}, "mean": float(transform.mean), "std": float(transform.std),
              "labels": list(labels or labelset.load(params.label_set).labels)}
    if model is not None and getattr(model, "arch_kwargs", None):
        config["arch_kwargs"] = dict(model.arch_kwargs)
    if starting is not None:
        config["starting_weights"] = starting
    return config


def load_trained(run_dir, which: str = "best", device="cpu"):
    """(model in eval mode, training params, model_config) from <run_dir>/checkpoints/<which>.pt.

    Checkpoints written before model_config existed get one rebuilt from their params (mean/std None
    when the run took them from the cache: the caller then falls back on the cache's statistics).
    """
    from .model import build_model  # lazy: keeps torchvision out of this module's import

    path = Path(run_dir) / CHECKPOINTS / f"{which}.pt"
    checkpoint = load_checkpoint(path)
    p = validate(checkpoint["params"], str(path))
    config = saved_model_config(checkpoint, p)
    model = build_model(p, config)
    model.load_state_dict(checkpoint["model"])
    model.labels = list(config["labels"])   # what its outputs are, in order: every later stage reads them here
    return model.to(device).eval(), p, config


def read_model_config(run_dir, which: str = "best") -> dict:
    """model_config of a checkpoint without reading its tensors (memory-mapped)."""
    path = Path(run_dir) / CHECKPOINTS / f"{which}.pt"
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint; train the run first (notebook 02, `make train`)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    p = validate(checkpoint["params"], str(path))
    return saved_model_config(checkpoint, p)


def saved_model_config(checkpoint: dict, p) -> dict:
    """The checkpoint's model_config; for checkpoints older than it, one rebuilt from their params. Checkpoints
    from before label sets predicted the default set's labels (chexpert14), which their params name."""
    config = checkpoint.get("model_config") or {**{k: getattr(p, k) for k in MODEL_FIELDS}, "mean": p.mean,
                                                "std": p.std}
    return config if "labels" in config else {**config, "labels": list(labelset.load(p.label_set).labels)}


def remove_stale_temp_files(folder) -> list[Path]:
    """Temp files that a kill during save_checkpoint left in this run's checkpoints folder (atomic_path
    names them .<name>.<random>.pt); nothing else is touched."""
    stale = [f for name in (LAST, BEST) for f in Path(folder).glob(f".{name}.*.pt") if f.is_file()]
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def plain(value):
    """numpy scalars -> Python numbers, so history loads with weights_only=True."""
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, np.bool_)) and not isinstance(value, bool):
        return bool(value) if isinstance(value, np.bool_) else int(value)
    return value
