"""Learning-rate schedule over the continual plan: linear warm-up, then linear or cosine decay,
restarted at each stage (ERNIE 2.0 trains each stage like a fresh phase) or once for the run."""

from __future__ import annotations

import math

from ernie_style.schedule import ContinualSchedule


class StageLR:
    """LR multiplier (0..1) for a global step, given the schedule's stage boundaries."""

    def __init__(
        self, schedule: ContinualSchedule, warmup_steps: int, kind: str, per_stage: bool
    ) -> None:
        if kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown LR schedule {kind!r}")
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.kind = kind
        self.per_stage = per_stage

    def _phase(self, step: int) -> tuple[int, int]:
        """(steps into the phase, phase length) for a global step."""
        if not self.per_stage:
            return step, self.schedule.total_steps
        for stage in range(len(self.schedule.stages)):
            start, length = self.schedule.stage_start(stage), self.schedule.stage_length(stage)
            if step < start + length:
                return step - start, length
        return self.schedule.total_steps, self.schedule.total_steps

    def factor(self, step: int) -> float:
        """Multiplier of the peak LR at global `step` (0-based)."""
        local, length = self._phase(step)
        # Short phases get a proportionally short warm-up (at most half the phase).
        warmup = min(self.warmup_steps, max(length // 2, 1))
        return lr_factor(local, length, warmup, self.kind)


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
