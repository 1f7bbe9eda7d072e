"""`uncertainty`: homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

Each task t has a learned log-variance s_t = log σ_t² (an `nn.Parameter` that the caller puts in
the optimizer, without weight decay) and contributes

    exp(-s_t) · L_t + s_t

to the total. Convention: the same form for every task, i.e. twice the paper's Gaussian negative
log-likelihood ½·exp(-s)·L + ½·s for a mean-squared-error loss (a constant factor), and the
paper's classification form exp(-s)·L + ½·s with the regulariser doubled. Either way the optimum
is s_t* = log E[L_t]: for an MSE loss s_t tends to the log of the task's residual variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from ernie_style.train.balancing.base import LossBalancer, Reduce, float_option


class UncertaintyBalancer(LossBalancer):
    """Learned per-task log-variances `log_variances[task]`; weight exp(-s_t)."""

    name = "uncertainty"
    defaults = MappingProxyType({"init_log_variance": 0.0})

    def __init__(
        self, tasks: Sequence[str], reduce: Reduce | None = None, *, init_log_variance: float = 0.0
    ) -> None:
        super().__init__(reduce)
        self.init_log_variance = float_option("uncertainty", "init_log_variance", init_log_variance)
        self.options = {"init_log_variance": self.init_log_variance}
        self.log_variances = nn.ParameterDict()
        self._add_tasks(tasks)

    def add_task(self, name: str) -> None:
        """Register a task with s = `init_log_variance`; add its parameter to the optimizer."""
        super().add_task(name)
        value = torch.full((), self.init_log_variance, device=self._anchor.device)
        self.log_variances[name] = nn.Parameter(value)

    def _task_parameter_keys(self, task: str) -> list[str]:
        return [f"log_variances.{task}"]

    def _total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = []
        for task, loss in losses.items():
            s = self.log_variances[task]
            terms.append(torch.exp(-s) * loss.reshape(()).float() + s)
        return torch.stack(terms).sum()

    def _weight(self, task: str) -> float:
        return math.exp(-float(self.log_variances[task].detach()))
