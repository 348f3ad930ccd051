"""`python -m cxrlib embed --run NAME [--trained]`: a run's cohort images through its encoder once, into the
embedding cache (data/embeddings.py), ahead of its probes; or, with --trained, through the run's own trained
network, for other uses of its vectors. A second call reuses them and says so; a killed call resumes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .. import runfiles
from ..data import embeddings
from ..data.cohort import read_cohort
from ..errors import UserError
from ..fsutil import sha256_file
from ..labels import cohort_labels
from .checkpoint import load_trained
from .loader import BatchTransform, CacheDataset
from .model import build_model
from .probe import encoder_record, vectors_of
from .train import cached_cohort, run_starting_weights, take_starting_input


def embed_run(run_dir, splits=("train", "validate", "test"), trained: bool = False, progress: bool = True,
              log=print) -> dict:
    """The run's cohort images of `splits` through its encoder, once, into the embedding cache: the starting
    weights' backbone (what its probes read), or with `trained` its own trained network's (best.pt)."""
    run_dir = Path(run_dir)
    p = runfiles.load_frozen(run_dir)
    cache, cohort = cached_cohort(p, read_cohort(run_dir / runfiles.COHORT))
    transform = BatchTransform.from_params(p, cache.stats)
    if trained:
        model, _, config = load_trained(run_dir)
        transform.mean, transform.std = config["mean"], config["std"]
        best = run_dir / runfiles.CHECKPOINTS / runfiles.BEST
        encoder = {"arch": p.arch, "head": p.head, "arch_kwargs": config.get("arch_kwargs") or {},
                   "weights": f"trained run {run_dir.name}: best.pt sha256 {sha256_file(best)}"}
    else:
        torch.manual_seed(p.seed)
        model = build_model(p, labels=cohort_labels(cohort))
        starting = run_starting_weights(p, cohort)
        take_starting_input(transform, starting)
        encoder = encoder_record(p, starting, model)
    chosen = cohort[cohort["split"].isin(list(splits))]
    if chosen.empty:
        raise UserError(f"{run_dir / runfiles.COHORT} has no images in the splits {list(splits)}")
    images = CacheDataset.from_cohort(cache, chosen)
    key = embeddings.embedding_key(encoder, cache, transform.mean, transform.std)
    vectors = vectors_of(model, transform, cache, images.rows, key, p.eval_batch_size, progress=progress, log=log)
    return {"images": len(images), "dim": vectors.shape[1], "key": embeddings.key_id(key),
            "folder": str(embeddings.store_folder(cache, key)), "finite": bool(np.isfinite(vectors).all())}


def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m cxrlib {command}",
        description="Embed a run's cohort images once into the embedding cache (beside its image cache): its starting "
                    "weights' frozen backbone (what `train_from: embeddings` reads), or --trained its own network. "
                    "A second call, or a probe, reuses the vectors; a killed call resumes.")
    parser.add_argument("--run", required=True, help="a run folder (after notebook 01), or its name under runs/")
    parser.add_argument("--splits", default="train,validate,test", help="which splits' images (default all three)")
    parser.add_argument("--trained", action="store_true", help="the run's trained network (best.pt), not its start")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)
    run_dir, _ = runfiles.run_folder(args.run, args.runs_dir)
    result = embed_run(run_dir, [s.strip() for s in args.splits.split(",") if s.strip()], args.trained)
    print(json.dumps(result))
    return 0
