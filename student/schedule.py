"""The optimiser and its learning-rate schedule: linear warm-up, then cosine decay, in optimiser steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    from .recipe import OptimConfig


@dataclass(frozen=True)
class CosineWarmup:
    """LR multiplier for step ``s``.

    Warm-up goes linearly from ``warmup_start_factor`` (step 0) to 1 (step
    ``warmup_steps``); the cosine then falls to ``final_factor`` at
    ``total_steps`` and stays there. A callable dataclass rather than a closure
    so that ``LambdaLR.state_dict()`` records these numbers with the schedule.
    """

    total_steps: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    final_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError("total_steps must be positive")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("warmup_steps must be within [0, total_steps]")
        if not 0.0 <= self.warmup_start_factor <= 1.0:
            raise ValueError("warmup_start_factor must be within [0, 1]")
        if not 0.0 <= self.final_factor <= 1.0:
            raise ValueError("final_factor must be within [0, 1]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps == 0:
            return self.final_factor
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_warmup_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    warmup_start_factor: float = 0.001,
    final_factor: float = 0.01,
) -> LambdaLR:
    """``LambdaLR`` with :class:`CosineWarmup`; call ``.step()`` once per optimiser step.

    Resume with ``scheduler.load_state_dict(saved)`` on a scheduler built the
    same way: the step count (and the schedule's numbers) come back with it.
    """
    schedule = CosineWarmup(total_steps, warmup_steps, warmup_start_factor, final_factor)
    return LambdaLR(optimizer, lr_lambda=schedule)


def build_optimizer(parameters: Sequence[tuple[str, nn.Parameter]], config: OptimConfig) -> Optimizer:
    """SGD or AdamW over the trainable ``(name, parameter)`` pairs; weight decay on weights
    of rank >= 2 only (not on biases and normalisation parameters)."""
    trainable = [(name, parameter) for name, parameter in parameters if parameter.requires_grad]
    decayed = [parameter for _, parameter in trainable if parameter.ndim >= 2]
    not_decayed = [parameter for _, parameter in trainable if parameter.ndim < 2]
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.adamw_betas)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)


def replan_schedule(scheduler: LambdaLR, optimizer: Optimizer, schedule: CosineWarmup, step: int) -> None:
    """Give a restored scheduler a new schedule (another length) from ``step`` on.

    A scheduler's state dict brings back the schedule it was saved with; a resumed
    run that trains longer or shorter re-plans the cosine for its own length.
    """
    scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
    for group, initial_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = initial_lr * schedule(step)
