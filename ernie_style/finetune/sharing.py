"""How tasks share the encoder: layers between the encoder output and the task heads.

Every layer is `forward(task, sequence_output, pooled_output) -> (sequence_output,
pooled_output)` as seen by that task's head; an input given as None comes back as None and
costs nothing, so a trainer passes only the output the head reads (`head.reads`).

- `hard` (default): identity; every head sees the encoder output (MT-DNN).
- `mmoe` (Ma et al. 2018, Multi-gate Mixture-of-Experts): E shared experts, each a small
  feed-forward network Linear(H, d) -> GELU -> dropout -> Linear(d, H); one softmax gate
  Linear(H, E) per task; the task's input is the gate-weighted sum of the experts' outputs.
  With `levels: n`, n MMoE levels stacked like PLE's (a shared gate below the top level feeds
  the next level's experts; each task's gates follow the task's own path).
- `ple` (Tang et al. 2020, Progressive Layered Extraction): each of `levels` levels has
  shared experts and task-specific experts per task; a task's gate mixes its own experts and
  the shared ones, and, below the top level, a shared gate mixes all experts (every task's
  and the shared ones) into the shared input of the next level. Task experts read their
  task's input, shared experts the shared input (all the encoder output at level 1).
- `cgc` (Customized Gate Control): `ple` with a single level.

A sharing layer is one `SharingLayer` subclass decorated with `@register_sharing("name")`
whose options are a nested `Config` dataclass, taken as keyword arguments of its
`__init__(hidden_size, tasks, **options)`; `sharing_options` in a fine-tuning config is
validated against that `Config` when the config is loaded.

Rules common to the mixtures:

- Gate input = the tensor being mixed: gates and experts work per position on the sequence
  output ([B, T, H], a gate per token) and per example on the pooled output ([B, H]); the two
  use the same weights.
- Residual (option `residual`, default on): each level's output is its input plus the
  mixture, so a layer with small initial experts starts close to the encoder output (weights
  are initialised like `transformers`: normal 0.02, zero bias).
- DDP: with one task per step, other tasks' gates (and for PLE their top-level experts) take
  no part in the loss. By default (`touch_unused=True`) forward adds a zero-weight term
  (`zero_touch`: 0.0 x the sum of one element of each unused weight) to every output it
  returns, so all of the layer's parameters get a gradient (zero for the unused ones) and
  DDP needs no `find_unused_parameters` for this layer. The forward cost is nil; backward
  writes a zero gradient for each unused weight (a memset the size of those weights: 8.3M
  parameters for PLE with 8 tasks at H=768: 25-50 ms on a busy 2-core CPU; on a GPU an
  estimated fraction of a millisecond, not measured). Two consequences for the trainer:
  the task heads of the other tasks are still unused (keep `find_unused_parameters=True`,
  or touch them the same way with `zero_touch`), and a zero gradient is not a missing one:
  AdamW still applies weight decay and its decaying momentum to those parameters, where a
  None gradient would skip them. With `touch_unused=False` the layer behaves like any
  module and DDP needs `find_unused_parameters=True`.
- New tasks (`add_task`, e.g. resuming with more tasks): MMoE adds a gate; PLE adds task
  experts and a gate at every level and a piece of each shared gate for the new experts (the
  shared gate's logits are the concatenation of per-expert-group linear maps, so old weights
  keep their names and shapes). Call it before building the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from ernie_style.components import check_count, check_number, option_values, sharing_registry
from ernie_style.config import option

#: Initial weight standard deviation, as `ErnieConfig.initializer_range`.
INITIALIZER_RANGE = 0.02
S = TypeVar("S", bound=type)


def zero_touch(parameters: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """`0.0 * sum(p.reshape(-1)[0])` over the non-empty `parameters`: adding it to an output
    gives each a zero gradient without changing any value (one element per tensor is enough
    and reads nothing else); None when there are none."""
    total = None
    for p in parameters:
        if p.numel():
            first = p.reshape(-1)[0]
            total = first if total is None else total + first
    return None if total is None else total * 0.0


def _check_task_name(name: str) -> None:
    if not name or "." in name:
        raise ValueError(f"task name {name!r} cannot name a module (empty or contains '.')")


class ExpertBank(nn.Module):
    """`num_experts` feed-forward experts Linear(H, d) -> GELU -> dropout -> Linear(d, H),
    computed together: `forward(x [..., H]) -> [..., E, H]`."""

    def __init__(
        self, num_experts: int, hidden_size: int, expert_hidden: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.weight_in = nn.Parameter(torch.empty(num_experts, hidden_size, expert_hidden))
        self.bias_in = nn.Parameter(torch.zeros(num_experts, expert_hidden))
        self.weight_out = nn.Parameter(torch.empty(num_experts, expert_hidden, hidden_size))
        self.bias_out = nn.Parameter(torch.zeros(num_experts, hidden_size))
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.weight_in, std=INITIALIZER_RANGE)
        nn.init.normal_(self.weight_out, std=INITIALIZER_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output for every row of `x`: [..., E, H]."""
        hidden = torch.einsum("...h,ehd->...ed", x, self.weight_in) + self.bias_in
        hidden = self.dropout(F.gelu(hidden))
        return torch.einsum("...ed,edh->...eh", hidden, self.weight_out) + self.bias_out


