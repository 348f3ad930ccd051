"""The embedding cache: one vector per cached image per encoder, computed once, memory-mapped float16.

A linear probe needs each image through the frozen encoder once, not once per epoch, per seed and per label
fraction. The vectors live beside the image cache they were computed from:

<image cache>/embeddings/<key id>/
  key.json     what the vectors are: the encoder (its arch and shape, its weights' sha256), the input (image size,
               resize, decode, mean and std) and the image cache's content (the sha256 of its manifest, which a
               rebuilt cache changes); the folder's name is a hash of it
  vectors.npy  float16 (cache rows, dim)
  done.npy     one bool per cache row, replaced atomically after the vectors it marks have reached the disk

A second probe with the same key reads the vectors (and says so); a killed embedding resumes at the rows not done;
a folder whose key.json is not the key it is named by is refused, never mixed. The encoder is given as a function
(training.probe builds it), so that this module stays below the training layer.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from ..errors import UserError
from ..fsutil import atomic_path, atomic_write_json, sha256_file
from ..progress import bar as progress_bar
from .cache_build import locked

FOLDER = "embeddings"
KEY_VERSION = 1


def cache_identity(cache) -> str:
    """The image cache's content: its manifest names every source file's size and mtime and when it was built."""
    return sha256_file(Path(cache.dir) / "manifest.json")


def embedding_key(encoder: dict, cache, mean: float, std: float) -> dict:
    """What a vector depends on. encoder: arch, arch_kwargs, weights (their sha256 or a torchvision name), head,
    and for a run's own backbone the checkpoint's sha256."""
    return {"version": KEY_VERSION, "encoder": encoder, "image_size": cache.size, "resize": cache.resize,
            "decode": cache.decode, "mean": round(float(mean), 8), "std": round(float(std), 8),
            "image_cache": cache_identity(cache)}


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def store_folder(cache, key: dict) -> Path:
    return Path(cache.dir) / FOLDER / key_id(key)


def _open_store(folder: Path, key: dict, rows: int, dim: int) -> tuple[np.memmap, np.ndarray]:
    """(vectors, done) of the store in `folder`, created when absent; refused when it holds another key."""
    key_file = folder / "key.json"
    if key_file.is_file():
        try:
            held = json.loads(key_file.read_text())
        except (OSError, ValueError):
            held = None
        if held != key:
            raise UserError(f"{folder} holds embeddings of another key than its name says ({key_file}); refusing to "
                            f"mix them: delete {folder} and embed again")
        vectors = open_memmap(folder / "vectors.npy", mode="r+")
        if vectors.shape != (rows, dim):
            raise UserError(f"{folder / 'vectors.npy'} is {vectors.shape}, not ({rows}, {dim}) for this key: delete "
                            f"{folder} and embed again")
        done_file = folder / "done.npy"
        done = np.load(done_file) if done_file.is_file() else np.zeros(rows, bool)
        return vectors, done
    folder.mkdir(parents=True, exist_ok=True)
    vectors = open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    done = np.zeros(rows, bool)
    _save_done(folder, done)
    atomic_write_json(key_file, key)   # last: a folder without it is an embedding that never started
    return vectors, done


def _save_done(folder: Path, done: np.ndarray) -> None:
    with atomic_path(folder / "done.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, done)


def embed(cache, rows, key: dict, dim: int, encode, batch_size: int = 128, progress: bool = True,
          flush_every: int = 8, log=print) -> np.ndarray:
    """The vectors (float32, len(rows) x dim) of the image cache's `rows`, computed only where not done before.

    encode(uint8 tensor (B, 1, S, S)) -> float tensor (B, dim). Vectors reach the disk every `flush_every`
    batches, then the rows they fill are marked done, so a kill loses at most that much work."""
    import torch  # lazy: torch, only when vectors are computed

    rows = np.asarray(rows, dtype=np.int64)
    folder = store_folder(cache, key)
    with locked(folder):
        vectors, done = _open_store(folder, key, len(cache.images), dim)
        wanted = np.unique(rows)
        todo = wanted[~done[wanted]]
        if len(todo) == 0:
            log(f"embeddings: reused all {len(wanted)} images' vectors from {folder} (key {folder.name}); "
                "nothing computed")
        else:
            started = time.perf_counter()
            images = cache.images
            bar = progress_bar(len(todo), "embed", "images", enabled=progress)
            for i, start in enumerate(range(0, len(todo), batch_size)):
                chunk = todo[start:start + batch_size]
                pixels = torch.from_numpy(np.stack([images[r] for r in chunk]))[:, None]
                with torch.no_grad():
                    computed = encode(pixels).float().cpu().numpy()
                stored = computed.astype(np.float16)
                if not np.isfinite(stored).all():
                    raise UserError(f"embeddings: the encoder's vectors are not finite in float16 (largest |value| "
                                    f"{np.nanmax(np.abs(computed)):.3g}; float16 holds up to 65504): its weights may be "
                                    "broken, or its input range wrong (the weights' JSON `input`). Nothing was kept "
                                    f"for these images; {folder} holds the rows done before")
                vectors[chunk] = stored
                done[chunk] = True
                bar.update(len(chunk))
                if (i + 1) % flush_every == 0:
                    vectors.flush()
                    _save_done(folder, done)
            vectors.flush()
            _save_done(folder, done)
            bar.close()
            seconds = time.perf_counter() - started
            log(f"embeddings: computed {len(todo)} of {len(wanted)} images' vectors in {seconds:.1f} s "
                f"({len(wanted) - len(todo)} reused) into {folder} (key {folder.name})")
        return np.asarray(vectors[rows], dtype=np.float32)
