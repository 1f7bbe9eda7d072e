"""`equal`: every task has weight 1, so the total is the plain sum of the step's losses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ernie_style.train.balancing.base import LossBalancer, Reduce, register_balancer


@register_balancer("equal")
class EqualBalancer(LossBalancer):
    """Weight 1 for every task; no options, no state."""

    @dataclass
    class Config:
        """No options."""

    def __init__(self, tasks: Sequence[str], reduce: Reduce | None = None) -> None:
        super().__init__(reduce)
        self._add_tasks(tasks)
