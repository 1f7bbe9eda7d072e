"""Loss balancing: how per-task losses become the one scalar a step backpropagates.

Shared by the pretraining engine and the fine-tuning trainer. Strategies (`BALANCERS`), chosen by
name with `build_balancer(name, tasks, options, reduce)`; formulas in docs/loss_balancing.md.
A strategy is one `LossBalancer` subclass decorated with `@register_balancer("name")` with its
options in a nested `Config` dataclass (run configs validate `balancing_options` against it):

    equal        weight 1 per task (the total is the sum of the step's losses)
    fixed        constant weights from option `weights`
    uncertainty  learned log-variances s_t: Σ exp(-s_t)·L_t + s_t   (Kendall et al. 2018)
    dwa          Dynamic Weight Average over windows of steps        (Liu et al. 2019)
    gradnorm     GradNorm on the last shared layer, EMA estimates    (Chen et al. 2018)
    dtp          Dynamic Task Prioritization from per-task KPIs      (Guo et al. 2018)

A balancer is an `nn.Module`. Per step (a step may hold one task or several):

    total = balancer({task: loss, ...}, shared_parameters=last_layer_params)  # unscaled losses
    backward(total / accum)      # the balancer's returned total; weights are constants in it
    balancer.sync_gradients()    # after the last backward, before clipping/optimizer.step()
    balancer.end_window()        # every `window` steps (dwa; no-op elsewhere)
    balancer.update_kpis({...})  # whenever KPIs are measured (dtp; no-op elsewhere)
    log(balancer.weights())

- `balancer.parameters()` (only `uncertainty` has any) go into the optimizer, without weight
  decay; move the balancer to the training device (`balancer.to(device)`).
- `shared_parameters` is needed when `balancer.needs_shared_parameters` (gradnorm): the
  parameters of the last shared layer only, which bounds the extra cost to one
  `torch.autograd.grad` per task in the step through the heads and that layer.
- Statistics are learned only in training mode with grad enabled (`balancer.eval()` makes
  `forward` a pure weighted sum).
- Distributed: `reduce` (a mean or a sum over processes, e.g.
  `functools.partial(accelerator.reduce, reduction="mean")`) is applied to every statistic
  that drives a weight update, so every process holds the same weights. Processes may see
  different tasks in a step, but must make the same calls (forward, end_window, update_kpis,
  sync_gradients) at the same steps, because each may call `reduce`.
- `state_dict()` holds everything (EMAs, initial losses, window history, KPIs) as tensors and
  plain containers (`torch.load(weights_only=True)` reads it). Loading a checkpoint that lacks
  some of this balancer's tasks keeps their fresh state (resume with new tasks);
  `add_task(name)` registers a task later and leaves the others untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ernie_style.components import balancer_registry, option_values
from ernie_style.train.balancing.base import LossBalancer, Reduce, register_balancer

# The built-in strategies register themselves on import, in this (documented) order.
# isort: off
from ernie_style.train.balancing.equal import EqualBalancer
from ernie_style.train.balancing.fixed import FixedBalancer
from ernie_style.train.balancing.uncertainty import UncertaintyBalancer
from ernie_style.train.balancing.dwa import DWABalancer
from ernie_style.train.balancing.gradnorm import GradNormBalancer
from ernie_style.train.balancing.dtp import DTPBalancer

# isort: on

#: The built-in strategies (`registered_balancers()` also lists ones registered later).
BALANCERS: tuple[str, ...] = balancer_registry.names()

__all__ = [
    "BALANCERS",
    "DTPBalancer",
    "DWABalancer",
    "EqualBalancer",
    "FixedBalancer",
    "GradNormBalancer",
    "LossBalancer",
    "Reduce",
    "UncertaintyBalancer",
    "balancer_class",
    "build_balancer",
    "check_options",
    "register_balancer",
    "registered_balancers",
]


def registered_balancers() -> tuple[str, ...]:
    """Every registered strategy name: the built-ins, then those registered later."""
    return balancer_registry.names()


def balancer_class(name: str) -> type[LossBalancer]:
    """The class of strategy `name`; a ValueError lists the valid names."""
    return balancer_registry.get(name)


def build_balancer(
    name: str,
    tasks: Sequence[str],
    options: Mapping[str, Any] | Any | None = None,
    reduce: Reduce | None = None,
) -> LossBalancer:
    """A balancer of strategy `name` over `tasks`; `options` (a mapping, or the strategy's
    `Config`) override the defaults of its `Config`. Unknown names, option keys and bad
    option values are ValueErrors."""
    cls = balancer_class(name)
    config = balancer_registry.parse(name, options)
    return cls(tasks, reduce=reduce, **option_values(config))


def check_options(name: str, options: Mapping[str, Any] | None = None, key: str = "") -> Any:
    """Validate a strategy name and its options without tasks (for config validation): the
    strategy's `Config`; with `key` ("balancing_options") errors name the dotted key."""
    return balancer_registry.parse(name, options, key)
