"""The objective and its optimisation: masked BCE (optional pos_weight), focal or asymmetric loss; Adam/AdamW,
warmup + constant or cosine."""
from __future__ import annotations

import functools
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


def masked_focal(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0,
                 alpha: float = -1.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, sigmoid form, as torchvision.ops.sigmoid_focal_loss) over the valid cells:
    BCE times (1 - p_t)^gamma, where p_t is the probability of the cell's true class; alpha in [0, 1] weighs the
    positives by alpha and the negatives by 1 - alpha, and -1 weighs neither."""
    logits = logits.float()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    loss = ce * (1 - (p * targets + (1 - p) * (1 - targets))) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def masked_asl(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, gamma_neg: float = 4.0,
               gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021, the CXR-LT 2023 winner's) over the valid cells: a negative's
    probability is shifted down by `clip` (easy negatives count for nothing) and focused by gamma_neg, a
    positive's by gamma_pos. gamma_neg = gamma_pos = clip = 0 is BCE."""
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p        # the shifted probability of a negative
    positive = targets * torch.log(p.clamp(min=eps)) * (1 - p) ** gamma_pos
    negative = (1 - targets) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg ** gamma_neg
    return (-(positive + negative) * mask).sum() / mask.sum().clamp_min(1.0)


def objective(params):
    """The training loss of `params.loss` as f(logits, targets, mask); None for plain BCE (train_step's
    default, masked_bce with pos_weight)."""
    if params.loss == "focal":
        return functools.partial(masked_focal, gamma=params.focal_gamma, alpha=params.focal_alpha)
    if params.loss == "asl":
        return functools.partial(masked_asl, gamma_neg=params.asl_gamma_neg, gamma_pos=params.asl_gamma_pos,
                                 clip=params.asl_clip)
    return None


def pos_weight_from_labels(labels: np.ndarray, names=None) -> torch.Tensor:
    """labels.positive_weights as BCE's pos_weight tensor (`names`: the labels, for its warning)."""
    return torch.tensor(positive_weights(labels, names), dtype=torch.float32)


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
