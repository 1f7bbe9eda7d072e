"""`LossBalancer`: the base class every strategy extends, and its option checks.

A balancer keeps plain per-task state (`self._state[task]`, a dict of floats/None) that it saves
through `get_extra_state`, so `state_dict()` holds tensors and plain containers only and loads
with `torch.load(weights_only=True)`. Every statistic that drives a weight update goes through
`_sync`, one `reduce` call per update, so all processes compute the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ernie_style.components import (
    OptionError,
    balancer_registry,
    check_number,
    option_defaults,
    option_values,
)

# Averages (or sums) a tensor over processes: partial(accelerator.reduce, reduction="mean").
Reduce = Callable[[torch.Tensor], torch.Tensor]

TINY = 1e-12


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def float_option(
    strategy: str,
    key: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """`value` as a finite float inside the interval, else an `OptionError` (a ValueError)
    naming the strategy and the option."""
    try:
        return check_number(key, value, low, high, open_low=open_low, open_high=open_high)
    except OptionError as error:
        raise balancer_registry.explain(strategy, error) from None


@dataclass
class NoOptions:
    """A strategy without options."""


B = TypeVar("B", bound=type)


def register_balancer(name: str) -> Callable[[B], B]:
    """Class decorator: register a `LossBalancer` subclass as strategy `name`, which configs
    can then name in `balancing` (its `Config` validates `balancing_options`)."""

    def decorate(cls: B) -> B:
        if not (isinstance(cls, type) and issubclass(cls, LossBalancer)):
            raise TypeError(f"@register_balancer({name!r}) decorates LossBalancer subclasses")
        return balancer_registry.register(name)(cls)

    return decorate


class LossBalancer(nn.Module):
    """Base: combines per-task losses into the scalar to backpropagate.

    A strategy is one subclass decorated with `@register_balancer("name")` (which sets `name`)
    that declares its options as a nested `Config` dataclass (`validate()` checks their ranges)
    and takes the same options as keyword-only `__init__` arguments, passed through
    `self._configure(...)`. It implements `_weight` (and `_observe` when it learns from the
    losses) and calls `self._add_tasks(tasks)` at the end of `__init__`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    #: Each option's default, derived from `Config`.
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    needs_shared_parameters: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Derive `defaults` from the subclass's `Config`, which must be a dataclass."""
        super().__init_subclass__(**kwargs)
        if not (isinstance(cls.Config, type) and dataclasses.is_dataclass(cls.Config)):
            raise TypeError(f"{cls.__name__} must declare its options as a `Config` dataclass")
        cls.defaults = MappingProxyType(option_defaults(cls.Config))

    def __init__(self, reduce: Reduce | None = None) -> None:
        super().__init__()
        self.reduce: Reduce = reduce if reduce is not None else _identity
        self._warned_identity = False
        self.tasks: list[str] = []
        self.options: dict[str, Any] = {}  # the strategy's option values, for logs and repr
        self._state: dict[str, dict[str, Any]] = {}
        self._device: torch.device | None = None
        self._load_prefix = ""
        self._loaded_tasks: set[str] | None = None
        # Follows .to(device): the device of reduce() calls made before any loss was seen.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.register_load_state_dict_post_hook(LossBalancer._allow_new_task_keys)

    def _configure(self, **values: Any) -> Any:
        """The validated `Config` of these option values; sets `self.options`. A bad value is
        an `OptionError` naming the strategy and the option."""
        try:
            config = self.Config(**values)
            validate = getattr(config, "validate", None)
            if callable(validate):
                validate()
        except OptionError as error:
            raise balancer_registry.explain(self.name, error) from None
        self.options = option_values(config)
        return config

    # ---- tasks --------------------------------------------------------------------------
    def add_task(self, name: str) -> None:
        """Register a new task with fresh state (weight 1 or the strategy's start value); the
        other tasks keep theirs. Parameters it creates (`uncertainty`) must join the optimizer."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task names must be non-empty strings without '.', got {name!r}")
        if name in self._state:
            raise ValueError(f"task {name!r} is already registered with the balancer")
        self.tasks.append(name)
        self._state[name] = self._new_state(name)

    def _add_tasks(self, tasks: Iterable[str]) -> None:
        if isinstance(tasks, str):
            raise ValueError(f"tasks must be a sequence of names, got the string {tasks!r}")
        for task in tasks:
            self.add_task(task)

    def _new_state(self, task: str) -> dict[str, Any]:
        """Fresh per-task state (plain floats/None); saved by `get_extra_state`."""
        return {}

    def _task_parameter_keys(self, task: str) -> list[str]:
        """state_dict keys (without prefix) of parameters that belong to `task`."""
        return []

    # ---- combining ----------------------------------------------------------------------
    def forward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_parameters: Sequence[nn.Parameter] | None = None,
    ) -> torch.Tensor:
        """The weighted total of this step's per-task losses (plus regularisers), to call
        backward on. In training mode with grad enabled it also updates the strategy's
        statistics (one `reduce` call for strategies that learn from losses)."""
        if not losses:
            raise ValueError("losses is empty: pass {task: scalar loss} for this step's tasks")
        unknown = [t for t in losses if t not in self._state]
        if unknown:
            raise ValueError(f"losses for unknown task(s) {unknown}; registered: {self.tasks}")
        for task, loss in losses.items():
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"the loss of task {task!r} must be a scalar tensor")
        self._device = next(iter(losses.values())).device
        total = self._total(losses)
        if self.training and torch.is_grad_enabled():
            self._observe(losses, shared_parameters)
        return total

    def _total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = [self._weight(task) * loss.reshape(()) for task, loss in losses.items()]
        return torch.stack(terms).sum() if len(terms) > 1 else terms[0]

    def _weight(self, task: str) -> float:
        return 1.0

    def _observe(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_parameters: Sequence[nn.Parameter] | None,
    ) -> None:
        """Learn from this step's losses (training mode only)."""

    def weights(self) -> dict[str, float]:
        """Current weight of every registered task, for logging."""
        return {task: self._weight(task) for task in self.tasks}

    def end_window(self, mean_losses: Mapping[str, float] | None = None) -> None:
        """Close a window of steps (`dwa`; a no-op elsewhere)."""

    def update_kpis(self, kpis: Mapping[str, float]) -> None:
        """Report per-task KPIs in [0, 1] (`dtp`; a no-op elsewhere)."""

    def sync_gradients(self) -> None:
        """Average the gradients of the balancer's own parameters over processes with `reduce`
        (a parameter with no gradient on any process keeps None). Call after the last backward
        of a step, before clipping and `optimizer.step()`, on every process."""
        params = list(self.parameters())
        if not params:
            return
        self._check_reduce()
        device = params[0].device
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten()
            for p in params
        ]
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
        ones = torch.ones(1, dtype=torch.float64)
        packed = torch.cat([*flat, present.to(device), ones.to(device)])
        packed = self.reduce(packed)
        processes = packed[-1]  # 1 for a mean reduction, the process count for a sum
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            if float(packed[-1 - len(params) + i]) > 0:
                grad = (packed[offset : offset + n] / processes).view_as(p)
                p.grad = grad.to(dtype=p.dtype, device=p.device)
            offset += n

    # ---- distributed statistics ---------------------------------------------------------
    def _sync(
        self, rows: Mapping[str, Sequence[float | torch.Tensor]], width: int
    ) -> dict[str, list[float]]:
        """Per-task statistics averaged over the processes that report them.

        `rows[task]` holds `width` numbers this process measured for `task`. One `reduce` call
        over a (tasks x width+1) table whose last column flags presence gives, for every task
        any process reported, its row averaged over those processes (the same on every process,
        for a mean or a sum reduction). Every process must call this the same number of times.
        """
        self._check_reduce()
        device = self._device if self._device is not None else self._anchor.device
        table = torch.zeros(len(self.tasks), width + 1, dtype=torch.float64, device=device)
        for task, row in rows.items():
            i = self.tasks.index(task)
            for j, value in enumerate(row):
                if isinstance(value, torch.Tensor):
                    table[i, j] = value.detach().reshape(()).to(device, torch.float64)
                else:
                    table[i, j] = float(value)
            table[i, width] = 1.0
        values = self.reduce(table).cpu().tolist()
        return {
            task: [v / row[width] for v in row[:width]]
            for task, row in zip(self.tasks, values, strict=True)
            if row[width] > 0
        }

    def _check_reduce(self) -> None:
        if self.reduce is not _identity or self._warned_identity:
            return
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            self._warned_identity = True
            warnings.warn(
                f"loss balancing {self.name!r} runs on several processes without a reduce "
                "function: each process will compute different weights",
                stacklevel=3,
            )

    # ---- state --------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """Strategy name, tasks and per-task state, as plain containers."""
        return {
            "strategy": self.name,
            "tasks": list(self.tasks),
            "state": {
                task: {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                for task, s in self._state.items()
            },
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore per-task state; tasks only in the checkpoint are added, tasks only here keep
        their current (fresh) state."""
        if not isinstance(state, Mapping) or state.get("strategy") != self.name:
            saved = state.get("strategy") if isinstance(state, Mapping) else state
            raise ValueError(
                f"the checkpoint's loss balancer is {saved!r}, this run uses {self.name!r}"
            )
        for task in state["tasks"]:
            if task not in self._state:
                self.add_task(task)
            self._state[task].update(state["state"].get(task, {}))
        self._loaded_tasks = set(state["tasks"])

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        self._load_prefix = prefix
        self._loaded_tasks = None
        super()._load_from_state_dict(state_dict, prefix, *args)

    @staticmethod
    def _allow_new_task_keys(module: nn.Module, incompatible: Any) -> None:
        """A checkpoint saved before a task was added lacks that task's parameters: fine."""
        assert isinstance(module, LossBalancer)
        if module._loaded_tasks is None:
            return
        new = [t for t in module.tasks if t not in module._loaded_tasks]
        allowed = {module._load_prefix + k for t in new for k in module._task_parameter_keys(t)}
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in allowed]

    def extra_repr(self) -> str:
        """Tasks and options, for `print(balancer)`."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"tasks={self.tasks}" + (f", {options}" if options else "")
