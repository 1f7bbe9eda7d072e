"""Deterministic, resumable streams of one task's examples over a corpus.

Each epoch visits the documents in a seeded random order. The examples of document `d` in epoch
`e` are built with an RNG seeded by (seed, task id, e, d), so the stream's position is three
integers (epoch, cursor into the order, offset into the document's examples): resuming needs no
RNG state and replays exactly the same examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ernie_style.examples import CorpusContext, Example
from ernie_style.registry import PretrainTask

_CORPUS_LEVEL = -1  # the "document" index under which corpus-level examples are drawn


class TaskExampleStream:
    """An endless stream of one task's examples; `state_dict()` captures its position."""

    def __init__(self, task: PretrainTask, corpus: CorpusContext, seed: int = 0) -> None:
        if len(corpus) == 0:
            raise ValueError(f"task {task.name}: the corpus has no documents")
        self.task = task
        self.corpus = corpus
        self.seed = seed
        self.epoch = 0
        self.cursor = _CORPUS_LEVEL  # position in this epoch's document order
        self.offset = 0  # examples already taken from the current document
        self._order: np.ndarray | None = None
        self._pending: list[Example] = []
        # Training progress (0..1) as last told by the trainer, and the value the current
        # document's examples were built with: curricula (staged masking) read it, and resume
        # must rebuild the current document exactly as it was built.
        self.progress = 0.0
        self._doc_progress = 0.0

    def _rng(self, document: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.task.task_id, self.epoch, document + 2])

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = self._rng(-2).permutation(len(self.corpus))
        return self._order

    def set_progress(self, fraction: float) -> None:
        """Training progress (0..1); applies from the next document the stream opens."""
        self.progress = float(fraction)

    def _load_current(self, progress: float | None = None) -> None:
        self._doc_progress = self.progress if progress is None else progress
        self.task.set_progress(self._doc_progress)
        if self.cursor == _CORPUS_LEVEL:
            examples = self.task.corpus_examples(self._rng(_CORPUS_LEVEL), self.corpus)
        else:
            document = int(self._epoch_order()[self.cursor])
            tokenized = self.corpus.tokenized(document)
            examples = self.task.examples(tokenized, self._rng(document), self.corpus)
        self._pending = examples[self.offset :][::-1]  # reversed: pop() from the end

    def _advance_document(self) -> None:
        self.cursor += 1
        self.offset = 0
        if self.cursor >= len(self.corpus):
            self.epoch += 1
            self.cursor = _CORPUS_LEVEL
            self._order = None

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        documents_without_examples = 0
        while not self._pending:
            if documents_without_examples > len(self.corpus) + 1:
                raise ValueError(
                    f"task {self.task.name}: no document of the corpus yields an example "
                    "(documents too short for this task?)"
                )
            self._load_current()
            if not self._pending:
                documents_without_examples += 1
                self._advance_document()
        example = self._pending.pop()
        self.offset += 1
        if not self._pending:
            self._advance_document()
        return example

    def take(self, n: int) -> list[Example]:
        """The next `n` examples."""
        return [next(self) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """The stream position (plus what it must match on load)."""
        return {
            "task": self.task.name,
            "seed": self.seed,
            "num_documents": len(self.corpus),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "offset": self.offset,
            "doc_progress": self._doc_progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict`; refuses a different task or corpus size."""
        for key, mine in (("task", self.task.name), ("num_documents", len(self.corpus))):
            if state.get(key) != mine:
                raise ValueError(
                    f"stream state is for {key}={state.get(key)!r}, this stream has {mine!r}"
                )
        self.seed = int(state["seed"])
        self.epoch, self.cursor, self.offset = (
            int(state["epoch"]),
            int(state["cursor"]),
            int(state["offset"]),
        )
        self._order = None
        self._pending = []
        if self.cursor != _CORPUS_LEVEL or self.offset:
            self._load_current(progress=float(state.get("doc_progress", 0.0)))
