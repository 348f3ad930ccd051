"""Linear probes on the embedding cache, zero-shot heads, and the labelled share of the training split.

`train_from: embeddings` trains the head of a `freeze: backbone` run on vectors the frozen backbone computed
once (data/embeddings.py), by the same loop, optimizer, loss, schedule and selection as training on images (fit
swaps the images for the vectors and the network for its head); so the checkpoint is the whole network like any
run's, and evaluation, the audit, external validation, the card and the export read it unchanged. The vectors are
the network's own features: everything before the head's Dropout and Linear.

`train_from: zero_shot`: a CLIP model's text tower turns each label's positive and negative prompt into the
head (training.clip_models), and nothing trains.

`train_fraction`: the data-efficiency curves' x axis. The training patients are put in an order fixed by the seed,
and the first ceil(fraction x patients) of them train: 1% is inside 10%, which is inside 100%, for each seed.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import embeddings


class FeatureDataset(Dataset):
    """(vector float32, labels with NaN -> 0, mask, index) per item: CacheDataset's items with vectors for images."""

    def __init__(self, vectors: np.ndarray, images):
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.labels, self.mask, self.study_ids = images.labels, images.mask, images.study_ids

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitems__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return (self.vectors[indices], torch.from_numpy(self.labels[indices]), torch.from_numpy(self.mask[indices]),
                torch.from_numpy(indices))


class AsGiven(nn.Module):
    """The vectors as they are: the batch transform's place in fit's loops (which pass it epoch and step)."""

    def forward(self, x: torch.Tensor, epoch: int = 0, step: int = 0) -> torch.Tensor:
        return x.float()


def features(model: nn.Module) -> nn.Module:
    """The network up to its head's Dropout and Linear: what a probe's vectors are."""
    return nn.Sequential(model.stem, model.body, *list(model.head)[:-2])


def head(model: nn.Module) -> nn.Module:
    """The head's Dropout and Linear: what a probe trains (the same parameter objects as the model's)."""
    return nn.Sequential(*list(model.head)[-2:])


def encoder_record(params, starting: dict, model: nn.Module) -> dict:
    """The encoder as the embedding key names it: its arch and shape, and its weights by content."""
    weights = starting.get("sha256") or starting.get("source") or params.weights
    return {"arch": params.arch, "head": params.head, "arch_kwargs": getattr(model, "arch_kwargs", {}) or {},
            "weights": weights}


def vectors_of(model, transform, cache, rows, key: dict, batch_size: int, device="cpu", progress: bool = True,
               log=print) -> np.ndarray:
    """The model's features (everything before its head's Dropout and Linear) of the image cache's `rows`, read
    from the embedding cache under `key` where they are there, computed and kept where not."""
    extract = features(model).eval()
    transform.eval()
    dim = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1].in_features
    return embeddings.embed(cache, rows, key, dim, lambda pixels: extract(transform(pixels.to(device))), batch_size,
                            progress, log=log)


def embedded(params, model, cache, datasets, transform, starting: dict, device, progress: bool = True, log=print):
    """(head, its datasets over the vectors, an identity transform, the vectors' key id) for fit: the frozen
    backbone's vectors of every image of `datasets` (CacheDatasets), computed once into the embedding cache."""
    key = embeddings.embedding_key(encoder_record(params, starting, model), cache, transform.mean, transform.std)
    rows = np.concatenate([d.rows for d in datasets])
    # the whole training split's vectors, whatever share of it this run labels: the next fraction or seed reads them
    everything = np.concatenate([rows, np.setdiff1d(getattr(datasets[0], "split_rows", rows), rows)])
    vectors = vectors_of(model, transform, cache, everything, key, params.eval_batch_size, device, progress,
                         log)[:len(rows)]
    out, start = [], 0
    for d in datasets:
        out.append(FeatureDataset(vectors[start:start + len(d)], d))
        start += len(d)
    return head(model), out, AsGiven(), embeddings.key_id(key)


def labelled_share(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The training images of the first ceil(fraction x patients) patients in the seed's order (at least one):
    nested across fractions, so that a curve's points differ only by the labels added."""
    if fraction >= 1:
        return train
    patients = pd.unique(train["subject_id"].astype(str))
    order = sorted(patients, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    kept = set(order[:max(1, math.ceil(fraction * len(patients)))])
    return train[train["subject_id"].astype(str).isin(kept)]

