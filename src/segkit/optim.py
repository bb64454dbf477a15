"""Learning-rate schedules stepped once per optimisation step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, PolynomialLR, SequentialLR

from segkit import SegkitError


def poly_lr(
    optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0, warmup_factor: float = 1e-3
) -> LRScheduler:
    """``lr * (1 - step / total) ** power`` after an optional linear warm-up from ``lr * warmup_factor``."""
    if not math.isfinite(total_steps) or total_steps <= 0:
        raise SegkitError("the poly schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
    total_steps = int(total_steps)
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    decay = PolynomialLR(optimizer, total_iters=total_steps - warmup_steps, power=power)
    if warmup_steps <= 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
