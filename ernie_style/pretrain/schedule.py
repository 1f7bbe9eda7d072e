"""ERNIE 2.0's continual multi-task schedule.

Tasks are introduced stage by stage and earlier tasks keep training. With automatic allocation a
task with budget N introduced in stage i of S gets N/(S+1) iterations in every later stage and
the rest in its first stage, so it trains most when it is new. For the paper's 4 tasks x 50k:

    knowledge masking        20k 10k 10k 10k
    capitalization            0  30k 10k 10k
    token-document relation   0   0  40k 10k
    sentence reordering       0   0   0  50k

Other curricula give each stage a task set (`stage_sets`) and spread budgets by the same rule
(`set_allocation`): a task with budget N gets N/(S+1) in every later stage it is part of and the
rest in its first. `pairwise_stages` is ERNIE 2.0's alternative, each task alone, then every pair,
then all together: (A)(B)(C) -> (A,B)(B,C)(A,C) -> (A,B,C); `anti_curriculum_stages` is decaNLP's
anti-curriculum, the hardest task(s) alone, then all.

Within a stage every step samples a task in proportion to its remaining budget in that stage,
with an RNG seeded by (seed, step): sampling needs no RNG state and replays exactly on resume.

Budgets count iterations (task-steps). With `tasks_per_step` k > 1 (mixed batches) a step
consumes up to k of them, so a stage has fewer steps than iterations; `stage_length` and
`total_steps` count steps (found by replaying the seeded sampling once), which is what the LR
schedule, the curriculum progress and the progress bar need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ernie_style.train.lr import lr_factor

#: Named curricula for `schedule.stages` (besides an explicit list of task sets).
CURRICULA = ("pairwise", "anti_curriculum")


def growth_stages(first_stage: Mapping[str, int], num_stages: int) -> list[list[str]]:
    """ERNIE 2.0's continual growth: a task joins in its first stage (0-based) and stays."""
    for task, first in first_stage.items():
        if not 0 <= first < num_stages:
            raise ValueError(f"task {task!r}: first stage {first} outside 0..{num_stages - 1}")
    return [[t for t, first in first_stage.items() if first <= s] for s in range(num_stages)]


def pairwise_stages(tasks: Sequence[str]) -> list[list[str]]:
    """Each task alone, then every pair (adjacent tasks first, then those further apart),
    then all together: A, B, C -> (A)(B)(C) (A,B)(B,C)(A,C) (A,B,C). One task gives one stage;
    two tasks give (A)(B)(A,B)."""
    tasks = list(tasks)
    alone = [[t] for t in tasks]
    pairs = [
        [tasks[i], tasks[i + gap]] for gap in range(1, len(tasks)) for i in range(len(tasks) - gap)
    ]
    together = [tasks] if len(tasks) > 2 else []
    return alone + pairs + together


def anti_curriculum_stages(tasks: Sequence[str], first: Sequence[str]) -> list[list[str]]:
    """The anti-curriculum of decaNLP: the hardest tasks `first` alone, then every task."""
    unknown = [t for t in first if t not in tasks]
    if not first or unknown:
        raise ValueError(f"anti_curriculum: first-stage tasks {list(first)} must be among {tasks}")
    if set(first) == set(tasks):
        raise ValueError("anti_curriculum: the first stage names every task (nothing joins later)")
    return [[t for t in tasks if t in first], list(tasks)]


