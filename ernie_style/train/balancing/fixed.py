"""`fixed`: user-given constant weights, one per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ernie_style.components import OptionError, check_number
from ernie_style.config import option
from ernie_style.train.balancing.base import LossBalancer, Reduce, register_balancer


@register_balancer("fixed")
class FixedBalancer(LossBalancer):
    """Constant weights from option `weights: {task: weight >= 0}`; every task needs one."""

    @dataclass
    class Config:
        """Options of `fixed`."""

        weights: dict[str, float] | None = option(
            None,
            "task -> constant weight >= 0, one for every task (fine-tuning default: each "
            "task's loss_weight)",
        )

        def validate(self) -> None:
            """Every weight a finite number >= 0 (as float)."""
            if self.weights is None:
                return
            if not isinstance(self.weights, Mapping):
                raise OptionError("weights", "must map task -> weight")
            self.weights = {
                str(task): check_number(f"weights.{task}", w, 0.0)
                for task, w in self.weights.items()
            }

    def __init__(
        self,
        tasks: Sequence[str],
        reduce: Reduce | None = None,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(reduce)
        self.fixed_weights: dict[str, float] = self._configure(weights=weights).weights or {}
        self.options = {"weights": dict(self.fixed_weights)}
        missing = [t for t in tasks if t not in self.fixed_weights]
        if missing:
            raise ValueError(
                f"loss balancing 'fixed': option 'weights' has no weight for task(s) {missing}"
            )
        self._add_tasks(tasks)

    def add_task(self, name: str) -> None:
        """Register a task; it must have a weight in option `weights`."""
        if name not in self.fixed_weights:
            raise ValueError(
                f"loss balancing 'fixed': option 'weights' has no weight for task {name!r}"
            )
        super().add_task(name)

    def _weight(self, task: str) -> float:
        return self.fixed_weights[task]
