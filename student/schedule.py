"""Learning-rate schedule: linear warm-up, then cosine decay, counted in optimiser steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
