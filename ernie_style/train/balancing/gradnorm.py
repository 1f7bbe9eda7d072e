"""`gradnorm`: gradient normalisation (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

On the parameters W of the last shared layer (the caller passes them), with weights w_i:

    G_i = ||∇_W w_i L_i|| = w_i · g_i,   L̃_i = L_i / L_i(0),   r_i = L̃_i / mean_j L̃_j
    L_grad = Σ_i |G_i − mean_j G_j · r_i^α|      (the targets mean(G)·r^α are constants)

so a task whose loss falls slower than the others (r_i > 1) is pushed to a larger gradient
norm. Made for one-task-per-step sampling: each task keeps moving averages (`ema`) of its
unweighted gradient norm g_i and loss L_i, updated when the task is in the step, and every
update moves all weights from these estimates. The gradient is analytic,
∂L_grad/∂w_i = sign(G_i − target_i) · g_i, and the step divides it by mean_j g_j (a positive
constant, so the same minimiser) to make `lr` independent of the model's gradient scale:

    w_i ← max(w_i − lr · sign(G_i − target_i) · g_i / mean_j g_j, 1e-3),  then Σ w_i = K.

Weights change only once two tasks have estimates; ema 0 with every task in every step is
the paper's update.
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

MIN_WEIGHT = 1e-3


@register_balancer("gradnorm")
class GradNormBalancer(LossBalancer):
    """Weights that equalise (rate-adjusted) gradient norms on the last shared layer."""

    @dataclass
    class Config:
        """Options of `gradnorm`."""

        alpha: float = option(1.5, "restoring force α >= 0 towards the tasks' training rates")
        lr: float = option(0.025, "step size > 0 of the weight update")
        ema: float = option(0.9, "moving-average factor in [0, 1) of losses and gradient norms")

        def validate(self) -> None:
            """α >= 0, lr > 0, ema in [0, 1)."""
            self.alpha = check_number("alpha", self.alpha, 0.0)
            self.lr = check_number("lr", self.lr, 0.0, open_low=True)
            self.ema = check_number("ema", self.ema, 0.0, 1.0, open_high=True)

    needs_shared_parameters = True

    def __init__(
        self,
        tasks: Sequence[str],
        reduce: Reduce | None = None,
        *,
        alpha: float = 1.5,
        lr: float = 0.025,
        ema: float = 0.9,
    ) -> None:
        super().__init__(reduce)
        config = self._configure(alpha=alpha, lr=lr, ema=ema)
        self.alpha, self.lr, self.ema = config.alpha, config.lr, config.ema
        self._add_tasks(tasks)

    def _new_state(self, task: str) -> dict[str, Any]:
        return {"weight": 1.0, "initial_loss": None, "loss": None, "grad_norm": None}

    def _weight(self, task: str) -> float:
        return self._state[task]["weight"]

    def _observe(
        self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter] | None
    ) -> None:
        if shared_parameters is None:
            raise ValueError(
                "loss balancing 'gradnorm' needs shared_parameters: the last shared layer's "
                "parameters, e.g. list(encoder.layer[-1].parameters())"
            )
        params = [p for p in shared_parameters if p.requires_grad]
        if not params:
            raise ValueError("gradnorm: shared_parameters holds no parameter that requires grad")
        rows: dict[str, list[float | torch.Tensor]] = {}
        for task, loss in losses.items():
            if not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            norms = [torch.linalg.vector_norm(g.float()) for g in grads if g is not None]
            if not norms:
                raise ValueError(f"gradnorm: the loss of task {task!r} does not depend on W")
            norm = torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]
            rows[task] = [loss.detach().reshape(()).float(), norm]
        self._update(self._sync(rows, 2))

    def _update(self, measured: Mapping[str, Sequence[float]]) -> None:
        for task, (loss, norm) in measured.items():
            if not (math.isfinite(loss) and math.isfinite(norm)):
                continue
            state = self._state[task]
            if state["initial_loss"] is None:
                state["initial_loss"] = loss
            for key, value in (("loss", loss), ("grad_norm", norm)):
                old = state[key]
                state[key] = value if old is None else self.ema * old + (1.0 - self.ema) * value
        known = [self._state[t] for t in self.tasks if self._state[t]["grad_norm"] is not None]
        if not measured or len(known) < 2:
            return
        mean_g = sum(s["grad_norm"] for s in known) / len(known)
        if mean_g <= 0:
            return
        mean_big_g = sum(s["weight"] * s["grad_norm"] for s in known) / len(known)
        rates = [max(s["loss"], 0.0) / max(s["initial_loss"], TINY) for s in known]
        mean_rate = max(sum(rates) / len(rates), TINY)
        for s, rate in zip(known, rates, strict=True):
            target = mean_big_g * (rate / mean_rate) ** self.alpha
            gap = s["weight"] * s["grad_norm"] - target
            sign = float((gap > 0) - (gap < 0))
            step = self.lr * sign * s["grad_norm"] / mean_g
            s["weight"] = max(s["weight"] - step, MIN_WEIGHT)
        scale = len(known) / sum(s["weight"] for s in known)
        for s in known:
            s["weight"] *= scale
