"""`fixed`: user-given constant weights, one per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ernie_style.train.balancing.base import LossBalancer, Reduce, float_option


class FixedBalancer(LossBalancer):
    """Constant weights from option `weights: {task: weight >= 0}`; every task needs one."""

    name = "fixed"
    defaults = MappingProxyType({"weights": None})

    def __init__(
        self,
        tasks: Sequence[str],
        reduce: Reduce | None = None,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(reduce)
        if weights is None:
            weights = {}
        if not isinstance(weights, Mapping):
            raise ValueError("loss balancing 'fixed': option 'weights' must map task -> weight")
        self.fixed_weights = {
            str(task): float_option("fixed", f"weights.{task}", w, 0.0)
            for task, w in weights.items()
        }
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
