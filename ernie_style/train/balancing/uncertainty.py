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
from dataclasses import dataclass

import torch
from torch import nn

from ernie_style.components import check_number
from ernie_style.config import option
from ernie_style.train.balancing.base import LossBalancer, Reduce, register_balancer


@register_balancer("uncertainty")
class UncertaintyBalancer(LossBalancer):
    """Learned per-task log-variances `log_variances[task]`; weight exp(-s_t)."""

    @dataclass
    class Config:
        """Options of `uncertainty`."""

        init_log_variance: float = option(0.0, "initial s_t = log σ_t² of every task (weight 1)")

        def validate(self) -> None:
            """A finite number."""
            self.init_log_variance = check_number("init_log_variance", self.init_log_variance)

    def __init__(
        self, tasks: Sequence[str], reduce: Reduce | None = None, *, init_log_variance: float = 0.0
    ) -> None:
        super().__init__(reduce)
        self.init_log_variance = self._configure(
            init_log_variance=init_log_variance
        ).init_log_variance
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
