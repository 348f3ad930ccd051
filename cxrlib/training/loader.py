"""Loading: a Dataset over the uint8 cache, deterministic epoch order, and the per-batch transform.

DataLoader workers only slice the memory-mapped cache (tens of microseconds per image); every
float operation (scaling, augmentation, normalisation) runs on whole batches on the training
device in BatchTransform. Randomness never comes from the global RNGs: the epoch order comes from
(seed, epoch) and the augmentation from (seed, rank, epoch, step), so a run resumed mid-epoch
sees exactly the batches and augmentations the uninterrupted run would have seen.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    default_collate,
    get_worker_info,
)

from ..errors import UserError
from ..labels import label_matrix


class CacheDataset(Dataset):
    """(image uint8 1xSxS, labels float32 with NaN -> 0, mask float32 1 = valid, index int64) per item.

    Only the path to images.npy is pickled into workers; each process maps the file on first use,
    so the pixels live once, in the OS page cache, however many workers read them. A DataLoader
    fetches whole batches through __getitems__, which needs collate_fn=collate (make_loader sets it).
    """

    def __init__(self, images_path, rows, labels, study_ids=None):
        labels = np.asarray(labels, dtype=np.float32)
        self.study_ids = None if study_ids is None else np.asarray(study_ids, dtype=str)   # study-level scoring
        self.images_path = str(images_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        if labels.ndim != 2 or len(labels) != len(self.rows):
            raise ValueError(f"labels must be (N, findings) for N={len(self.rows)} rows, got {labels.shape}")
        self.mask = (~np.isnan(labels)).astype(np.float32)
        self.labels = np.nan_to_num(labels, nan=0.0)
        self._images = None

    @classmethod
    def from_cohort(cls, cache, cohort, labels=None):
        """Over a cohort that went through cache.cohort_with_rows (it has `cache_row`); `labels`: its label
        columns, in output order (default: every column after the cohort's identity ones)."""
        return cls(cache.images_path, cohort["cache_row"].to_numpy(), label_matrix(cohort, labels),
                   cohort["study_id"].to_numpy(str) if "study_id" in cohort else None)

    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        pixels = torch.from_numpy(np.array(self.images()[self.rows[i]]))
        return pixels[None], torch.from_numpy(self.labels[i]), torch.from_numpy(self.mask[i]), i

    def __getitems__(self, indices):
        """A whole batch with one gather into one (shared, in a worker) tensor: no per-image stacking."""
        indices = np.asarray(indices, dtype=np.int64)
        images = self.images()
        shape = (len(indices), 1, *images.shape[1:])
        if get_worker_info() is None:
            batch = torch.empty(shape, dtype=torch.uint8)
        else:
            # Straight into shared memory, as default_collate does: the main process gets it without a
            # copy, and the worker's heap does not grow (a malloc'd batch per step grew it by ~600 MB).
            storage = torch.UntypedStorage._new_shared(math.prod(shape))
            batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        out = batch.numpy()[:, 0]
        for j, row in enumerate(self.rows[indices]):  # np.take(out=...) copies twice: 8x slower at 512
            out[j] = images[row]
        return (batch, torch.from_numpy(self.labels[indices]), torch.from_numpy(self.mask[indices]),
                torch.from_numpy(indices))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_images"] = None  # never pickle the mapping: a worker opens its own
        return state


class EpochSampler(Sampler):
    """The indices of one epoch: a permutation fixed by (seed, epoch), optionally one DDP rank's share.

    Each of world_size ranks gets a disjoint slice of equal length (the order's last n % world_size
    indices are left out, different ones each epoch). start_batch skips the first batches of the
    epoch, so a run resumed after k batches continues with batch k exactly.
    """

    def __init__(self, n: int, seed: int = 0, epoch: int = 0, start_batch: int = 0, batch_size: int = 1,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.seed, self.batch_size, self.shuffle = n, seed, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> np.ndarray:
        """This rank's whole epoch, before skipping start_batch batches."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        per_rank = self.n // self.world_size if self.world_size > 1 else self.n
        return order[: per_rank * self.world_size][self.rank:: self.world_size]

    def __iter__(self):
        return iter(self.order()[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        per_rank = self.n // self.world_size if self.world_size > 1 else self.n
        return max(0, per_rank - self.start_batch * self.batch_size)


def collate(batch):
    """Batches from a Dataset's __getitems__ are already collated; single items go the usual way."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, epoch: int = 0,
                drop_last: bool = False, sampler: Sampler | None = None, pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch); call loader.sampler.set_epoch(e) before
    iterating each epoch (EpochSampler(..., start_batch=k) as `sampler` resumes an epoch at batch k).

    Workers persist across epochs and use the platform's default start method (fork on Linux),
    which works inside Jupyter kernels because the Dataset classes live in this module.
    """
    if sampler is None:
        sampler = EpochSampler(len(dataset), seed, epoch, batch_size=batch_size, shuffle=shuffle)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=num_workers > 0, collate_fn=collate,
        prefetch_factor=4 if num_workers > 0 else None,
        # Its own generator, so creating a loader never draws from (and shifts) torch's global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


class BatchTransform(nn.Module):
    """uint8 batch (B, 1, S, S) on the device -> normalised float, augmented in training mode.

    Augmentation (augment=True and module.train()): a random affine per image (rotation,
    scale, translation, and a horizontal flip only if hflip: a flip moves the heart to the
    other side), then brightness and contrast jitter. Random values are drawn on the CPU from a
    generator seeded by (seed, rank, epoch, step), so they are the same on every device and on resume.
    """

    def __init__(self, mean: float, std: float, augment: bool = False, hflip: bool = False, rotate: float = 10.0,
                 scale: float = 0.10, translate: float = 0.05, brightness: float = 0.10, contrast: float = 0.10,
                 seed: int = 0, rank: int = 0):
        super().__init__()
        self.mean, self.std = float(mean), float(std)
        self.augment, self.hflip = augment, hflip
        self.rotate, self.scale, self.translate = rotate, scale, translate
        self.brightness, self.contrast = brightness, contrast
        self.seed, self.rank = seed, rank

    @classmethod
    def from_params(cls, p, stats: dict | None = None, rank: int = 0) -> "BatchTransform":
        """From Params; a mean or std of None (null) takes the cache's stats.json value."""
        mean, std = p.mean, p.std
        if mean is None or std is None:
            if not stats or stats.get("mean") is None:
                raise UserError("mean/std are null, which means 'use the training images' statistics from the "
                                "cache' (stats.json), but none were given or the cache has no training images; "
                                "build the cache first, or set mean and std (the original used 0.4691 and 0.3046).")
            mean = stats["mean"] if mean is None else mean
            std = stats["std"] if std is None else std
        return cls(mean, std, p.augment, p.hflip, p.aug_rotate, p.aug_scale, p.aug_translate, p.aug_brightness,
                   p.aug_contrast, seed=p.seed, rank=rank)

    def generator(self, epoch: int, step: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, self.rank, epoch, step]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))

    def forward(self, images: torch.Tensor, epoch: int = 0, step: int = 0) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if self.augment and self.training:
            x = self.random_affine_and_jitter(x, self.generator(epoch, step))
        return (x - self.mean) / self.std

    def random_affine_and_jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        draws = torch.rand(7, b, generator=generator, dtype=torch.float64) * 2 - 1  # U(-1, 1), fixed order
        angle = draws[0] * math.radians(self.rotate)
        zoom = 1 + draws[1] * self.scale
        shift = draws[2:4] * 2 * self.translate  # affine_grid coordinates span 2 per image side
        flip = torch.where(draws[4] < 0, -1.0, 1.0) if self.hflip else torch.ones(b, dtype=torch.float64)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # theta maps output coordinates to input ones; a flip negates the output x column.
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[0]], 1),
                             torch.stack([sin * flip, cos, shift[1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        gain = (1 + draws[5] * self.brightness).to(x.device, x.dtype).view(b, 1, 1, 1)
        contrast = (1 + draws[6] * self.contrast).to(x.device, x.dtype).view(b, 1, 1, 1)
        x = x * gain
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast + mean).clamp(0.0, 1.0)




# --------------------------------------------------------------------------- benchmark





