"""Annealing schedules shared by models (Gumbel-Softmax temperatures, KL warm-up).

Each schedule maps a training step to a value; ``progress = step / total_steps`` in
``[0, 1]``."""

from __future__ import annotations

import math


def exponential_anneal(step: int, total_steps: int, start: float, end: float) -> float:
    """Geometric interpolation from ``start`` (step 0) to ``end`` (last step); both > 0."""
    if start <= 0 or end <= 0:
        raise ValueError("exponential_anneal needs positive start and end values")
    progress = min(1.0, step / max(1, total_steps - 1))
    return start * math.exp(progress * math.log(end / start))


def linear_warmup(step: int, warmup_steps: int, final: float) -> float:
    """0 at step 0, rising linearly to ``final`` at ``warmup_steps`` and flat after."""
    if warmup_steps <= 0:
        return final
    return final * min(1.0, step / warmup_steps)
