"""One optimizer step over micro-batches, on whichever backend the run uses.

- accelerate (single process, DDP): backward per micro-batch (`no_sync` until the last), the
  loss checked for NaN/inf across processes, then clip + AdamW step, or a skipped step.
- a DeepSpeed engine (from accelerate's DeepSpeed plugin or `deepspeed.initialize`): the engine
  clips and steps itself, so the loss is checked *before* backward. With one micro-batch a
  non-finite step is skipped whole; with several, the non-finite micro-batch contributes a zero
  loss so DeepSpeed's accumulation bookkeeping stays aligned.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator

from ernie_style.train.balancing import LossBalancer
from ernie_style.train.deepspeed_support import is_deepspeed_engine


class StepRunner:
    """Forward/backward/step for one training step; reports per-task losses and finiteness."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: Any,
        optimizer: Any,
        max_grad_norm: float,
        balancer: LossBalancer | None = None,
        shared_parameters: Sequence[torch.nn.Parameter] | None = None,
    ):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.engine = model if is_deepspeed_engine(model) else None
        #: Combines the step's task losses (None: their mean); see `ernie_style.train.balancing`.
        self.balancer = balancer
        self.shared_parameters = list(shared_parameters or [])

    def combine(self, outputs: list[Any]) -> torch.Tensor:
        """The scalar to backpropagate for one micro-batch's task outputs: their mean, or the
        balancer's weighted total divided by the number of tasks, plus any model-level
        `penalty` an output carries (a regulariser such as the soft towers' L2 pull)."""
        penalties = [p for o in outputs if (p := getattr(o, "penalty", None)) is not None]
        extra = sum(penalties) if penalties else 0.0
        if self.balancer is None:
            return sum(o.loss for o in outputs) / len(outputs) + extra
        losses = {o.task: o.loss for o in outputs}
        weighted = self.balancer(losses, shared_parameters=self.shared_parameters)
        return weighted / len(outputs) + extra

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _all_finite(self, values: list[float]) -> bool:
        flag = torch.tensor([float(all(math.isfinite(v) for v in values))])
        total = self.accelerator.reduce(flag.to(self.accelerator.device), reduction="sum")
        return int(total.item()) == self.accelerator.num_processes

    def _global_mean(self, totals: dict[str, float]) -> dict[str, float]:
        """Per-task losses averaged over processes (what the logs and CSV report)."""
        if self.accelerator.num_processes == 1:
            return totals
        values = torch.tensor(list(totals.values()), dtype=torch.float64)
        values = self.accelerator.reduce(values.to(self.accelerator.device), reduction="mean")
        return dict(zip(totals, values.cpu().tolist(), strict=True))

    def run(self, batches: dict[str, list[dict]], accum: int) -> tuple[dict[str, float], bool]:
        """Per-task mean loss over the micro-batches, and whether the step was applied."""
        self.model.train()
        if self.engine is not None:
            return self._run_deepspeed(batches, accum)
        totals = dict.fromkeys(batches, 0.0)
        for micro in range(accum):
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                outputs = self.model([b[micro] | {"task": t} for t, b in batches.items()])
                self.accelerator.backward(self.combine(outputs) / accum)
            for out in outputs:
                totals[out.task] += out.loss.detach().float().item() / accum
        if self.balancer is not None:
            self.balancer.sync_gradients()
        if not self._all_finite(list(totals.values())):
            self.optimizer.zero_grad(set_to_none=True)
            return self._global_mean(totals), False
        if self.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._global_mean(totals), True

    def _run_deepspeed(
        self, batches: dict[str, list[dict]], accum: int
    ) -> tuple[dict[str, float], bool]:
        engine = self.engine
        totals = dict.fromkeys(batches, 0.0)
        applied = True
        for micro in range(accum):
            outputs = engine([b[micro] | {"task": t} for t, b in batches.items()])
            losses = [o.loss.detach().float().item() for o in outputs]
            for out, value in zip(outputs, losses, strict=True):
                totals[out.task] += value / accum
            if self._all_finite(losses):
                engine.backward(self.combine(outputs))
            elif accum == 1:
                return self._global_mean(totals), False
            else:
                applied = False
                first = next(p for p in engine.module.parameters() if p.requires_grad)
                engine.backward(first.sum() * 0.0)
            if self.balancer is not None and micro == accum - 1:
                self.balancer.sync_gradients()
            engine.step()
        return self._global_mean(totals), applied