def set_allocation(
    budgets: Mapping[str, int], stage_sets: Sequence[Sequence[str]]
) -> list[dict[str, int]]:
    """Per-stage iterations for stages with the given task sets: a task with budget N in S
    stages gets N/(S+1) in each later stage it is part of (rounded, and never more than its
    first stage keeps) and the rest in its first stage. With `growth_stages` this is ERNIE's
    automatic allocation."""
    num_stages = len(stage_sets)
    stages: list[dict[str, int]] = [{} for _ in range(num_stages)]
    for task, budget in budgets.items():
        present = [s for s, tasks in enumerate(stage_sets) if task in tasks]
        if not present:
            raise ValueError(f"task {task!r} is in no stage")
        later = len(present) - 1
        # A tiny budget over many stages would leave the first stage a negative share: each
        # later stage gets at most what the first keeps (budget // (later + 1)).
        share = min(round(budget / (num_stages + 1)), budget // (later + 1))
        stages[present[0]][task] = budget - share * later
        for stage in present[1:]:
            stages[stage][task] = share
    return stages


def auto_allocation(
    budgets: Mapping[str, int], first_stage: Mapping[str, int], num_stages: int
) -> list[dict[str, int]]:
    """Per-stage iterations: a task introduced in stage i (0-based) gets N/(S+1) in each later
    stage (rounded, and never more than the first stage keeps) and the rest in stage i."""
    return set_allocation(budgets, growth_stages(first_stage, num_stages))


def explicit_allocation(allocations: Mapping[str, Sequence[int]]) -> list[dict[str, int]]:
    """Per-stage iterations from explicit per-task lists (zeros mean 'not in this stage')."""
    lengths = {len(v) for v in allocations.values()}
    if len(lengths) != 1:
        raise ValueError(f"explicit allocations must all list the same number of stages: {lengths}")
    num_stages = lengths.pop()
    stages: list[dict[str, int]] = [{} for _ in range(num_stages)]
    for task, per_stage in allocations.items():
        for stage, iterations in enumerate(per_stage):
            if iterations < 0:
                raise ValueError(f"task {task!r}: negative allocation in stage {stage + 1}")
            if iterations:
                stages[stage][task] = int(iterations)
    return stages


class ContinualSchedule:
    """Stages of per-task iteration budgets, consumed step by step.

    `stages[s][task]` is the allocation; `done[s][task]` what has been consumed. The object is
    plain (no tensors) and round-trips through `state_dict`/`load_state_dict`.
    """

    def __init__(
        self, stages: Sequence[Mapping[str, int]], seed: int = 0, tasks_per_step: int = 1
    ) -> None:
        if tasks_per_step < 1:
            raise ValueError(f"tasks_per_step must be >= 1, got {tasks_per_step}")
        self.tasks_per_step = tasks_per_step
        self._steps: list[int] | None = None  # steps per stage, when k > 1 (replayed once)
        if not stages:
            raise ValueError("a schedule needs at least one stage")
        for s, stage in enumerate(stages):
            if sum(stage.values()) <= 0:
                raise ValueError(f"stage {s + 1} has no iterations")
        self.stages = [dict(stage) for stage in stages]
        self.done: list[dict[str, int]] = [dict.fromkeys(stage, 0) for stage in self.stages]
        self.seed = seed
        self.step = 0
        self.stage = 0

    # ---- plan ---------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        """Every task in order of introduction."""
        seen: dict[str, None] = {}
        for stage in self.stages:
            seen.update(dict.fromkeys(stage))
        return list(seen)

    @property
    def total_steps(self) -> int:
        """Steps over all stages."""
        return sum(self.stage_length(s) for s in range(len(self.stages)))

    def stage_iterations(self, stage: int) -> int:
        """Iterations (task-steps) planned in one stage."""
        return sum(self.stages[stage].values())

    def stage_length(self, stage: int) -> int:
        """Steps in one stage: its iterations, or fewer when a step trains several tasks."""
        if self.tasks_per_step == 1:
            return self.stage_iterations(stage)
        if self._steps is None:
            replay = ContinualSchedule(self.stages, self.seed)
            steps = [0] * len(self.stages)
            while not replay.finished:
                steps[replay.stage] += 1
                replay.sample(self.tasks_per_step)
            self._steps = steps
        return self._steps[stage]

    def stage_start(self, stage: int) -> int:
        """Global step at which `stage` begins."""
        return sum(self.stage_length(s) for s in range(stage))

    def tasks_seen(self) -> list[str]:
        """Tasks introduced up to and including the current stage."""
        last = min(self.stage, len(self.stages) - 1)
        return [t for t in self.tasks if any(t in self.stages[s] for s in range(last + 1))]

    def plan_table(self, max_columns: int = 8) -> str:
        """Task x stage -> iterations, as an aligned text table; with more than `max_columns`
        stages (a pairwise curriculum has n + n(n-1)/2 + 1), one line per stage instead."""
        if len(self.stages) > max_columns:
            return self._stage_lines()
        tasks = self.tasks
        width = max(len(t) for t in [*tasks, "task"])
        header = f"{'task':<{width}}" + "".join(
            f"{f'stage {s + 1}':>10}" for s in range(len(self.stages))
        )
        lines = [header + f"{'total':>10}"]
        for task in tasks:
            row = [self.stages[s].get(task, 0) for s in range(len(self.stages))]
            lines.append(f"{task:<{width}}" + "".join(f"{n:>10}" for n in row) + f"{sum(row):>10}")
        totals = [self.stage_length(s) for s in range(len(self.stages))]
        lines.append(
            f"{'steps':<{width}}" + "".join(f"{n:>10}" for n in totals) + f"{sum(totals):>10}"
        )
        return "\n".join(lines)

    def _stage_lines(self) -> str:
        lines = [f"{'':<9}{'steps':>10}  tasks (iterations)"]
        for s, stage in enumerate(self.stages):
            tasks = ", ".join(f"{t} ({n})" for t, n in stage.items() if n)
            lines.append(f"{f'stage {s + 1}':<9}{self.stage_length(s):>10}  {tasks}")
        totals = {t: sum(stage.get(t, 0) for stage in self.stages) for t in self.tasks}
        summary = ", ".join(f"{t} ({n})" for t, n in totals.items())
        lines.append(f"{'total':<9}{self.total_steps:>10}  {summary}")
        return "\n".join(lines)

    # ---- consumption --------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Whether every stage's budget is consumed."""
        return self.stage >= len(self.stages)

    def remaining(self, stage: int | None = None) -> dict[str, int]:
        """Iterations left per task in a stage (default: the current one)."""
        s = self.stage if stage is None else stage
        return {
            t: n - self.done[s][t] for t, n in self.stages[s].items() if n - self.done[s][t] > 0
        }

    def sample(self, tasks_per_step: int = 1) -> list[str]:
        """The task(s) of the next step, proportional to remaining budget; consumes them."""
        if self.finished:
            raise StopIteration("the schedule is finished")
        remaining = self.remaining()
        names = list(remaining)
        weights = np.asarray([remaining[n] for n in names], dtype=np.float64)
        k = min(tasks_per_step, len(names))
        rng = np.random.default_rng([self.seed, self.step])
        picked = rng.choice(len(names), size=k, replace=False, p=weights / weights.sum())
        chosen = [names[i] for i in sorted(picked)]
        for name in chosen:
            self.done[self.stage][name] += 1
        self.step += 1
        if not self.remaining():
            self.stage += 1
        return chosen

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: plan, consumption, position."""
        return {
            "stages": [dict(s) for s in self.stages],
            "done": [dict(d) for d in self.done],
            "seed": self.seed,
            "step": self.step,
            "stage": self.stage,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved state. Stages already started keep their saved allocation
        (history); later stages come from this schedule's plan, which may add new tasks."""
        saved_stages = [dict(s) for s in state["stages"]]
        started = min(int(state["stage"]) + 1, len(saved_stages))
        if len(self.stages) < started:
            raise ValueError(
                f"the checkpoint has reached stage {started} but this config plans only "
                f"{len(self.stages)} stage(s)"
            )
        for s in range(started):
            for task in saved_stages[s]:
                if task not in self.tasks:
                    raise ValueError(
                        f"the checkpoint trained task {task!r}, which this config does not list; "
                        f"config tasks: {self.tasks}"
                    )
        self.stages = saved_stages[:started] + self.stages[started:]
        self._steps = None  # the plan changed: replay it again when asked
        self.done = [dict.fromkeys(stage, 0) for stage in self.stages]
        for s, done in enumerate(state["done"][:started]):
            self.done[s].update({t: int(n) for t, n in done.items()})
        self.seed, self.step = int(state["seed"]), int(state["step"])
        self.stage = int(state["stage"])
        while not self.finished and not self.remaining():
            self.stage += 1


class StageLR:
    """LR multiplier (0..1) for a global step over the continual plan: warm-up, then decay,
    restarted at each stage (ERNIE 2.0 trains each stage like a fresh phase) or once for the run."""

    def __init__(
        self,
        schedule: ContinualSchedule,
        warmup_steps: int | None,
        kind: str,
        per_stage: bool,
        warmup_ratio: float = 0.0,
    ) -> None:
        if kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown LR schedule {kind!r}")
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.warmup_ratio = warmup_ratio
        self.kind = kind
        self.per_stage = per_stage

    def _phase(self, step: int) -> tuple[int, int]:
        """(steps into the phase, phase length) for a global step."""
        if not self.per_stage:
            return step, self.schedule.total_steps
        for stage in range(len(self.schedule.stages)):
            start, length = self.schedule.stage_start(stage), self.schedule.stage_length(stage)
            if step < start + length:
                return step - start, length
        return self.schedule.total_steps, self.schedule.total_steps

    def factor(self, step: int) -> float:
        """Multiplier of the peak LR at global `step` (0-based)."""
        local, length = self._phase(step)
        if self.warmup_steps is None:
            # At least one step whenever a share is asked (rounded up: 10% of 12 steps is 2).
            warmup = math.ceil(self.warmup_ratio * length - 1e-9)
        else:
            # Short phases get a proportionally short warm-up (at most half the phase).
            warmup = min(self.warmup_steps, max(length // 2, 1))
        return lr_factor(local, length, warmup, self.kind)
