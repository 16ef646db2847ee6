"""Learning-rate schedules as pure functions of the optimizer step (the formulas of HF transformers'
``get_{cosine,linear,constant}_schedule_with_warmup``, so the baseline and lorafleet agree)."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, num_warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < num_warmup:
        return step / max(1, num_warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - num_warmup) / max(1, total_steps - num_warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
