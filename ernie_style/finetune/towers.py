"""Sharing by task towers: the encoder's top k layers copied per task.

- `soft` (soft parameter sharing; Duong et al. 2015, Ruder 2017): the bottom L-k encoder layers
  are shared; each task gets its own copy of the top k layers and of the pooler (its *tower*),
  initialised from the pretrained weights. With `tower_l2` = lambda > 0 the training loss gains
  the regularisation-based sharing term

      lambda * sum_t || theta_t - mean_s theta_s ||^2       (over every tower parameter)

  which pulls each task's tower towards the towers' mean (lambda = 0: separate towers).
- `cross_stitch` (Misra et al. 2016): the same towers, run for every task at once, their hidden
  states mixed after each tower layer l by a learned T x T cross-stitch unit, per position:

      x_t^{l+1} = sum_s alpha^l[t, s] * layer_s^l(x_s^l)

  alpha^l starts at `self_weight` (0.9) on the diagonal and (1 - 0.9) / (T - 1) elsewhere; with
  the identity the towers are separate (a test checks it equals `soft`).

A tower kind takes over the top of the encoder: `attach(encoder)` moves the top k layers and the
pooler into per-task copies and leaves the encoder with L-k layers and no pooler, and
`MultiTaskModel` calls `encode_top(task, hidden, attention_mask, pooled)` on the shortened
encoder's output. Export: a `soft` task folds its tower back into a stock `transformers` model
(`fold_state`: the shared layers, its tower as layers L-k..L-1, its pooler), which gives the same
logits. A `cross_stitch` task cannot (its output depends on every tower): the run keeps the model
in `best/`, which `ernie_style.finetune.loading.load_finetuned` rebuilds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ernie_style.components import check_count, check_number
from ernie_style.config import option
from ernie_style.finetune.sharing import SharingLayer, register_sharing


def _hidden(output: Any) -> torch.Tensor:
    """A transformer layer's output hidden states (some versions return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def bidirectional_mask(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """The attention mask the encoder's own layers get, for `hidden` [B, T, H]."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=config, inputs_embeds=hidden, attention_mask=attention_mask
    )


@dataclass
class TowerOptions:
    """Options of every tower kind."""

    tower_layers: int = option(1, "top encoder layers copied per task (k), 1..L")

    def validate(self) -> None:
        """tower_layers >= 1 (checked against the encoder's depth when attached)."""
        check_count("tower_layers", self.tower_layers)


