"""Per-iteration cosine learning-rate schedule with linear warmup (timm CosineLRScheduler, t_in_epochs=False)."""

from __future__ import annotations

import math
from typing import Any

import torch


class CosineWarmupSchedule:
    """``lr(it)``: WARMUP_LR -> BASE_LR linearly over ``warmup_steps``, then cosine down to MIN_LR at
    ``total_steps``. ``step(it)`` writes the rate into every parameter group (scaled by its ``lr_scale``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 warmup_lr: float = 0.0, min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.base_lr, self.warmup_lr, self.min_lr = float(base_lr), float(warmup_lr), float(min_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.iteration = 0

    def lr_at(self, iteration: int) -> float:
        """The learning rate at ``iteration`` (0-based)."""
        if iteration < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * iteration / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (iteration - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def step(self, iteration: int | None = None) -> float:
        """Set the rate for ``iteration`` (default: the next one) and return it."""
        self.iteration = self.iteration if iteration is None else int(iteration)
        lr = self.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.iteration += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "base_lr": self.base_lr, "warmup_lr": self.warmup_lr,
                "min_lr": self.min_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
