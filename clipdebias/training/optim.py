"""Optimizers and the learning-rate schedule, one place for every student.

Weight decay never applies to biases and normalisation weights (tensors of one dimension): one
helper, :func:`param_groups_weight_decay`, builds those groups for SGD and AdamW alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# SGD momentum of every SGD student (FixMatch, the DebiasPL reference code).
SGD_MOMENTUM = 0.9
# AdamW betas of the CLIP image-tower student (torch's defaults, written once).
ADAMW_BETAS = (0.9, 0.999)


def param_groups_weight_decay(
    module: nn.Module, weight_decay: float, lr: float | None = None
) -> list[dict[str, object]]:
    """Two parameter groups of ``module``'s trainable tensors: weights (``ndim > 1``) with
    ``weight_decay`` and 1-d tensors (biases, normalisation weights) without; ``lr`` is set on both
    groups when given (otherwise the optimizer's)."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    groups: list[dict[str, object]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if lr is not None:
        for group in groups:
            group["lr"] = lr
    return groups


def make_sgd(
    model: nn.Module, lr: float, weight_decay: float, momentum: float = SGD_MOMENTUM, nesterov: bool = True
) -> torch.optim.SGD:
    """SGD whose weight decay skips biases and normalisation weights (tensors of one dimension)."""
    return torch.optim.SGD(param_groups_weight_decay(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)


def make_adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW whose weight decay skips biases, normalisation weights and other 1-d tensors."""
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=ADAMW_BETAS)


def cosine_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then a half cosine from 1 to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + float(np.cos(np.pi * min(step - warmup_steps, span) / span)))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule for :func:`cosine_factor` (call ``scheduler.step()`` after each step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps, warmup_steps))
