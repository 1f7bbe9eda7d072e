"""Per-rank step batches built in DataLoader worker processes, and the run's stream positions.

Each rank builds only its own share of a step: for every task the step samples, its `batch_size /
tasks / world` examples, from its own shard of the task's example sequence
(`ernie_style.pretrain.stream`). The shards are (rank, slot) pairs, `world x max(1,
data.num_workers)` in all: DataLoader worker `w` builds the steps `start + w, start + w + N, ...`
from slot `step % N`'s shards, and the DataLoader hands them back in step order (round-robin over
workers), so the batches do not depend on timing. Every worker follows its own copy of the continual
schedule (sampling is seeded by (seed, step)), and the trainer checks that the tasks of each batch
are the ones its schedule samples.

A batch carries its slot's stream positions after it was built; the trainer keeps the latest of
every slot, so a checkpoint records the positions of what was consumed, not what was prefetched.
With `num_workers` 0 the same code runs in the training process (one slot, like one worker).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ernie_style.defaults import MLM_TASK
from ernie_style.pretrain.examples import CorpusContext, collate
from ernie_style.pretrain.registry import PretrainTask
from ernie_style.pretrain.schedule import ContinualSchedule
from ernie_style.pretrain.stream import TaskExampleStream, reshard


@dataclass(frozen=True)
class StepLayout:
    """How a step's global batch splits over tasks, processes, micro-batches and slots."""

    batch_size: int
    tasks_per_step: int = 1
    mlm_every_step: bool = False
    grad_accum_steps: int = 1
    rank: int = 0
    world: int = 1
    num_workers: int = 0

    @property
    def num_slots(self) -> int:
        """Stream shards per process: one per loader worker (one without workers)."""
        return max(1, self.num_workers)

    @property
    def num_shards(self) -> int:
        """Stream shards over all processes."""
        return self.world * self.num_slots

    def shard(self, slot: int) -> int:
        """The global shard index of this process's `slot`."""
        return self.rank * self.num_slots + slot

    def sample_tasks(self, schedule: ContinualSchedule) -> list[str]:
        """The tasks of the schedule's next step (consumes them from the schedule)."""
        tasks = schedule.sample(self.tasks_per_step)
        if self.mlm_every_step and MLM_TASK not in tasks:
            tasks.append(MLM_TASK)
        return tasks

    def local_examples(self, num_tasks: int) -> int:
        """Examples of one task this process builds for a step."""
        return self.batch_size // num_tasks // self.world


class StepBatches(IterableDataset):
    """The remaining steps of a schedule as this process's batches (see the module doc)."""

    def __init__(
        self,
        schedule: ContinualSchedule,
        streams: list[dict[str, TaskExampleStream]],
        layout: StepLayout,
        pad_id: int,
    ) -> None:
        super().__init__()
        # A snapshot: the trainer goes on sampling its own schedule, and without workers this
        # dataset's iterator only starts at the first `next` (after the trainer's first sample).
        self.schedule = copy.deepcopy(schedule)
        self.streams = streams
        self.layout = layout
        self.pad_id = pad_id
        self.start = schedule.step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.layout.num_slots:
            raise RuntimeError(f"{workers} loader workers for {self.layout.num_slots} slots")
        schedule = copy.deepcopy(self.schedule)
        total = max(schedule.total_steps, 1)
        while not schedule.finished:
            step = schedule.step
            tasks = self.layout.sample_tasks(schedule)
            if (step - self.start) % workers == worker:
                yield self.build(step, tasks, step / total)

    def build(self, step: int, tasks: list[str], progress: float) -> dict[str, Any]:
        """One step's micro-batches per task, and the slot's stream positions after them."""
        layout, slot = self.layout, step % self.layout.num_slots
        local = layout.local_examples(len(tasks))
        size = local // layout.grad_accum_steps
        batches = {}
        for task in tasks:
            stream = self.streams[slot][task]
            stream.set_progress(progress)
            examples = stream.take(local)
            batches[task] = [
                collate(examples[i * size : (i + 1) * size], self.pad_id)
                for i in range(layout.grad_accum_steps)
            ]
        states = {task: self.streams[slot][task].state_dict(with_carry=False) for task in tasks}
        return {"step": step, "tasks": tasks, "slot": slot, "batches": batches, "states": states}


class DataStreams:
    """The task streams of one process (one per task and slot) and their consumed positions."""

    def __init__(
        self,
        tasks: Mapping[str, PretrainTask],
        corpus: CorpusContext,
        seed: int,
        layout: StepLayout,
    ) -> None:
        self.tasks, self.corpus, self.seed, self.layout = dict(tasks), corpus, seed, layout
        self.streams = [
            {
                name: TaskExampleStream(task, corpus, seed, layout.shard(slot), layout.num_shards)
                for name, task in self.tasks.items()
            }
            for slot in range(layout.num_slots)
        ]
        self.positions = [
            {name: stream.state_dict() for name, stream in slot.items()} for slot in self.streams
        ]

    def loader(self, schedule: ContinualSchedule, pad_id: int, prefetch_factor: int = 2) -> Any:
        """A DataLoader over the schedule's remaining steps (workers start on first `next`)."""
        workers = self.layout.num_workers
        dataset = StepBatches(schedule, self.streams, self.layout, pad_id)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=prefetch_factor if workers else None,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def consumed(self, batch: Mapping[str, Any]) -> None:
        """Record the positions a consumed batch reports for its slot (its streams' carry
        lists, fixed since loading, stay as they were loaded)."""
        positions = self.positions[int(batch["slot"])]
        for task, state in batch["states"].items():
            positions[task] = {**positions[task], **state}

    def state_dict(self, gather: Callable[[Any], list[Any]] | None = None) -> dict[str, Any]:
        """Every shard's position, over all processes (`gather` collects one object per
        rank; a collective, so every process calls it)."""
        local = {name: [slot[name] for slot in self.positions] for name in self.tasks}
        per_rank = gather(local) if gather is not None else [local]
        return {
            name: {
                "num_shards": self.layout.num_shards,
                "shards": [state for rank in per_rank for state in rank[name]],
            }
            for name in self.tasks
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> str | None:
        """Restore saved positions; re-shards (elastic) when the shard layout changed and
        returns a message saying so. Tasks the checkpoint lacks start at the beginning."""
        resharded: list[int] = []
        for name, entry in saved.items():
            if name not in self.tasks:
                continue
            if "shards" not in entry:  # a checkpoint from before sharding: one global stream
                entry = {"num_shards": 1, "shards": [entry]}
            shards = list(entry["shards"])
            if int(entry["num_shards"]) != self.layout.num_shards:
                resharded.append(int(entry["num_shards"]))
                shards = reshard(shards, self.tasks[name], self.corpus, self.layout.num_shards)
            for slot, streams in enumerate(self.streams):
                streams[name].load_state_dict(shards[self.layout.shard(slot)])
                self.positions[slot][name] = streams[name].state_dict()
        if not resharded:
            return None
        old = "/".join(str(n) for n in sorted(set(resharded)))
        return (
            f"elastic resume: the data shards (processes x loader workers) changed from {old} to "
            f"{self.layout.num_shards} for {len(resharded)} task(s); what the old shards had left "
            "of their epoch is finished first, so no example of it is lost or repeated, but the "
            "example order differs from an uninterrupted run"
        )


def gather_from_ranks(obj: Any) -> list[Any]:
    """`obj` from every process, in rank order (just `[obj]` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
