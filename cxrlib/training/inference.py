"""Forward passes over a loader: logits in dataset order (gathered across DDP ranks), probabilities, and
the selection split's loss, macro/micro AUROC and accuracy at 0.5 that fit scores each epoch by."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .optim import masked_bce


@torch.no_grad()
def forward_all(model, loader, transform, device, amp=None, channels_last: bool = False, progress: bool = False):
    """Logits, targets, masks and dataset indices of every item, gathered from all ranks, in index order."""
    model.eval()
    transform.eval()
    outputs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features   # the labels' count
    empty = torch.empty(0, outputs)
    parts = [(empty, empty, empty, torch.empty(0, dtype=torch.long))]   # a rank may get no item
    for images, targets, mask, index in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        x = transform(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        parts.append((logits.float().cpu(), targets, mask, torch.as_tensor(index)))
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts)
        parts = [part for rank_parts in gathered for part in rank_parts]
    logits, targets, mask, index = (torch.cat(column) for column in zip(*parts))
    order = torch.argsort(index)
    return logits[order], targets[order], mask[order], index[order]


def predict(model, loader, transform, device, amp=None, channels_last: bool = False):
    """(probabilities (N, labels) float32 ndarray, dataset indices (N,)) for notebook 03."""
    logits, _, _, index = forward_all(model, loader, transform, device, amp, channels_last)
    return torch.sigmoid(logits).numpy(), index.numpy()


def evaluate(model, loader, transform, device, pos_weight=None, amp=None, channels_last: bool = False,
             progress: bool = False, units=None, aggregate: str = "mean", loss_fn=None) -> dict:
    """loss (masked BCE, per image), macro and micro AUROC and accuracy at 0.5 over the valid cells.

    units: one id per dataset item (its study) to score studies, as eval_level: study does: a study's
    image probabilities are aggregated (`aggregate`: mean or max) and its label row counted once. loss_fn: the
    training objective when it is not BCE (optim.objective).
    """
    from ..stats import metrics  # lazy: keeps scipy, sklearn out of this module's import

    logits, targets, mask, _ = forward_all(model, loader, transform, device, amp, channels_last, progress)
    loss = float(masked_bce(logits, targets, mask, None if pos_weight is None else pos_weight.cpu()) if loss_fn is None
                 else loss_fn(logits, targets, mask))   # the training objective, per image
    probs = torch.sigmoid(logits).numpy()
    labels = np.where(mask.numpy() > 0, targets.numpy(), np.nan)
    if units is not None:
        probs, labels = per_unit(probs, labels, units, aggregate)
    valid = ~np.isnan(labels)
    # the original's accuracy: (sigmoid > 0.5) == label, averaged over all (valid) cells
    accuracy = float(((probs > 0.5) == (labels == 1))[valid].mean()) if valid.any() else float("nan")
    ranking = metrics.ranking_metrics(labels, probs)
    return {"loss": loss, "auroc_macro": ranking["macro"]["auroc"], "auroc_micro": ranking["micro"]["auroc"],
            "accuracy": accuracy}


def per_unit(probs: np.ndarray, labels: np.ndarray, units, aggregate: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) with one row per unit: the mean or max of its rows' probabilities and its
    first row's labels (every image of a study carries the study's labels); units in order of first appearance."""
    codes = pd.factorize(np.asarray(units))[0]
    grouped = pd.DataFrame(probs).groupby(codes, sort=True)
    return grouped.agg(aggregate).to_numpy(), pd.DataFrame(labels).groupby(codes, sort=True).first().to_numpy()
