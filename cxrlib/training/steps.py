"""One optimizer step and one epoch of them: the inner loop that fit (train.py) drives.

train_one_epoch runs `steps` batches from where `position` says the epoch stands (a resumed epoch
continues at its next batch), keeps the loss on the device until a few steps are pending (one wait
for the GPU per group), and updates `position` in place so a checkpoint can be taken at any step.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..progress import bar as progress_bar
from .optim import masked_bce
from .runtime import step_seed


def train_step(model, images, targets, mask, optimizer, scaler, pos_weight=None, amp=None,
               grad_clip: float = 0.0, loss_fn=None) -> torch.Tensor:
    """Forward, masked loss, backward and exactly one optimizer.step (GradScaler skips it on inf/NaN).
    loss_fn(logits, targets, mask): optim.objective's focal or asymmetric loss; None: BCE with pos_weight."""
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        logits = model(images)
    loss = masked_bce(logits, targets, mask, pos_weight) if loss_fn is None else loss_fn(logits, targets, mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)   # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def new_position() -> dict:
    """Where training stands: the next batch to run and the running totals of the current epoch."""
    return {"epoch": 0, "step": 0, "batch": 0, "loss_sum": 0.0, "cells": 0.0, "images": 0, "seconds": 0.0}


# On a GPU, reading the loss back (float(loss)) waits for the step to finish, and the CPU then cannot
# queue the next step's kernels while the GPU runs this one. The loop reads losses back in groups.
GPU_SYNC_EVERY = 25


def train_one_epoch(model, loader, transform, optimizer, scheduler, scaler, device, position: dict, *,
                    steps: int, seed: int = 0, rank: int = 0, pos_weight=None, loss_fn=None, amp=None,
                    grad_clip: float = 0.0,
                    channels_last: bool = False, after_step=None, progress: bool = True, epochs: int = 0,
                    log_step=None) -> dict:
    """Run batches position['batch'] .. steps-1 of epoch position['epoch'], updating `position` in place.

    The loader must already skip the batches done (EpochSampler start_batch). `position` is brought up
    to date after every step on the CPU and every GPU_SYNC_EVERY steps on a GPU (and at the epoch's
    end); after_step(position) runs at each of those points (fit saves mid-epoch checkpoints there), and
    log_step(step, loss, lr) once per step read back (the tracker).
    """
    model.train()
    transform.train()
    epoch = position["epoch"]
    sync_every = GPU_SYNC_EVERY if device.type == "cuda" else 1
    bar = progress_bar(steps, f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}", "batches",
                       initial=position["batch"], enabled=progress)
    started = time.perf_counter()
    done_before, seconds_before = position["images"], position["seconds"]
    pending = []   # (loss on the device, valid cells, images) of the steps not yet read back

    def catch_up() -> None:
        losses = torch.stack([loss for loss, _, _, _ in pending]).tolist()   # the one wait for the GPU
        first_step = position["step"] - len(pending) + 1
        for i, (value, (_, cells, count, lr)) in enumerate(zip(losses, pending)):
            position["loss_sum"] += value * cells
            position["cells"] += cells
            position["images"] += count
            if log_step is not None:
                log_step(first_step + i, value, lr)
        elapsed = time.perf_counter() - started
        position["seconds"] = seconds_before + elapsed   # kept in mid-epoch checkpoints, for img/s
        bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{(position['images'] - done_before) / elapsed:.1f}")
        bar.update(len(pending))
        pending.clear()
        if after_step is not None:
            after_step(position)

    for images, targets, mask, _ in loader:
        if position["batch"] >= steps:
            break
        torch.manual_seed(step_seed(seed, rank, epoch, position["step"]))  # dropout, independent of history
        cells = float(mask.sum())   # on the CPU, before the copy: no wait for the device
        images = images.to(device, non_blocking=True)
        targets, mask = targets.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        x = transform(images, epoch=epoch, step=position["step"])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = optimizer.param_groups[0]["lr"]
        loss = train_step(model, x, targets, mask, optimizer, scaler, pos_weight, amp, grad_clip, loss_fn)
        scheduler.step()
        pending.append((loss, cells, len(images), lr))
        position["step"] += 1
        position["batch"] += 1
        if len(pending) >= sync_every or position["batch"] >= steps:
            catch_up()
    if pending:
        catch_up()
    bar.close()
    return position
