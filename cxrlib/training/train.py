"""Training: fit (the epochs, selection, checkpoints that resume exactly), torchrun launch, DDP.

    result = fit(params, run_dir)                   # in-process, one device
    result = launch(params, run_dir)                # the notebook's call: torchrun when gpus > 1
    python -m cxrlib.training.train --run-dir runs/NAME      # what torchrun runs (reads params.yaml, cohort.csv)

Resuming. <run_dir>/checkpoints/last.pt is written atomically at every epoch end and every
`checkpoint_minutes` mid-epoch. It holds the model, optimizer, scheduler and GradScaler states,
the position (epoch, global step, batch within the epoch, the epoch's running loss), the
early-stopping state, the history, the RNG states and the frozen parameters; everything loads
with torch.load(weights_only=True). Nothing random depends on how long a process has run: the
epoch order comes from (seed, epoch), the augmentation from (seed, rank, epoch, step), and torch's
global RNG (dropout) is reseeded from (seed, rank, epoch, step) before every step. So on CPU a run
killed at any point and resumed ends with exactly the weights and metrics of an uninterrupted one.

Model selection. select_on: validate (default) picks the epoch with the best select_metric on the
validation split, counted in the units of eval_level (at study level: studies, their images' probabilities
aggregated by study_aggregate; history.csv's select_level says which). select_on: test with
select_metric: accuracy is the original project's rule: each epoch is scored on the TEST set by
accuracy over all N x 14 cells at 0.5; an epoch is kept if its score is strictly greater than the
best so far (which starts at 0); a counter grows every epoch, is reset by a kept epoch, and
training stops when it reaches `patience`. Selecting on the test set makes the test figures
optimistic: fit warns and records it in the history.

Several GPUs. DDP, one process per GPU, launched by torchrun. batch_size is the global batch;
each rank takes batch_size // world_size images of every global batch (the EpochSampler deals
batch k's images across ranks), so the gradients match one process with the same global batch
up to BatchNorm, whose statistics are per rank (as in torchvision's references without
--sync-bn), and to masked labels, which each rank averages over its own valid cells. Rank 0 alone
writes checkpoints and history; every rank computes the same metrics from the gathered
predictions, so all stop at the same epoch. With device: cpu, gpus: N runs N CPU
processes on the gloo backend (the tests do). Several machines:

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             --rdzv-id RUN_NAME -m cxrlib.training.train --run-dir runs/NAME

on every node, with runs/NAME (params.yaml, cohort.csv) and the image cache on shared storage.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from .. import runfiles, tracking
from ..account import SELECTED_ON_TEST
from ..data.cache import cohort_with_rows, open_cache
from ..data.cache_build import cohort_stats
from ..data.cohort import read_cohort, write_cohort
from ..errors import UserError
from ..fsutil import atomic_write_csv
from ..labels import cohort_labels, label_matrix
from ..progress import duration, is_batch, recent_epoch_seconds, side_note
from ..runfiles import BEST, CHECKPOINTS, COHORT, HISTORY, LAST
from .checkpoint import (
    for_evaluation,
    load_checkpoint,
    model_config,
    plain,
    read_model_config,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .contamination import starting_weights
from .inference import evaluate
from .loader import BatchTransform, CacheDataset, EpochSampler, make_loader
from .optim import make_optimizer, make_scheduler, objective, pos_weight_from_labels
from .probe import embedded, labelled_share
from .runtime import (
    all_reduce,
    amp_dtype,
    broadcast_buffers,
    configure,
    distributed,
    inference_amp,
    resolve_device,
    torchrun_command,
    under_torchrun,
    use_channels_last,
)
from .selection import fit_result, new_selection, result_from_history, update_selection
from .steps import new_position, train_one_epoch
from .zero_shot import set_zero_shot_head

# --------------------------------------------------------------------------- fit


def cached_cohort(params, cohort: pd.DataFrame):
    """(the run's image cache, with this cohort's training-pixel statistics; the cohort's images in it)."""
    cache = open_cache(params.resolved_cache_dir(), params.image_size, params.resize, params.decode)
    cache.stats = cohort_stats(cache, cohort)   # this cohort's training pixels, not the shared cache's
    return cache, cohort_with_rows(cohort, cache)


def take_starting_input(transform, starting: dict) -> None:
    """The input range the weights were trained with (their JSON), not the params' guess."""
    if starting.get("input"):
        transform.mean, transform.std = float(starting["input"]["mean"]), float(starting["input"]["std"])


def prepare_data(params, run_dir, cohort=None, rank: int = 0, world: int = 1):
    """The training and selection datasets, their label matrices and the batch transform."""

    if cohort is None:
        cohort = read_cohort(Path(run_dir) / COHORT)
    cache, cohort = cached_cohort(params, cohort)
    whole_train = cohort[cohort["split"] == "train"]
    train = labelled_share(whole_train, params.train_fraction, params.seed)
    chosen = cohort[cohort["split"] == params.select_on]
    if len(train) < world:
        raise UserError(f"the cohort has {len(train)} training images in the cache {cache.dir}; "
                        "check the cohort and the cache (notebook 01)")
    if len(chosen) == 0:
        raise UserError(f"select_on: {params.select_on} but the cohort has no {params.select_on!r} images; "
                        "set val_fraction > 0 (or split_mode: official) for a validation split")
    labels = label_matrix(train)
    chosen_labels = label_matrix(chosen)
    if params.select_metric == "auroc":
        both = [(c == 1).any() and (c == 0).any() for c in chosen_labels.T]
        if not any(both):
            raise UserError(f"select_metric: auroc needs a finding with both classes on the {params.select_on} "
                            "split, which has none; enlarge val_fraction or use select_metric: accuracy")
    transform = BatchTransform.from_params(params, cache.stats, rank=rank)
    train_set, chosen_set = CacheDataset.from_cohort(cache, train), CacheDataset.from_cohort(cache, chosen)
    train_set.cache = cache   # where a probe's vectors are kept (train_from: embeddings)
    train_set.patients = int(train["subject_id"].nunique())   # the labelled patients (train_fraction)
    train_set.split_rows = whole_train["cache_row"].to_numpy()   # a probe embeds them all, once
    return train_set, chosen_set, labels, transform


def fit(params, run_dir, cohort: pd.DataFrame | None = None, progress: bool = True) -> dict:
    """Train (or continue training) the run in run_dir; returns best epoch, best score and paths."""
    rank, world, local_rank = distributed()
    device = resolve_device(params, local_rank)   # before any work: no GPU -> one clear line
    if params.batch_size % world:
        raise UserError(f"batch_size {params.batch_size} is not divisible by the {world} processes (gpus); "
                        f"the global batch is shared equally, so pick a multiple of {world}")
    # Under torchrun even one process joins a process group, so `torchrun --nproc_per_node 1` runs the
    # DDP code path (NCCL on a GPU) that several GPUs take.
    initialised_here = (world > 1 or under_torchrun()) and not dist.is_initialized()
    if initialised_here:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if rank == 0:
            print(f"distributed: backend {dist.get_backend()}, world size {world}", flush=True)
    try:
        return _fit(params, Path(run_dir), cohort, device, rank, world, progress and rank == 0)
    finally:
        if initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def steps_per_epoch(images: int, batch: int) -> int:
    """Batches per epoch; a last batch of one image is left out (a different one each epoch): BatchNorm
    cannot train on a single image once the feature map is 1 x 1, and its statistics would be noise."""
    steps = math.ceil(images / batch)
    return steps - 1 if steps > 1 and images % batch == 1 else steps


def _fit(params, run_dir: Path, cohort, device, rank: int, world: int, progress: bool) -> dict:
    from .model import build_model  # lazy: keeps torchvision out of this module's import

    configure(params, device)
    folder = run_dir / CHECKPOINTS
    last_path, best_path = folder / LAST, folder / BEST
    cohort = read_cohort(run_dir / COHORT) if cohort is None else cohort
    train_set, eval_set, train_labels, transform = prepare_data(params, run_dir, cohort, rank, world)
    per_rank = params.batch_size // world
    steps = steps_per_epoch(len(train_set) // world if world > 1 else len(train_set), per_rank)
    if params.max_train_batches > 0:
        steps = min(steps, params.max_train_batches)
    if params.train_from == "zero_shot":
        steps = 0   # the prompts are the head: one pass scores them on the selection split

    torch.manual_seed(params.seed)   # the initial weights
    labels = cohort_labels(cohort)   # the outputs, in order: the cohort's label columns (its label set's)
    model = build_model(params, labels=labels).to(device)
    starting = run_starting_weights(params, cohort)
    take_starting_input(transform, starting)
    if params.train_from == "zero_shot":
        model.zero_shot = set_zero_shot_head(model, params, labels)
    if use_channels_last(params, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params, steps)
    amp = amp_dtype(params, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    pos_weight = pos_weight_from_labels(train_labels, labels).to(device) if params.pos_weight else None
    loss_fn = objective(params)   # None: BCE (with pos_weight when set)
    position, selection, history = new_position(), new_selection(), []

    if rank == 0:
        for stale in remove_stale_temp_files(folder):
            print(f"removed {stale}, left by a run killed while saving", flush=True)
    if last_path.is_file():
        checkpoint = load_checkpoint(last_path)
        runfiles.check_change(checkpoint["params"], params, run_dir, stages=["cohort", "cache", "train"])
        if not params.resume and rank == 0:
            print(f"{last_path} exists with the same parameters: continuing it (delete {folder} to start over)",
                  flush=True)
        if device.type == "cpu" and checkpoint["cpu_threads"] != torch.get_num_threads() and world == 1:
            # CPU kernels split their sums by thread; the same split gives the same bits
            torch.set_num_threads(checkpoint["cpu_threads"])
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:   # empty when saved by a disabled (non-fp16) scaler
            scaler.load_state_dict(checkpoint["scaler"])
        position, selection, history = checkpoint["position"], checkpoint["selection"], checkpoint["history"]
        set_rng_state(checkpoint["rng"])
        if "model_config" in checkpoint:   # the statistics trained with, whatever the shared cache says now
            transform.mean, transform.std = checkpoint["model_config"]["mean"], checkpoint["model_config"]["std"]
        if checkpoint["stopped_early"] or (checkpoint["finished"] and position["epoch"] >= params.epochs):
            return fit_result(params, run_dir, selection, history, stopped=checkpoint["stopped_early"])
        if rank == 0:
            print(f"resuming {run_dir.name} at epoch {position['epoch'] + 1}, batch {position['batch']} "
                  f"(step {position['step']})", flush=True)
    elif params.resume and rank == 0:
        print(f"resume: no checkpoint in {folder} yet, starting from the beginning", flush=True)

    if params.select_on == "test":
        warnings.warn(SELECTED_ON_TEST, stacklevel=2)
    trained_on = {"train_patients": train_set.patients, "train_images": len(train_set)}
    bare, loop_transform = model, transform   # what the loops run: the network on images, or its head on vectors
    if params.train_from == "embeddings":
        bare, (train_set, eval_set), loop_transform, trained_on["embeddings_key"] = embedded(
            params, model, train_set.cache, [train_set, eval_set], transform, starting, device, progress and rank == 0)
    net = bare
    if dist.is_available() and dist.is_initialized():
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if params.compile:
        net = torch.compile(net)

    def checkpoint_state(finished=False, stopped=False) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "position": {k: plain(v) for k, v in position.items()}, "selection": dict(selection),
                "history": history, "rng": rng_state(), "params": params.to_dict(),
                "model_config": {**model_config(params, transform, model, starting, labels), **trained_on,
                                 **({"zero_shot": model.zero_shot} if hasattr(model, "zero_shot") else {})},
                "cpu_threads": torch.get_num_threads(), "finished": finished, "stopped_early": stopped}

    last_saved = [time.monotonic()]

    def after_step(pos: dict) -> None:
        due = params.checkpoint_minutes > 0 and time.monotonic() - last_saved[0] >= params.checkpoint_minutes * 60
        if rank == 0 and due and pos["batch"] < steps:
            save_checkpoint(last_path, checkpoint_state())
            last_saved[0] = time.monotonic()

    sampler = EpochSampler(len(train_set), params.seed, position["epoch"], position["batch"], per_rank,
                           shuffle=True, rank=rank, world_size=world)
    train_loader = make_loader(train_set, per_rank, True, params.num_workers, params.seed, sampler=sampler)
    eval_per_rank = max(1, params.eval_batch_size // world)
    eval_loader = make_loader(eval_set, eval_per_rank, False, params.num_workers, params.seed,
                              sampler=range(rank, len(eval_set), world))
    # Epochs are chosen on the units the run's figures count: studies (their images' mean or max) at study level.
    selection_units = ({"units": eval_set.study_ids, "aggregate": params.study_aggregate}
                       if params.eval_level == "study" and eval_set.study_ids is not None else {})
    train_kw = dict(steps=steps, seed=params.seed, rank=rank, pos_weight=pos_weight, loss_fn=loss_fn, amp=amp,
                    grad_clip=params.grad_clip,
                    channels_last=use_channels_last(params, device) and params.train_from != "embeddings",
                    after_step=after_step, progress=progress, epochs=params.epochs)
    tracker = tracking.open_tracker(params, run_dir) if rank == 0 else tracking.Tracker()
    train_kw["log_step"] = tracker.step
    stopped = False
    epoch_walls = []   # wall seconds per epoch in this process (training and selection), for the ETA
    while position["epoch"] < params.epochs:
        epoch = position["epoch"]
        epoch_started = time.monotonic()
        sampler.set_epoch(epoch, position["batch"])
        train_one_epoch(net, train_loader, loop_transform, optimizer, scheduler, scaler, device, position, **train_kw)
        loss_sum, cells, images = all_reduce([position["loss_sum"], position["cells"], position["images"]], device)
        # Every rank evaluates rank 0's model, the one saved: DDP broadcasts BatchNorm buffers before each
        # training forward, so after the last one each rank holds its own running statistics.
        broadcast_buffers(model)
        # the bare model: ranks hold different numbers of evaluation batches, and DDP's forward may sync buffers
        scores = evaluate(bare, eval_loader, loop_transform, device, pos_weight, inference_amp(params, device),
                          device.type == "cuda" and train_kw["channels_last"], progress and not is_batch(),
                          loss_fn=loss_fn, **selection_units)
        score = scores["auroc_macro" if params.select_metric == "auroc" else "accuracy"]
        keep, stopped = update_selection(selection, score, epoch + 1, params.patience)
        history.append({
            "epoch": epoch + 1, "train_loss": loss_sum / cells if cells else float("nan"), "val_loss": scores["loss"],
            "val_auroc_macro": scores["auroc_macro"], "val_auroc_micro": scores["auroc_micro"],
            "val_accuracy": scores["accuracy"], "eval_split": params.select_on, "select_level": params.eval_level,
            "lr": float(scheduler.get_last_lr()[0]), "images_per_s": images / max(position["seconds"], 1e-9),
            "seconds": float(position["seconds"]), "selected": keep, "best_epoch": selection["best_epoch"],
            "patience_counter": selection["counter"], "selected_on_test": params.select_on == "test"})
        history[-1] = {k: plain(v) for k, v in history[-1].items()}
        position.update(epoch=epoch + 1, batch=0, loss_sum=0.0, cells=0.0, images=0, seconds=0.0)
        finished = stopped or position["epoch"] >= params.epochs
        if rank == 0:
            state = checkpoint_state(finished, stopped)
            if keep:
                save_checkpoint(best_path, for_evaluation(state))
            save_checkpoint(last_path, state)
            last_saved[0] = time.monotonic()
            atomic_write_csv(run_dir / HISTORY, pd.DataFrame(history))
            epoch_walls.append(time.monotonic() - epoch_started)
            left = 0 if finished else params.epochs - position["epoch"]
            print(epoch_line(history[-1], params, keep), flush=True)
            if left:   # to the terminal, not the saved report: an ETA is stale the moment it is saved
                side_note(f"ETA {duration(left * recent_epoch_seconds(epoch_walls))} for the {left} epoch(s) left "
                          "(from the most recent epochs)")
            tracker.epoch(epoch + 1, history[-1])
        if stopped:
            if rank == 0:
                print(f"early stop: no better {params.select_metric} for {params.patience} epochs", flush=True)
            break
    tracker.close()
    return fit_result(params, run_dir, selection, history, stopped)


def epoch_line(row: dict, params, keep: bool) -> str:
    """The one line per epoch that reaches the terminal (streamed by the runner) and the notebook."""
    return (f"epoch {row['epoch']}/{params.epochs}: train loss {row['train_loss']:.4f}, {params.select_on} loss "
            f"{row['val_loss']:.4f}, AUROC macro {row['val_auroc_macro']:.4f} micro {row['val_auroc_micro']:.4f}, "
            f"accuracy {row['val_accuracy']:.4f}, lr {row['lr']:.2e}, {row['images_per_s']:.1f} img/s, "
            f"epoch {duration(row['seconds'])}{'  * best' if keep else ''}")


def run_starting_weights(params, cohort: pd.DataFrame) -> dict:
    """The starting weights' record: their hash, what they saw, and whether that includes this run's test split."""
    from .model import starting_info  # lazy: keeps torchvision out of this module's import

    return starting_weights(starting_info(params.arch, params.weights), params, cohort)


def starting_weights_of(params, run_dir) -> dict:
    """What the run starts from (or started from, once trained), as model_config records it; before training,
    run_starting_weights on cohort.csv, as _fit computes it."""
    last = Path(run_dir) / CHECKPOINTS / LAST
    if last.is_file():
        recorded = read_model_config(run_dir, "last").get("starting_weights")
        if recorded:
            return recorded
    return run_starting_weights(params, read_cohort(Path(run_dir) / COHORT))


# --------------------------------------------------------------------------- launching


def launch(params, run_dir, cohort: pd.DataFrame | None = None, progress: bool = True) -> dict:
    """Train in this process, or (gpus > 1) under torchrun with its output streamed line by line."""
    run_dir = Path(run_dir)
    if params.gpus <= 1:
        return fit(params, run_dir, cohort, progress)
    resolve_device(params)   # no GPU, or too few: say so here, not in N subprocesses
    runfiles.freeze_if_changed(params, run_dir)   # what the workers read
    if cohort is not None:

        write_cohort(cohort, run_dir / COHORT)
    command = torchrun_command(params.gpus, run_dir)
    print("$ " + " ".join(command), flush=True)
    env = dict(os.environ, CXRLIB_BATCH="1", PYTHONUNBUFFERED="1")   # progress lines, not bars, through the pipe
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
        code = proc.wait()
    if code:
        raise UserError(f"torchrun exited with status {code} (see its output above). Fix the cause and run again "
                        "with resume: true (RESUME=1) to continue from the last checkpoint.")
    return result_from_history(params, run_dir)


def main(argv=None) -> int:
    """Entry point for torchrun: python -m cxrlib.training.train --run-dir runs/NAME."""
    parser = argparse.ArgumentParser(prog="python -m cxrlib.training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a run folder holding params.yaml and cohort.csv")
    args = parser.parse_args(argv)
    try:
        result = fit(runfiles.load_frozen(args.run_dir), args.run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if distributed()[0] == 0:
        print(f"best epoch {result['best_epoch']} ({result['select_metric']} {result['best_score']:.4f}); "
              f"checkpoints in {Path(result['best']).parent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
