"""A trained run: predictions, Grad-CAM maps and the record of its choice, all from its best checkpoint.

Evaluation asks every run the same four things (evaluation.kinds): its predictions, how its model was
selected, what shaped the model, and the Grad-CAM maps of some images. This module answers them for a run
with checkpoints/best.pt; evaluation.ensemble answers them for an ensemble, from its members.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..account import SELECTED_ON_TEST
from ..data.cache import cohort_with_rows, open_cache
from ..data.cohort import read_cohort
from ..errors import UserError
from ..labels import cohort_labels
from ..params import validate
from ..runfiles import COHORT, ID_COLUMNS, prob_columns, read_history
from ..training.checkpoint import load_trained, read_model_config
from ..training.inference import predict
from ..training.loader import BatchTransform, CacheDataset, make_loader
from ..training.runtime import configure, inference_amp, resolve_device
from .explain import GradCAM

TTA_SHIFT = 0.03        # fraction of the image side per shift; small enough to keep the anatomy in frame


class ShiftTTA(nn.Module):
    """The model on the image and on four copies shifted up/down/left/right; logit of the mean probability.

    Deterministic (no random draws), and returning a logit keeps inference.predict's sigmoid exact.
    Edges are padded with their border pixels, so a shift adds no black band.
    """

    def __init__(self, model: nn.Module, shift: float = TTA_SHIFT):
        super().__init__()
        self.model = model
        self.offsets = [(0.0, 0.0), (shift, 0.0), (-shift, 0.0), (0.0, shift), (0.0, -shift)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for dx, dy in self.offsets:
            view = x
            if dx or dy:
                # affine_grid spans 2 units per image side, so a shift of s of the side is 2 * s.
                theta = torch.tensor([[1.0, 0.0, 2 * dx], [0.0, 1.0, 2 * dy]], dtype=x.dtype, device=x.device)
                grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
                view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            probs.append(torch.sigmoid(self.model(view).float()))
        return torch.logit(torch.stack(probs).mean(0), eps=1e-7)


def load_best(run_dir, p):
    """(model in eval mode, training params, device, evaluation transform) from <run_dir>/checkpoints/best.pt.

    The checkpoint decides what shaped the model (architecture, image size, resize, mean/std); `p`, the
    run's current parameters, decides where (device) and where the data now lives (data_root, cache_dir:
    a copied run folder may point elsewhere).
    """

    device = resolve_device(p)
    configure(p, device)
    model, trained, config = load_trained(run_dir, "best", device)
    trained = validate({**trained.to_dict(), "data_root": p.data_root, "cache_dir": p.cache_dir},
                                  "checkpoint parameters")
    mean, std = config["mean"], config["std"]
    if mean is None or std is None:   # a checkpoint older than model_config, trained on the cache's statistics
        stats = open_cache(trained.resolved_cache_dir(), trained.image_size, trained.resize,
                                      trained.decode).stats
        mean, std = stats["mean"] if mean is None else mean, stats["std"] if std is None else std
    transform = BatchTransform(mean, std).to(device).eval()
    return model, trained, device, transform


def eval_cohort(run_dir, trained):
    """The run's cohort rows that are in the image cache (with `cache_row`), and the cache."""

    cohort = read_cohort(Path(run_dir) / COHORT)
    cache = open_cache(trained.resolved_cache_dir(), trained.image_size, trained.resize, trained.decode)
    return cohort_with_rows(cohort, cache), cache


