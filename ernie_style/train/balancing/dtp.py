"""`dtp`: Dynamic Task Prioritization (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018).

The caller reports a key performance indicator κ_t ∈ [0, 1] per task (accuracy, F1, ...) with
`update_kpis`; it is smoothed with an exponential moving average
κ̄_t ← α·κ̄_t + (1 − α)·κ_t (the first report initialises it), and the task's focal weight is

    w_t = −(1 − κ̄_t)^γ · log κ̄_t,     κ̄_t clipped into [ε, 1 − ε], ε = 1e-6

so tasks that perform badly get large weights. Before a task's first KPI its weight is 1. With
`kpi_from_loss: true` every training `forward` reports κ_t = exp(−L_t) itself (for a
cross-entropy loss: the geometric-mean probability of the correct label).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ernie_style.components import OptionError, check_number
from ernie_style.config import option
from ernie_style.train.balancing.base import (
    LossBalancer,
    Reduce,
    float_option,
    register_balancer,
)

EPS = 1e-6


@register_balancer("dtp")
class DTPBalancer(LossBalancer):
    """Focal weights −(1 − κ)^γ log κ from smoothed per-task KPIs."""

    @dataclass
    class Config:
        """Options of `dtp`."""

        gamma: float = option(2.0, "focusing exponent γ >= 0")
        alpha: float = option(0.9, "KPI moving-average factor in [0, 1)")
        kpi_from_loss: bool = option(False, "report κ = exp(−loss) at every training step")

        def validate(self) -> None:
            """γ >= 0, α in [0, 1), kpi_from_loss a bool."""
            self.gamma = check_number("gamma", self.gamma, 0.0)
            self.alpha = check_number("alpha", self.alpha, 0.0, 1.0, open_high=True)
            if not isinstance(self.kpi_from_loss, bool):
                raise OptionError("kpi_from_loss", "must be true or false")

    def __init__(
        self,
        tasks: Sequence[str],
        reduce: Reduce | None = None,
        *,
        gamma: float = 2.0,
        alpha: float = 0.9,
        kpi_from_loss: bool = False,
    ) -> None:
        super().__init__(reduce)
        config = self._configure(gamma=gamma, alpha=alpha, kpi_from_loss=kpi_from_loss)
        self.gamma, self.alpha = config.gamma, config.alpha
        self.kpi_from_loss = config.kpi_from_loss
        self._add_tasks(tasks)

    def _new_state(self, task: str) -> dict[str, Any]:
        return {"kpi": None}

    def _weight(self, task: str) -> float:
        kpi = self._state[task]["kpi"]
        if kpi is None:
            return 1.0
        kpi = min(max(kpi, EPS), 1.0 - EPS)
        return -((1.0 - kpi) ** self.gamma) * math.log(kpi)

    def update_kpis(self, kpis: Mapping[str, float]) -> None:
        """Fold new KPIs (each in [0, 1]) into the moving averages. Call on every process at
        the same step; each task's KPI is averaged over the processes that report it."""
        for task, value in kpis.items():
            if task not in self._state:
                raise ValueError(f"KPI for unknown task {task!r}; known: {self.tasks}")
            if not isinstance(value, torch.Tensor):
                float_option("dtp", f"KPI of task {task!r}", value, 0.0, 1.0)
        self._fold({t: [v] for t, v in kpis.items()})

    def _fold(self, rows: Mapping[str, Sequence[float | torch.Tensor]]) -> None:
        for task, (kpi,) in self._sync(rows, 1).items():
            if not math.isfinite(kpi):
                continue
            state = self._state[task]
            old = state["kpi"]
            state["kpi"] = kpi if old is None else self.alpha * old + (1.0 - self.alpha) * kpi

    def _observe(
        self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter] | None
    ) -> None:
        if self.kpi_from_loss:
            self._fold({t: [torch.exp(-loss.detach().double())] for t, loss in losses.items()})
