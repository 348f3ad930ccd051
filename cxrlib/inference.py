"""Forward passes over a loader: logits in dataset order (gathered across DDP ranks), probabilities."""
from __future__ import annotations

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .labels import FINDINGS


@torch.no_grad()
def forward_all(model, loader, transform, device, amp=None, channels_last: bool = False, progress: bool = False):
    """Logits, targets, masks and dataset indices of every item, gathered from all ranks, in index order."""
    model.eval()
    transform.eval()
    empty = torch.empty(0, len(FINDINGS))
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
    """(probabilities (N, 14) float32 ndarray, dataset indices (N,)) for notebook 03."""
    logits, _, _, index = forward_all(model, loader, transform, device, amp, channels_last)
    return torch.sigmoid(logits).numpy(), index.numpy()