class TrainedRun:
    """A run folder with checkpoints/best.pt."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)

    def predictions(self, p, splits=("validate", "test"), tta: bool = False) -> pd.DataFrame:
        """Probabilities of best.pt on the cached images of `splits` (a split the cohort lacks is left out,
        except test), with the targets after the label policies; `tta`: ShiftTTA's five views."""

        model, trained, device, transform = load_best(self.run_dir, p)
        cohort, cache = eval_cohort(self.run_dir, trained)
        chosen = cohort[cohort["split"].isin(list(splits))].reset_index(drop=True)
        if "test" in splits and not (chosen["split"] == "test").any():
            raise UserError(f"{Path(self.run_dir) / COHORT} has no test image in the cache {cache.dir}; "
                            "rebuild the cohort and cache with notebook 01")
        if cohort_labels(chosen) != model.labels:
            raise UserError(f"{Path(self.run_dir) / COHORT}: its labels ({len(cohort_labels(chosen))}, label set "
                            f"{trained.label_set}) are not the {len(model.labels)} best.pt predicts; the cohort was "
                            "rebuilt after training: rebuild it with the run's own parameters (notebook 01)")
        dataset = CacheDataset.from_cohort(cache, chosen, model.labels)
        loader = make_loader(dataset, p.eval_batch_size, shuffle=False, num_workers=p.num_workers, seed=p.seed)
        net = ShiftTTA(model) if tta else model
        channels_last = device.type == "cuda" and p.channels_last
        probs, index = predict(net, loader, transform, device, inference_amp(trained, device), channels_last)
        if not np.array_equal(index, np.arange(len(chosen))):
            raise RuntimeError("predict returned rows out of order")  # a bug, not a user mistake
        frame = chosen[ID_COLUMNS].copy()
        frame[prob_columns(model.labels)] = probs.astype(np.float32)
        frame[model.labels] = chosen[model.labels].to_numpy(dtype=np.float32)
        return frame

    def selection(self, p) -> dict:
        """How best.pt was chosen, from the run's parameters and history.csv (never from the test figures)."""

        history = read_history(self.run_dir)
        kept = history[history["selected"].astype(bool)] if len(history) else history
        best = kept.iloc[-1] if len(kept) else None
        score = {"auroc": "val_auroc_macro", "accuracy": "val_accuracy"}[p.select_metric]
        # history.csv from before select_level scored epochs per image
        level = str(history["select_level"].iloc[-1]) if "select_level" in history and len(history) else "image"
        out = {"select_on": p.select_on, "select_metric": p.select_metric, "level": level,
               "best_epoch": int(best["epoch"]) if best is not None else None,
               "best_score": float(best[score]) if best is not None else None,
               "epochs_run": int(len(history)), "test_selected": p.select_on == "test", "warning": None, "note": None}
        if out["test_selected"]:
            out["warning"] = SELECTED_ON_TEST
        if level != p.eval_level:
            out["note"] = (f"epochs were chosen on {level}-level figures (eval_level at training time); the figures "
                           f"here are {p.eval_level}-level (eval_level was changed after training)")
        return out

    def model_config(self) -> dict:
        """What shaped the model, from best.pt."""
        return read_model_config(self.run_dir)

    def error_images(self, p, errors: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
        """(uint8 images (n, S, S) from the cache, Grad-CAM maps (n, S, S) in [0, 1], which layer they come
        from) for the rows of `errors`, each map for that row's finding."""

        model, trained, device, transform = load_best(self.run_dir, p)
        _, cache = eval_cohort(self.run_dir, trained)
        rows = cache.rows_for(errors["dicom_id"])
        if (rows < 0).any():
            missing = errors.loc[rows < 0, "dicom_id"].iloc[0]
            raise UserError(f"image {missing} is not in the cache {cache.dir}; rebuild it with notebook 01")
        images = np.asarray(cache.images[rows]) if len(rows) else np.zeros((0, cache.size, cache.size), np.uint8)
        index = np.array([model.labels.index(f) for f in errors["finding"]], dtype=np.int64)
        cam = GradCAM(model, image_size=trained.image_size)
        maps = []
        for start in range(0, len(images), p.eval_batch_size):
            batch = torch.from_numpy(images[start:start + p.eval_batch_size])[:, None].to(device)
            maps.append(cam(transform(batch), torch.from_numpy(index[start:start + p.eval_batch_size])))
        cams = np.concatenate(maps) if maps else np.zeros(images.shape, np.float32)
        return images, cams, cam.note