def _linear(hidden_size: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(hidden_size, out_features)
    nn.init.normal_(layer.weight, std=INITIALIZER_RANGE)
    nn.init.zeros_(layer.bias)
    return layer


def _mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate weights [..., E] x expert outputs [..., E, H] -> [..., H]."""
    return torch.einsum("...e,...eh->...h", weights.to(experts.dtype), experts)


@dataclass
class NoOptions:
    """A sharing layer without options."""


@dataclass
class ExpertOptions:
    """Options of every mixture-of-experts layer."""

    expert_hidden: int | None = option(
        None, "hidden size d of each expert, Linear(H, d) -> Linear(d, H) (default: H)"
    )
    dropout: float = option(0.1, "dropout inside the experts, in [0, 1)")
    residual: bool = option(True, "output = input + mixture (starts near the encoder output)")
    touch_unused: bool = option(
        True, "zero gradient for parameters a step does not use (DDP without find_unused)"
    )

    def validate(self) -> None:
        """expert_hidden >= 1 (when given), dropout in [0, 1)."""
        if self.expert_hidden is not None:
            check_count("expert_hidden", self.expert_hidden)
        self.dropout = check_number("dropout", self.dropout, 0.0, 1.0, open_high=True)


def register_sharing(name: str) -> Callable[[S], S]:
    """Class decorator: register a `SharingLayer` subclass as sharing kind `name`, which
    fine-tuning configs can then name in `sharing` (its `Config` validates `sharing_options`)."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, SharingLayer)):
            raise TypeError(f"@register_sharing({name!r}) decorates SharingLayer subclasses")
        return sharing_registry.register(name)(cls)

    return decorate


class SharingLayer(nn.Module):
    """Base class: `forward(task, sequence_output, pooled_output)` gives the task's view of the
    encoder output; `add_task(name)` makes room for a new task. `kind` is the registered name."""

    kind: str = ""
    Config: ClassVar[type] = NoOptions
    #: Whether the kind replaces the encoder's top layers (`attach`, `encode_top`: towers).
    takes_encoder_top: ClassVar[bool] = False
    #: Whether a task's path folds into a stock `transformers` model (`fold_state`).
    exportable: ClassVar[bool] = False

    def __init__(self, touch_unused: bool = True) -> None:
        super().__init__()
        self.tasks: list[str] = []
        self.touch_unused = touch_unused

    def _register(self, name: str) -> None:
        _check_task_name(name)
        if name in self.tasks:
            raise ValueError(f"task {name!r} already exists in the {self.kind} sharing layer")
        self.tasks.append(name)

    def add_task(self, name: str) -> None:
        """Add the parameters (gate, experts) of a new task."""
        self._register(name)

    def _check(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"task {task!r} is not in the sharing layer; tasks: {self.tasks}")

    def unused_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters a forward pass for `task` does not use (other tasks' gates ...)."""
        return []

    def task_keys(self, task: str) -> list[str]:
        """State-dict keys (a trailing '.' marks a prefix) of the parts that belong to `task`
        alone: a checkpoint written before `task` joined lacks exactly these."""
        return [
            name + "."
            for name, module in self.named_modules()
            if name.rsplit(".", 1)[-1] == task and isinstance(module, nn.Module)
        ]

    def tasks_added(self, new: Sequence[str]) -> None:
        """Called after a checkpoint without the `new` tasks was loaded (resume with new
        tasks): fix up whatever their fresh parameters need; nothing by default."""

    def attach(self, encoder: nn.Module) -> None:
        """Take over parts of `encoder` (tower kinds); nothing by default."""

    def penalty(self) -> torch.Tensor | None:
        """A regularisation term the training loss adds (None: none)."""
        return None

    def fold_state(self, task: str) -> dict[str, torch.Tensor]:
        """Encoder state-dict entries that fold `task`'s path into a stock model (exportable
        kinds); the identity kinds add nothing."""
        return {}

    def _transform(self, task: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(
        self,
        task: str,
        sequence_output: torch.Tensor | None,
        pooled_output: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The task's sequence output [B, T, H] and pooled output [B, H] (None stays None)."""
        self._check(task)
        outputs = [
            None if x is None else self._transform(task, x)
            for x in (sequence_output, pooled_output)
        ]
        if self.touch_unused and any(x is not None for x in outputs):
            touch = zero_touch(self.unused_parameters(task))
            if touch is not None:
                outputs = [None if x is None else x + touch.to(x.dtype) for x in outputs]
        return outputs[0], outputs[1]


@register_sharing("hard")
class HardSharing(SharingLayer):
    """Hard parameter sharing: the identity, every head reads the encoder output."""

    exportable = True

    @dataclass
    class Config:
        """No options."""

    def __init__(self, hidden_size: int, tasks: Sequence[str]) -> None:
        super().__init__(touch_unused=False)
        for name in tasks:
            self.add_task(name)


class MMoELevel(nn.Module):
    """One level above the first of a multi-level MMoE: shared experts, a gate per task and,
    below the top level, a shared gate."""

    def __init__(
        self, hidden_size: int, num_experts: int, expert_hidden: int, dropout: float, top: bool
    ) -> None:
        super().__init__()
        self.experts = ExpertBank(num_experts, hidden_size, expert_hidden, dropout)
        self.gates = nn.ModuleDict()
        self.shared_gate = None if top else _linear(hidden_size, num_experts)


@register_sharing("mmoe")
class MMoESharing(SharingLayer):
    """Multi-gate Mixture-of-Experts: shared experts, one softmax gate per task; with
    `levels` > 1, stacked like PLE's levels (PLE without task experts).

    Level l has E shared experts reading the shared input s_l and a gate per task reading the
    task's input x_l: x_{l+1} = x_l + sum_e g_{t,l}(x_l)_e E_{l,e}(s_l); below the top level a
    shared gate makes the next shared input, s_{l+1} = s_l + sum_e g_{s,l}(s_l)_e E_{l,e}(s_l)
    (x_1 = s_1 = the encoder output; without `residual` the sums alone). A forward pass for
    task t computes t's path and the shared one: `levels` expert banks, no other task's gates.
    Level 1 keeps the one-level names (`experts`, `gates`, plus `shared_gate` when stacked);
    levels 2.. are `upper_levels`.
    """

    @dataclass
    class Config(ExpertOptions):
        """Options of `mmoe`."""

        num_experts: int = option(4, "shared experts E >= 1 (per level)")
        levels: int = option(1, "stacked MMoE levels, >= 1 (multi-level MMoE)")

        def validate(self) -> None:
            """The expert options, num_experts >= 1 and levels >= 1."""
            super().validate()
            check_count("num_experts", self.num_experts)
            check_count("levels", self.levels)

    def __init__(
        self,
        hidden_size: int,
        tasks: Sequence[str],
        num_experts: int = 4,
        levels: int = 1,
        expert_hidden: int | None = None,
        dropout: float = 0.1,
        residual: bool = True,
        touch_unused: bool = True,
    ) -> None:
        super().__init__(touch_unused)
        check_count("levels", levels)
        self.hidden_size = hidden_size
        self.residual = residual
        width = expert_hidden or hidden_size
        self.experts = ExpertBank(num_experts, hidden_size, width, dropout)
        self.gates = nn.ModuleDict()
        self.shared_gate = _linear(hidden_size, num_experts) if levels > 1 else None
        self.upper_levels = nn.ModuleList(
            MMoELevel(hidden_size, num_experts, width, dropout, top=i == levels - 2)
            for i in range(levels - 1)
        )
        for name in tasks:
            self.add_task(name)

    @property
    def num_levels(self) -> int:
        """How many MMoE levels are stacked."""
        return 1 + len(self.upper_levels)

    def _level(self, level: int) -> tuple[ExpertBank, nn.ModuleDict, nn.Module | None]:
        if level == 0:
            return self.experts, self.gates, self.shared_gate
        upper = self.upper_levels[level - 1]
        return upper.experts, upper.gates, upper.shared_gate

    def add_task(self, name: str) -> None:
        """A new gate over the shared experts, at every level."""
        self._register(name)
        for level in range(self.num_levels):
            experts, gates, _ = self._level(level)
            gates[name] = _linear(self.hidden_size, experts.num_experts)

    def gate_weights(self, task: str, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """The task's softmax weights over the experts at `level`, [..., E] for `x` [..., H]."""
        return F.softmax(self._level(level)[1][task](x), dim=-1)

    def _transform(self, task: str, x: torch.Tensor) -> torch.Tensor:
        task_input = shared_input = x
        for level in range(self.num_levels):
            experts, _, shared_gate = self._level(level)
            expert_out = experts(shared_input)
            mixed = _mix(self.gate_weights(task, task_input, level), expert_out)
            next_task = task_input + mixed if self.residual else mixed
            if shared_gate is not None:
                weights = F.softmax(shared_gate(shared_input), dim=-1)
                mixed = _mix(weights, expert_out)
                shared_input = shared_input + mixed if self.residual else mixed
            task_input = next_task
        return task_input

    def unused_parameters(self, task: str) -> list[nn.Parameter]:
        """The other tasks' gates at every level."""
        return [
            p
            for level in range(self.num_levels)
            for name, gate in self._level(level)[1].items()
            if name != task
            for p in gate.parameters()
        ]


class SharedGate(nn.Module):
    """A PLE shared gate: softmax over the concatenated logits of one linear map per expert
    group, the shared experts first, then each task's experts in task order."""

    def __init__(self, hidden_size: int, shared_experts: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.shared = _linear(hidden_size, shared_experts)
        self.tasks = nn.ModuleDict()

    def add_task(self, name: str, task_experts: int) -> None:
        """Logits for a new task's experts."""
        self.tasks[name] = _linear(self.hidden_size, task_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Weights [..., S + sum of task experts] for `x` [..., H]."""
        logits = [self.shared(x), *(piece(x) for piece in self.tasks.values())]
        return F.softmax(torch.cat(logits, dim=-1), dim=-1)


class CGCLevel(nn.Module):
    """One PLE level (a CGC layer): shared experts, experts and a gate per task, and (below
    the top level) a shared gate."""

    def __init__(
        self,
        hidden_size: int,
        shared_experts: int,
        task_experts: int,
        expert_hidden: int,
        dropout: float,
        with_shared_gate: bool,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_task_experts = task_experts
        self.expert_hidden = expert_hidden
        self.dropout = dropout
        self.shared_experts = ExpertBank(shared_experts, hidden_size, expert_hidden, dropout)
        self.task_experts = nn.ModuleDict()
        self.task_gates = nn.ModuleDict()
        self.shared_gate = SharedGate(hidden_size, shared_experts) if with_shared_gate else None

    def add_task(self, name: str) -> None:
        """Experts, a gate and a shared-gate piece for a new task."""
        self.task_experts[name] = ExpertBank(
            self.num_task_experts, self.hidden_size, self.expert_hidden, self.dropout
        )
        self.task_gates[name] = _linear(
            self.hidden_size, self.num_task_experts + self.shared_experts.num_experts
        )
        if self.shared_gate is not None:
            self.shared_gate.add_task(name, self.num_task_experts)


@dataclass
class PLEOptions(ExpertOptions):
    """Options of `cgc`, and of `ple` with `levels`."""

    shared_experts: int = option(2, "shared experts per level, >= 1")
    task_experts: int = option(1, "experts of each task per level, >= 1")

    def validate(self) -> None:
        """The expert options and expert counts >= 1."""
        super().validate()
        check_count("shared_experts", self.shared_experts)
        check_count("task_experts", self.task_experts)


@register_sharing("ple")
class PLESharing(SharingLayer):
    """Progressive Layered Extraction: `levels` stacked CGC levels (`cgc` is one level).

    A forward pass for task k computes, at the top level, only task k's gate over its experts
    and the shared ones; one level below, task k's output and the shared output; further
    down, every task's output (the shared gate above needs all tasks' experts). Cost: below
    the top level every task's experts run, so with many tasks keep `task_experts` small.
    """

    @dataclass
    class Config(PLEOptions):
        """Options of `ple`."""

        levels: int = option(2, "stacked CGC levels, >= 1")

        def validate(self) -> None:
            """The PLE options and levels >= 1."""
            super().validate()
            check_count("levels", self.levels)

    def __init__(
        self,
        hidden_size: int,
        tasks: Sequence[str],
        shared_experts: int = 2,
        task_experts: int = 1,
        levels: int = 2,
        expert_hidden: int | None = None,
        dropout: float = 0.1,
        residual: bool = True,
        touch_unused: bool = True,
    ) -> None:
        super().__init__(touch_unused)
        for name, value in (
            ("shared_experts", shared_experts),
            ("task_experts", task_experts),
            ("levels", levels),
        ):
            check_count(name, value)
        self.residual = residual
        self.levels = nn.ModuleList(
            CGCLevel(
                hidden_size,
                shared_experts,
                task_experts,
                expert_hidden or hidden_size,
                dropout,
                with_shared_gate=i < levels - 1,
            )
            for i in range(levels)
        )
        for name in tasks:
            self.add_task(name)

    def add_task(self, name: str) -> None:
        """Experts and gates for a new task at every level."""
        self._register(name)
        for level in self.levels:
            level.add_task(name)

    def gate_weights(self, task: str, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Task gate weights [..., task experts + shared experts] at `level`."""
        return F.softmax(self.levels[level].task_gates[task](x), dim=-1)

    def shared_gate_weights(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Shared gate weights [..., shared + all task experts] at `level` (not the top)."""
        gate = self.levels[level].shared_gate
        if gate is None:
            raise ValueError(f"level {level} is the top level and has no shared gate")
        return gate(x)

    def _transform(self, task: str, x: torch.Tensor) -> torch.Tensor:
        top = len(self.levels) - 1
        task_inputs = dict.fromkeys(self.tasks, x)
        shared_input = x
        for i, level in enumerate(self.levels):
            needs_shared = i < top
            outputs_needed = self.tasks if i < top - 1 else [task]
            shared_out = level.shared_experts(shared_input)
            expert_tasks = self.tasks if needs_shared else [task]
            expert_out = {t: level.task_experts[t](task_inputs[t]) for t in expert_tasks}
            new_inputs = {}
            for t in outputs_needed:
                weights = self.gate_weights(t, task_inputs[t], i)
                mixed = _mix(weights, torch.cat([expert_out[t], shared_out], dim=-2))
                new_inputs[t] = task_inputs[t] + mixed if self.residual else mixed
            if needs_shared:
                weights = level.shared_gate(shared_input)
                groups = [shared_out, *(expert_out[t] for t in level.shared_gate.tasks)]
                mixed = _mix(weights, torch.cat(groups, dim=-2))
                shared_input = shared_input + mixed if self.residual else mixed
            task_inputs = new_inputs
        return task_inputs[task]

    def unused_parameters(self, task: str) -> list[nn.Parameter]:
        """Other tasks' experts and gates at the top level and their gates one level below."""
        others = [t for t in self.tasks if t != task]
        top = self.levels[-1]
        modules = [top.task_experts[t] for t in others] + [top.task_gates[t] for t in others]
        if len(self.levels) > 1:
            modules += [self.levels[-2].task_gates[t] for t in others]
        return [p for m in modules for p in m.parameters()]


@register_sharing("cgc")
class CGCSharing(PLESharing):
    """Customized Gate Control: a single PLE level (task and shared experts, task gates)."""

    @dataclass
    class Config(PLEOptions):
        """Options of `cgc` (those of `ple` without `levels`)."""

    def __init__(
        self,
        hidden_size: int,
        tasks: Sequence[str],
        shared_experts: int = 2,
        task_experts: int = 1,
        expert_hidden: int | None = None,
        dropout: float = 0.1,
        residual: bool = True,
        touch_unused: bool = True,
    ) -> None:
        super().__init__(
            hidden_size,
            tasks,
            shared_experts,
            task_experts,
            1,
            expert_hidden,
            dropout,
            residual,
            touch_unused,
        )


# The tower kinds (`soft`, `cross_stitch`) live in their own module and register on import.
from ernie_style.finetune import towers as _towers  # noqa: E402, F401

#: The built-in sharing kinds (`sharing_registry.names()` also lists ones registered later).
SHARING_KINDS: tuple[str, ...] = sharing_registry.names()


def build_sharing(
    kind: str, hidden_size: int, tasks: Sequence[str], **options: Any
) -> SharingLayer:
    """The sharing layer `kind` ("hard", "mmoe", "ple", "cgc", or a registered one) for
    `tasks`; `options` are those of its `Config` (see `SharingLayer` subclasses' `Config`).

    An unknown kind, an option the kind does not take, or a bad value is a ValueError.
    """
    cls = sharing_registry.get(kind)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate task names in {list(tasks)}")
    config = sharing_registry.parse(kind, options)
    return cls(hidden_size, tasks, **option_values(config))
