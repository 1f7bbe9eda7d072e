"""Which task each fine-tuning step trains, and which of its examples: deterministic, resumable.

MT-DNN trains one task per mini-batch. Step `s` draws its task from an RNG seeded by
(seed, s), with probabilities

    proportional   p_t ~ n_t            (n_t = training examples of task t)
    temperature    p_t ~ n_t^(1/T)      (T = 1: proportional, T -> inf: uniform)
    uniform        p_t = 1 / #tasks

Each task walks through its training examples in a fresh seeded permutation per pass, so the
sampler's state is one (pass, position) pair per task. An epoch is sum_t ceil(n_t / b_t) steps,
the number of mini-batches MT-DNN shuffles together per epoch.

decaNLP's anti-curriculum (`first_tasks`, `first_epochs`): the run starts with a first stage of
round(first_epochs x sum over the first tasks of ceil(n_t / b_t)) steps that draw only among the
first (hardest) tasks, with the same strategy over their sizes; then every task, for the run's
epochs. Stage and epoch of a step follow from the step alone, so resume stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

STRATEGIES = ("proportional", "temperature", "uniform")


def task_probabilities(
    sizes: Mapping[str, int], strategy: str, temperature: float = 2.0
) -> dict[str, float]:
    """Sampling probability per task for a strategy (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"sampling: unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if any(n <= 0 for n in sizes.values()):
        raise ValueError(f"sampling: every task needs training examples, got {dict(sizes)}")
    if strategy == "uniform":
        weights = {t: 1.0 for t in sizes}
    else:
        power = 1.0 if strategy == "proportional" else 1.0 / temperature
        weights = {t: float(n) ** power for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


class TaskSampler:
    """Per-step task choice and per-task example order (`state_dict` = the positions)."""

    def __init__(
        self,
        sizes: Mapping[str, int],
        batch_sizes: Mapping[str, int],
        strategy: str,
        temperature: float,
        seed: int,
        first_tasks: Sequence[str] = (),
        first_epochs: float = 1.0,
    ) -> None:
        self.sizes = dict(sizes)
        self.batch_sizes = dict(batch_sizes)
        self.probabilities = task_probabilities(sizes, strategy, temperature)
        self.seed = seed
        self.tasks = list(sizes)
        self._cumulative = np.cumsum([self.probabilities[t] for t in self.tasks])
        unknown = [t for t in first_tasks if t not in self.sizes]
        if unknown:
            raise ValueError(f"first-stage tasks {unknown} are not among {self.tasks}")
        #: The anti-curriculum's first-stage tasks (config order) and its length in steps.
        self.first_tasks = [t for t in self.tasks if t in set(first_tasks)]
        first_sizes = {t: self.sizes[t] for t in self.first_tasks}
        first = task_probabilities(first_sizes, strategy, temperature) if first_sizes else {}
        self._first_cumulative = np.cumsum([first[t] for t in self.first_tasks])
        self.first_epoch_steps = sum(self._batches(t) for t in self.first_tasks)
        self.first_steps = (
            max(1, round(first_epochs * self.first_epoch_steps)) if self.first_tasks else 0
        )
        self.positions: dict[str, list[int]] = {t: [0, 0] for t in self.tasks}  # [pass, index]
        self._orders: dict[tuple[str, int], np.ndarray] = {}

    def _batches(self, task: str) -> int:
        return math.ceil(self.sizes[task] / self.batch_sizes[task])

    @property
    def steps_per_epoch(self) -> int:
        """Mini-batches of all tasks in one pass over every task's data."""
        return sum(self._batches(t) for t in self.tasks)

    def total_steps(self, epochs: int) -> int:
        """Steps of a run: the first stage (if any) and `epochs` epochs of every task."""
        return self.first_steps + epochs * self.steps_per_epoch

    def task_at(self, step: int) -> str:
        """The task of global step `step` (same on every process)."""
        draw = np.random.default_rng([self.seed, step]).random()
        tasks, cumulative = self.tasks, self._cumulative
        if step < self.first_steps:
            tasks, cumulative = self.first_tasks, self._first_cumulative
        index = int(np.searchsorted(cumulative, draw * cumulative[-1], side="right"))
        return tasks[min(index, len(tasks) - 1)]

    def progress(self, done: int) -> tuple[int, float]:
        """(stage, epochs into it) after `done` steps; stage 1 is the anti-curriculum's first
        stage when there is one, else every step is stage 1."""
        if self.first_steps and done <= self.first_steps:
            return 1, done / self.first_epoch_steps
        stage = 2 if self.first_steps else 1
        return stage, (done - self.first_steps) / self.steps_per_epoch

    def phase_of(self, step: int) -> tuple[int, int]:
        """(stage, epoch of that stage, 1-based) of global step `step` (0-based)."""
        if step < self.first_steps:
            return 1, step // self.first_epoch_steps + 1
        stage = 2 if self.first_steps else 1
        return stage, (step - self.first_steps) // self.steps_per_epoch + 1

    def is_epoch_end(self, done: int) -> bool:
        """Whether step `done - 1` ended an epoch (of its stage) or the first stage."""
        if self.first_steps and done <= self.first_steps:
            return done == self.first_steps or done % self.first_epoch_steps == 0
        return (done - self.first_steps) % self.steps_per_epoch == 0

    def _order(self, task: str, epoch: int) -> np.ndarray:
        key = (task, epoch)
        if key not in self._orders:
            task_index = self.tasks.index(task)
            rng = np.random.default_rng([self.seed, task_index, epoch, 7])
            self._orders = {k: v for k, v in self._orders.items() if k[0] != task}
            self._orders[key] = rng.permutation(self.sizes[task])
        return self._orders[key]

    def take(self, task: str, count: int) -> list[int]:
        """The next `count` training-example indices of `task` (wrapping into a new pass)."""
        taken: list[int] = []
        position = self.positions[task]
        while len(taken) < count:
            order = self._order(task, position[0])
            chunk = order[position[1] : position[1] + count - len(taken)]
            taken.extend(int(i) for i in chunk)
            position[1] += len(chunk)
            if position[1] >= len(order):
                position[0], position[1] = position[0] + 1, 0
        return taken

    def state_dict(self) -> dict[str, Any]:
        """Positions per task (JSON-safe)."""
        return {"positions": {t: list(p) for t, p in self.positions.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore positions; tasks new to this run start at the beginning."""
        for task, position in state.get("positions", {}).items():
            if task in self.positions:
                self.positions[task] = [int(position[0]), int(position[1])]