class TowerSharing(SharingLayer):
    """Base of the tower kinds: per-task copies of the encoder's top layers and pooler. Its
    `forward` is the base class's identity: the towers already ran in `encode_top`."""

    takes_encoder_top = True

    def __init__(self, tasks: Sequence[str], tower_layers: int) -> None:
        super().__init__(touch_unused=False)
        check_count("tower_layers", tower_layers)
        self.tower_layers = tower_layers
        self.towers = nn.ModuleDict()
        self.poolers = nn.ModuleDict()
        # The pretrained top layers and pooler new towers start from; kept out of the state dict.
        self.__dict__["_template"] = None
        self.__dict__["_encoder_config"] = None
        self.shared_layers = 0
        for name in tasks:
            self._register(name)

    def attach(self, encoder: nn.Module) -> None:
        """Take the top `tower_layers` layers and the pooler out of `encoder` (in place) and
        give every task its own copy."""
        layers = getattr(getattr(encoder, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList) or getattr(encoder, "pooler", None) is None:
            raise ValueError(
                f"sharing={self.kind}: the encoder ({type(encoder).__name__}) has no "
                "encoder.layer list and pooler to build towers from (BERT-family encoders do)"
            )
        total = len(layers)
        if self.tower_layers > total:
            raise ValueError(
                f"sharing_options.tower_layers: {self.tower_layers} > the encoder's {total} layers"
            )
        self.shared_layers = total - self.tower_layers
        top = nn.ModuleList(layers[self.shared_layers :])
        self.__dict__["_template"] = (copy.deepcopy(top), copy.deepcopy(encoder.pooler))
        self.__dict__["_encoder_config"] = encoder.config
        encoder.encoder.layer = nn.ModuleList(layers[: self.shared_layers])
        encoder.pooler = None
        for name in self.tasks:
            self._build_tower(name)

    def _build_tower(self, name: str) -> None:
        layers, pooler = self._template
        self.towers[name] = copy.deepcopy(layers)
        self.poolers[name] = copy.deepcopy(pooler)

    def add_task(self, name: str) -> None:
        """A tower (top layers and pooler) for a new task, copied from the pretrained ones
        (once attached; before, the task only joins the list)."""
        self._register(name)
        if self._template is not None:
            self._build_tower(name)

    def _check_attached(self) -> None:
        if self._template is None:
            raise RuntimeError(f"sharing={self.kind}: attach(encoder) before the forward pass")

    def fold_state(self, task: str) -> dict[str, torch.Tensor]:
        """The task's tower as encoder state-dict entries (`encoder.layer.N.*`, `pooler.*`)."""
        state = {}
        for i, layer in enumerate(self.towers[task]):
            for key, value in layer.state_dict().items():
                state[f"encoder.layer.{self.shared_layers + i}.{key}"] = value
        for key, value in self.poolers[task].state_dict().items():
            state[f"pooler.{key}"] = value
        return state

    def _run(self, layer: nn.Module, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        return _hidden(layer(hidden, mask))


@register_sharing("soft")
class SoftSharing(TowerSharing):
    """Soft parameter sharing: shared bottom layers, a tower of the top k layers per task, and
    an optional L2 pull of every tower towards the towers' mean (`tower_l2`)."""

    exportable = True

    @dataclass
    class Config(TowerOptions):
        """Options of `soft`."""

        tower_l2: float = option(
            0.0, "lambda of the L2 pull of each tower towards the towers' mean (0: none)"
        )

        def validate(self) -> None:
            """tower_layers >= 1, tower_l2 >= 0."""
            super().validate()
            self.tower_l2 = check_number("tower_l2", self.tower_l2, 0.0)

    def __init__(
        self, hidden_size: int, tasks: Sequence[str], tower_layers: int = 1, tower_l2: float = 0.0
    ) -> None:
        super().__init__(tasks, tower_layers)
        self.tower_l2 = float(check_number("tower_l2", tower_l2, 0.0))

    def encode_top(
        self, task: str, hidden: torch.Tensor, attention_mask: torch.Tensor, pooled: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the task's tower on the shared layers' output: (sequence, pooled or None)."""
        self._check_attached()
        self._check(task)
        mask = bidirectional_mask(self._encoder_config, hidden, attention_mask)
        for layer in self.towers[task]:
            hidden = self._run(layer, hidden, mask)
        return hidden, self.poolers[task](hidden) if pooled else None

    def penalty(self) -> torch.Tensor | None:
        """tower_l2 * sum over tasks and tower parameters of (theta_t - mean theta)^2; None when
        tower_l2 is 0 or there is one task."""
        if self.tower_l2 == 0 or len(self.tasks) < 2:
            return None
        per_task = [
            list(self.towers[t].parameters()) + list(self.poolers[t].parameters())
            for t in self.tasks
        ]
        total = None
        for group in zip(*per_task, strict=True):
            stacked = torch.stack([p.float() for p in group])
            term = (stacked - stacked.mean(dim=0)).pow(2).sum()
            total = term if total is None else total + term
        return None if total is None else self.tower_l2 * total


class CrossStitchUnit(nn.Module):
    """alpha[t, s] for one tower layer, stored per row (`rows[t][s]`, scalars) so adding a task
    keeps the old entries' names."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.ModuleDict()

    def matrix(self, tasks: Sequence[str]) -> torch.Tensor:
        """The unit's weights alpha as a [T, T] tensor in `tasks` order."""
        return torch.stack([torch.stack([self.rows[t].weights[s] for s in tasks]) for t in tasks])


class _Row(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.ParameterDict()


@register_sharing("cross_stitch")
class CrossStitchSharing(TowerSharing):
    """Cross-stitch networks: every task's tower runs, and after each tower layer the towers'
    hidden states are mixed by a learned T x T unit (per position)."""

    exportable = False

    @dataclass
    class Config(TowerOptions):
        """Options of `cross_stitch`."""

        self_weight: float = option(
            0.9, "initial diagonal of each cross-stitch unit (rows start summing to 1)"
        )

        def validate(self) -> None:
            """tower_layers >= 1, self_weight in [0, 1]."""
            super().validate()
            self.self_weight = check_number("self_weight", self.self_weight, 0.0, 1.0)

    def __init__(
        self,
        hidden_size: int,
        tasks: Sequence[str],
        tower_layers: int = 1,
        self_weight: float = 0.9,
    ) -> None:
        super().__init__(tasks, tower_layers)
        self.self_weight = float(check_number("self_weight", self_weight, 0.0, 1.0))
        self.units = nn.ModuleList(CrossStitchUnit() for _ in range(tower_layers))
        self._init_units(list(self.tasks), [])

    def _init_units(self, new: list[str], old: list[str]) -> None:
        """Diagonal `self_weight`, the rest of a new row spread evenly; old rows get 0 for new
        tasks, so adding a task leaves the old tasks' outputs unchanged."""
        every = old + new
        off = (1.0 - self.self_weight) / (len(every) - 1) if len(every) > 1 else 0.0
        for unit in self.units:
            for t in old:
                for s in new:
                    unit.rows[t].weights[s] = nn.Parameter(torch.zeros(()))
            for t in new:
                unit.rows[t] = _Row()
                for s in every:
                    value = self.self_weight if s == t else off
                    unit.rows[t].weights[s] = nn.Parameter(torch.tensor(value))

    def add_task(self, name: str) -> None:
        """A tower for a new task and a row and column in every unit (old rows: 0)."""
        old = list(self.tasks)
        super().add_task(name)
        self._init_units([name], old)

    def tasks_added(self, new: Sequence[str]) -> None:
        """After loading a checkpoint without `new` tasks: their entries in the old rows
        become 0 (the old tasks' outputs stay as they were) and their rows start afresh."""
        old = [t for t in self.tasks if t not in new]
        with torch.no_grad():
            for unit in self.units:
                for t in old:
                    for s in new:
                        unit.rows[t].weights[s].zero_()

    def task_keys(self, task: str) -> list[str]:
        """The task's tower, its unit rows and its entries in the other rows."""
        keys = super().task_keys(task)
        for i in range(len(self.units)):
            keys.append(f"units.{i}.rows.{task}.")
            keys += [f"units.{i}.rows.{t}.weights.{task}" for t in self.tasks if t != task]
        return keys

    def encode_top(
        self, task: str, hidden: torch.Tensor, attention_mask: torch.Tensor, pooled: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run every tower, mixing after each layer; the task's mixed output and pooler."""
        self._check_attached()
        self._check(task)
        mask = bidirectional_mask(self._encoder_config, hidden, attention_mask)
        tasks = list(self.tasks)
        states = [hidden] * len(tasks)
        for i, unit in enumerate(self.units):
            outputs = torch.stack(
                [self._run(self.towers[t][i], x, mask) for t, x in zip(tasks, states, strict=True)]
            )  # [T, B, S, H]
            alpha = unit.matrix(tasks).to(outputs.dtype)
            if i == len(self.units) - 1:  # the last layer: only this task's row is needed
                row = alpha[tasks.index(task)]
                out = torch.einsum("s,sbnh->bnh", row, outputs)
                return out, self.poolers[task](out) if pooled else None
            states = list(torch.einsum("ts,sbnh->tbnh", alpha, outputs).unbind(0))
        raise AssertionError("a cross-stitch layer has at least one tower layer")

    def unit_matrices(self) -> list[torch.Tensor]:
        """The weights alpha of every tower layer ([T, T], task order), detached."""
        return [unit.matrix(self.tasks).detach() for unit in self.units]
