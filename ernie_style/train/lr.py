"""Learning-rate multipliers: linear warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier (0..1) of the peak LR at `step` of `total`: linear warm-up over `warmup` steps,
    then constant, linear or cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if kind == "linear":
        return max(1.0 - progress, 0.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
