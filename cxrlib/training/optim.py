"""The objective and its optimisation: masked BCE with optional pos_weight, Adam/AdamW, warmup + constant or cosine."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..labels import positive_weights


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight=None) -> torch.Tensor:
    """BCE-with-logits averaged over the valid (mask = 1) cells; masked cells add nothing.

    With no masked cell this is nn.BCEWithLogitsLoss(pos_weight=...)(logits, targets).
    """
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def pos_weight_from_labels(labels: np.ndarray) -> torch.Tensor:
    """labels.positive_weights as BCE's pos_weight tensor."""
    return torch.tensor(positive_weights(labels), dtype=torch.float32)


def parameter_groups(model: nn.Module, params) -> list[dict]:
    """The head at lr, the backbone (stem and body) at lr x backbone_lr; frozen weights are left out."""
    head = getattr(model, "head", None)
    if head is None or params.backbone_lr == 1.0:
        return [{"params": [w for w in model.parameters() if w.requires_grad], "lr": params.lr}]
    in_head = {id(w) for w in head.parameters()}
    backbone = [w for w in model.parameters() if w.requires_grad and id(w) not in in_head]
    groups = [{"params": [w for w in head.parameters() if w.requires_grad], "lr": params.lr}]
    return groups + ([{"params": backbone, "lr": params.lr * params.backbone_lr}] if backbone else [])


def make_optimizer(model: nn.Module, params) -> torch.optim.Optimizer:
    groups = parameter_groups(model, params)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.Adam(groups, lr=params.lr, weight_decay=params.weight_decay)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """The multiplier of lr for optimizer step `step` (0-based): linear warmup, then constant or cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, params, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR; its state is just the step count, the function is rebuilt from params."""
    warmup = round(params.warmup_epochs * steps_per_epoch)
    total = params.epochs * steps_per_epoch

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total, params.schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
