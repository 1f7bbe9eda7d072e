"""`dwa`: Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

Training is cut into windows ("epochs") by the caller's `end_window` calls. With L_k(n) the mean
loss of task k over window n and r_k = L_k(n-1) / L_k(n-2), the weights for the next window are

    w_k = K · exp(r_k / T) / Σ_i exp(r_i / T)

so a task whose loss falls slowly (r near 1 or above) gets more weight. A task needs two windows
of history first; until then its weight is 1, and the softmax runs over the K tasks that have it
(so the weights always sum to the number of tasks). A task absent from a window keeps its last
two window means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ernie_style.components import check_number
from ernie_style.config import option
from ernie_style.train.balancing.base import TINY, LossBalancer, Reduce, register_balancer


@register_balancer("dwa")
class DWABalancer(LossBalancer):
    """Weights from the ratio of the last two window-mean losses, softmax with temperature T."""

    @dataclass
    class Config:
        """Options of `dwa`."""

        temperature: float = option(2.0, "softmax temperature T > 0 (large T: weights near 1)")

        def validate(self) -> None:
            """T > 0."""
            self.temperature = check_number("temperature", self.temperature, 0.0, open_low=True)

    def __init__(
        self, tasks: Sequence[str], reduce: Reduce | None = None, *, temperature: float = 2.0
    ) -> None:
        super().__init__(reduce)
        self.temperature = self._configure(temperature=temperature).temperature
        self._add_tasks(tasks)

    def _new_state(self, task: str) -> dict[str, Any]:
        # last/before_last: the two latest window means; sum/count: the open window's losses.
        return {"weight": 1.0, "last": None, "before_last": None, "sum": 0.0, "count": 0}

    def _weight(self, task: str) -> float:
        return self._state[task]["weight"]

    def _observe(
        self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter] | None
    ) -> None:
        for task, loss in losses.items():  # stays on the device: no sync per step
            state = self._state[task]
            state["sum"] = state["sum"] + loss.detach().reshape(()).double()
            state["count"] += 1

    def end_window(self, mean_losses: Mapping[str, float] | None = None) -> None:
        """Close the window: record each task's mean loss (`mean_losses`, or else the mean of
        the losses `forward` saw in training mode since the last call) and set new weights.
        Call on every process at the same step."""
        if mean_losses is None:
            rows = {t: [s["sum"], s["count"]] for t, s in self._state.items() if s["count"]}
        else:
            unknown = [t for t in mean_losses if t not in self._state]
            if unknown:
                raise ValueError(f"mean losses for unknown task(s) {unknown}; known: {self.tasks}")
            rows = {t: [v, 1.0] for t, v in mean_losses.items()}
        means = self._sync(rows, 2)
        for state in self._state.values():
            state["sum"], state["count"] = 0.0, 0
        for task, (total, count) in means.items():
            mean = total / count
            if math.isfinite(mean):
                state = self._state[task]
                state["before_last"], state["last"] = state["last"], mean
        ready = [t for t in self.tasks if self._state[t]["before_last"] is not None]
        if not ready:
            return
        ratios = [self._state[t]["last"] / max(self._state[t]["before_last"], TINY) for t in ready]
        top = max(ratios)
        exps = [math.exp((r - top) / self.temperature) for r in ratios]
        for task, e in zip(ready, exps, strict=True):
            self._state[task]["weight"] = len(ready) * e / sum(exps)
