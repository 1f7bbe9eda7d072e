"""Deterministic, resumable streams of one task's examples over a corpus, split into shards.

A stream is one shard (`shard` of `num_shards`) of a task's example sequence. Each epoch has a
seeded document order shared by all shards; shard `i` visits the documents `order[i::S]`, after
its slice `[i::S]` of the task's corpus-level examples (pair files). The examples of a document in
an epoch are built with an RNG seeded by (seed, task id, epoch, document), so a shard's position
is three integers (epoch, cursor into its documents, offset into the current document's
examples): resuming needs no RNG state and replays exactly the same examples. Over one epoch the
shards together visit every document exactly once.

Training uses one shard per (rank, loader slot) (`ernie_style.pretrain.loader`), so each process
builds only its own share of a step. A run resumed with a different number of shards (another world
size or `data.num_workers`) is re-sharded by `reshard`: what the old shards had not yet consumed in
their current epochs is dealt out to the new shards as a `carry` list they finish first, so no
example of that epoch is lost or repeated; then the new shards start a fresh epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ernie_style.pretrain.examples import CorpusContext, Example
from ernie_style.pretrain.registry import PretrainTask

_CORPUS_LEVEL = -1  # the "document" index under which corpus-level examples are drawn

#: A unit of examples: (document or -1, epoch, part, parts, skip). Its examples are those of
#: the document (or the corpus-level list) in that epoch, `[part::parts]`, minus the first `skip`.
Unit = tuple[int, int, int, int, int]


class TaskExampleStream:
    """An endless stream of one shard of a task's examples; `state_dict()` captures its position."""

    def __init__(
        self,
        task: PretrainTask,
        corpus: CorpusContext,
        seed: int = 0,
        shard: int = 0,
        num_shards: int = 1,
    ) -> None:
        if len(corpus) == 0:
            raise ValueError(f"task {task.name}: the corpus has no documents")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} is not in [0, {num_shards})")
        if num_shards > len(corpus):
            raise ValueError(
                f"task {task.name}: {num_shards} data shards (processes x loader workers) but "
                f"only {len(corpus)} training documents; use fewer data.num_workers or a "
                "bigger corpus"
            )
        self.task = task
        self.corpus = corpus
        self.seed = seed
        self.shard = shard
        self.num_shards = num_shards
        self.epoch = 0
        self.cursor = _CORPUS_LEVEL  # position in this shard's documents of the epoch
        self.offset = 0  # examples already taken from the current unit
        #: Units left over from an elastic re-shard, consumed (in order) before the regular
        #: epochs; the list is fixed after loading, `carry_done` of them are finished.
        self.carry: list[Unit] = []
        self.carry_done = 0
        self._order: np.ndarray | None = None
        self._pending: list[Example] = []
        # Training progress (0..1) as last told by the trainer, and the value the current
        # unit's examples were built with: curricula (staged masking) read it, and resume must
        # rebuild the current unit exactly as it was built.
        self.progress = 0.0
        self._doc_progress = 0.0

    def _rng(self, epoch: int, document: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.task.task_id, epoch, document + 2])

    def epoch_documents(self, epoch: int) -> np.ndarray:
        """The documents of this shard in `epoch`, in visiting order."""
        order = self._rng(epoch, -2).permutation(len(self.corpus))
        return order[self.shard :: self.num_shards]

    def _documents(self) -> np.ndarray:
        if self._order is None:
            self._order = self.epoch_documents(self.epoch)
        return self._order

    def current_unit(self) -> Unit:
        """The unit the stream is in (or will open next)."""
        if self.in_carry:
            return self.carry[self.carry_done]
        if self.cursor == _CORPUS_LEVEL:
            return (_CORPUS_LEVEL, self.epoch, self.shard, self.num_shards, 0)
        return (int(self._documents()[self.cursor]), self.epoch, 0, 1, 0)

    def set_progress(self, fraction: float) -> None:
        """Training progress (0..1); applies from the next unit the stream opens."""
        self.progress = float(fraction)

    def unit_examples(self, unit: Unit) -> list[Example]:
        """Every example of a unit (before its `skip`)."""
        document, epoch, part, parts, _ = unit
        rng = self._rng(epoch, document)
        if document == _CORPUS_LEVEL:
            return self.task.corpus_examples(rng, self.corpus)[part::parts]
        return self.task.examples(self.corpus.tokenized(document), rng, self.corpus)

    def _load_current(self, progress: float | None = None) -> None:
        self._doc_progress = self.progress if progress is None else progress
        self.task.set_progress(self._doc_progress)
        unit = self.current_unit()
        examples = self.unit_examples(unit)
        self._pending = examples[unit[4] + self.offset :][::-1]  # reversed: pop() from the end

    def _advance(self) -> None:
        self.offset = 0
        if self.in_carry:
            self.carry_done += 1
            return
        self.cursor += 1
        if self.cursor >= len(self._documents()):
            self.epoch += 1
            self.cursor = _CORPUS_LEVEL
            self._order = None

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        empty_units = 0
        limit = len(self.corpus) // self.num_shards + len(self.carry) - self.carry_done + 3
        while not self._pending:
            if empty_units > limit:
                raise ValueError(
                    f"task {self.task.name}: no document of the corpus"
                    + (f" (shard {self.shard} of {self.num_shards})" if self.num_shards > 1 else "")
                    + " yields an example (documents too short for this task?)"
                )
            self._load_current()
            if not self._pending:
                empty_units += 1
                self._advance()
        example = self._pending.pop()
        self.offset += 1
        if not self._pending:
            self._advance()
        return example

    def take(self, n: int) -> list[Example]:
        """The next `n` examples."""
        return [next(self) for _ in range(n)]

    @property
    def in_carry(self) -> bool:
        """Whether the stream is still finishing its carry units."""
        return self.carry_done < len(self.carry)

    def state_dict(self, with_carry: bool = True) -> dict[str, Any]:
        """The stream position (plus what it must match on load). `with_carry=False` leaves
        out the carry list (fixed since loading; it can be long), for per-step reports."""
        state = {
            "task": self.task.name,
            "seed": self.seed,
            "num_documents": len(self.corpus),
            "shard": self.shard,
            "num_shards": self.num_shards,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "offset": self.offset,
            "carry_done": self.carry_done,
            "doc_progress": self._doc_progress,
        }
        if with_carry:
            state["carry"] = [list(unit) for unit in self.carry]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict` for the same shard layout; refuses a
        different task, corpus size or shard (re-shard with `reshard` first)."""
        saved = (state.get("shard", 0), state.get("num_shards", 1))
        for key, mine in (
            ("task", self.task.name),
            ("num_documents", len(self.corpus)),
            ("shard", (self.shard, self.num_shards)),
        ):
            theirs = saved if key == "shard" else state.get(key)
            if theirs != mine:
                raise ValueError(f"stream state is for {key}={theirs!r}, this stream has {mine!r}")
        self._set_position(state)
        if self.offset:  # mid-unit: rebuild it as it was built (an unopened one waits)
            self._load_current(progress=float(state.get("doc_progress", 0.0)))

    def _set_position(self, state: dict[str, Any]) -> None:
        """Take the position fields of a saved state (nothing is built yet)."""
        self.seed = int(state["seed"])
        self.epoch, self.cursor, self.offset = (
            int(state["epoch"]),
            int(state["cursor"]),
            int(state["offset"]),
        )
        self.carry = [tuple(int(v) for v in unit) for unit in state.get("carry", [])]  # type: ignore[misc]
        self.carry_done = int(state.get("carry_done", 0))
        self._order = None
        self._pending = []

    def remaining_units(self) -> list[Unit]:
        """What this shard has not consumed of its carry and current epoch, as units (the
        current one with its consumed examples skipped)."""
        units = list(self.carry[self.carry_done :])
        if units:
            document, epoch, part, parts, skip = units[0]
            units[0] = (document, epoch, part, parts, skip + self.offset)
        documents = self._documents()
        start = self.cursor
        if not units and self.offset:
            units.append((*self.current_unit()[:4], self.offset))
            start += 1
        if start == _CORPUS_LEVEL:
            units.append((_CORPUS_LEVEL, self.epoch, self.shard, self.num_shards, 0))
            start = 0
        units.extend((int(d), self.epoch, 0, 1, 0) for d in documents[max(start, 0) :])
        return units


def reshard(
    states: Sequence[dict[str, Any]],
    task: PretrainTask,
    corpus: CorpusContext,
    num_shards: int,
) -> list[dict[str, Any]]:
    """New shard states for `num_shards` shards continuing from the saved `states` of another
    shard layout: every unit the old shards had left in their current epoch (and carry) is dealt
    out round-robin, then each new shard starts the epoch after the latest old one.
    """
    if not states:
        raise ValueError(f"task {task.name}: no saved stream state to re-shard")
    old_shards = int(states[0].get("num_shards", 1))
    if len(states) != old_shards:
        raise ValueError(f"task {task.name}: {len(states)} saved shard states for {old_shards}")
    leftover: list[Unit] = []
    epochs = []
    for shard, state in enumerate(states):
        old = TaskExampleStream(task, corpus, int(state["seed"]), shard, old_shards)
        old._set_position(state)
        leftover.extend(old.remaining_units())
        epochs.append(old.epoch)
    next_epoch = max(epochs) + 1
    seed = int(states[0]["seed"])
    fresh = []
    for shard in range(num_shards):
        stream = TaskExampleStream(task, corpus, seed, shard, num_shards)
        stream.epoch = next_epoch
        stream.carry = leftover[shard::num_shards]
        fresh.append(stream.state_dict())
    return fresh
