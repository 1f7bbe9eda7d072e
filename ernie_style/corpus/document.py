"""The annotated `Document`: what `prepare` writes and what every pretraining task reads.

A document is stored flat, as parallel integer lists, so that one Arrow row holds it without
nesting and the tasks can index it with numpy. Character offsets refer to `text`.

    text                  the whole document; paragraphs joined by "\\n\\n"
    sentence_starts/ends  character span of each sentence
    sentence_paragraph    paragraph index of each sentence (non-decreasing)
    word_starts/ends      character span of each word (spaCy token, whitespace excluded)
    word_sentence         sentence index of each word (non-decreasing)
    phrase_starts/ends    word-index span [start, end) of each phrase (noun chunk)
    entity_starts/ends    word-index span [start, end) of each named entity
    entity_labels         the entity type, e.g. "PERSON"

Invariants (checked by `Document.validate`): spans are in range and ordered, every word lies
inside its sentence, phrase and entity spans are non-empty and do not cross sentences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

_FEATURES: Any = None


def __getattr__(name: str) -> Any:
    """`DOCUMENT_FEATURES`, the Arrow schema of a prepared corpus (`prepare` writes it and
    `load_corpus` checks it), built on first use so importing this module does not import
    `datasets` (commands that only read documents start faster)."""
    global _FEATURES
    if name != "DOCUMENT_FEATURES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _FEATURES is None:
        import datasets

        _FEATURES = datasets.Features(
            {
                "id": datasets.Value("string"),
                "title": datasets.Value("string"),
                "text": datasets.Value("string"),
                "sentence_starts": datasets.List(datasets.Value("int32")),
                "sentence_ends": datasets.List(datasets.Value("int32")),
                "sentence_paragraph": datasets.List(datasets.Value("int32")),
                "word_starts": datasets.List(datasets.Value("int32")),
                "word_ends": datasets.List(datasets.Value("int32")),
                "word_sentence": datasets.List(datasets.Value("int32")),
                "phrase_starts": datasets.List(datasets.Value("int32")),
                "phrase_ends": datasets.List(datasets.Value("int32")),
                "entity_starts": datasets.List(datasets.Value("int32")),
                "entity_ends": datasets.List(datasets.Value("int32")),
                "entity_labels": datasets.List(datasets.Value("string")),
            }
        )
    return _FEATURES


@dataclass
class Document:
    """One annotated document (see the module docstring for the field meanings)."""

    id: str
    title: str
    text: str
    sentence_starts: list[int] = field(default_factory=list)
    sentence_ends: list[int] = field(default_factory=list)
    sentence_paragraph: list[int] = field(default_factory=list)
    word_starts: list[int] = field(default_factory=list)
    word_ends: list[int] = field(default_factory=list)
    word_sentence: list[int] = field(default_factory=list)
    phrase_starts: list[int] = field(default_factory=list)
    phrase_ends: list[int] = field(default_factory=list)
    entity_starts: list[int] = field(default_factory=list)
    entity_ends: list[int] = field(default_factory=list)
    entity_labels: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Document:
        """Build a document from an Arrow/dict row, ignoring unknown columns."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})

    def to_row(self) -> dict[str, Any]:
        """The dict stored in the Arrow dataset."""
        return asdict(self)

    @property
    def num_sentences(self) -> int:
        """Number of sentences."""
        return len(self.sentence_starts)

    @property
    def num_words(self) -> int:
        """Number of words."""
        return len(self.word_starts)

    @property
    def has_annotations(self) -> bool:
        """Whether phrase/entity annotation was run (False for `--annotator none`)."""
        return bool(self.phrase_starts or self.entity_starts)

    def word(self, i: int) -> str:
        """Surface form of word `i`."""
        return self.text[self.word_starts[i] : self.word_ends[i]]

    def words(self) -> list[str]:
        """Surface forms of all words."""
        return [self.text[s:e] for s, e in zip(self.word_starts, self.word_ends, strict=True)]

    def sentence(self, i: int) -> str:
        """Text of sentence `i`."""
        return self.text[self.sentence_starts[i] : self.sentence_ends[i]]

    def sentence_word_range(self, i: int) -> tuple[int, int]:
        """Word-index span [start, end) of sentence `i` (empty if it has no words)."""
        import bisect

        start = bisect.bisect_left(self.word_sentence, i)
        end = bisect.bisect_right(self.word_sentence, i)
        return start, end

    def paragraphs(self) -> list[list[int]]:
        """Sentence indices grouped by paragraph, in order."""
        groups: list[list[int]] = []
        last = None
        for i, p in enumerate(self.sentence_paragraph):
            if p != last:
                groups.append([])
                last = p
            groups[-1].append(i)
        return groups

    def validate(self) -> None:
        """Raise ValueError naming the first broken invariant."""
        n_text, n_sent, n_word = len(self.text), self.num_sentences, self.num_words
        _same_len(self, "sentence_starts", "sentence_ends", "sentence_paragraph")
        _same_len(self, "word_starts", "word_ends", "word_sentence")
        _same_len(self, "phrase_starts", "phrase_ends")
        _same_len(self, "entity_starts", "entity_ends", "entity_labels")
        for i in range(n_sent):
            s, e = self.sentence_starts[i], self.sentence_ends[i]
            if not 0 <= s < e <= n_text:
                raise ValueError(f"document {self.id!r}: sentence {i} span {s}:{e} out of range")
            if i and (s < self.sentence_ends[i - 1] or _decreases(self.sentence_paragraph, i)):
                raise ValueError(f"document {self.id!r}: sentence {i} out of order")
        for i in range(n_word):
            s, e, k = self.word_starts[i], self.word_ends[i], self.word_sentence[i]
            if not (0 <= k < n_sent and 0 <= s < e <= n_text):
                raise ValueError(f"document {self.id!r}: word {i} span {s}:{e} out of range")
            if not (self.sentence_starts[k] <= s and e <= self.sentence_ends[k]):
                raise ValueError(f"document {self.id!r}: word {i} outside sentence {k}")
            if i and (s < self.word_ends[i - 1] or _decreases(self.word_sentence, i)):
                raise ValueError(f"document {self.id!r}: word {i} out of order")
        for kind in ("phrase", "entity"):
            starts, ends = getattr(self, f"{kind}_starts"), getattr(self, f"{kind}_ends")
            for s, e in zip(starts, ends, strict=True):
                if not 0 <= s < e <= n_word:
                    raise ValueError(f"document {self.id!r}: {kind} span {s}:{e} out of range")
                if self.word_sentence[s] != self.word_sentence[e - 1]:
                    raise ValueError(f"document {self.id!r}: {kind} {s}:{e} crosses sentences")


def _same_len(doc: Document, *names: str) -> None:
    lengths = {name: len(getattr(doc, name)) for name in names}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"document {doc.id!r}: parallel fields differ in length: {lengths}")


def _decreases(values: list[int], i: int) -> bool:
    return values[i] < values[i - 1]


class DocumentSequence(Sequence[Document]):
    """A lazy `Sequence[Document]` over rows (a `datasets.Dataset` or a list of dicts)."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Document:  # type: ignore[override]
        """The document at `index` (slices are not supported)."""
        if not isinstance(index, int | np.integer):
            raise TypeError("DocumentSequence takes integer indices")
        return Document.from_row(self.rows[int(index)])
