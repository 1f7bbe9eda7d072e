"""Discourse relation (ERNIE 2.0): which connective links two consecutive sentences?

Pairs are mined from documents: sentence i and sentence i + 1 (same paragraph or the next one)
where sentence i + 1 opens with a marker of `DISCOURSE_MARKERS`. Matching is case-insensitive,
on whole words, longest marker first; a marker followed by a preposition ("because of",
"instead of", "in addition to", "in contrast to", "as a result of", "similarly to") opens a
prepositional phrase, not a connective, and does not count (the leftover "to"/"of" would give
the label away). The marker and the punctuation marks right after it (`,` `;` `:` `--` and
dashes) are removed from the input, and the label is the marker's index in the inventory.

A labelled pair file (`pairs_file`: TSV with a header, CSV with a header, or JSONL, fields
sentence1, sentence2, label; the label is a marker of the inventory) adds to the mined pairs
(`pairs_mode: add`) or replaces them (`replace`). The input of a file row never shows its
label: a marker opening sentence2 (whichever it is) is removed as for mined pairs, and every
other occurrence of the labelled marker in sentence2 ("The results, however, ...") is removed
with the punctuation right after it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ernie_style.pretrain.examples import CorpusContext, Example, TokenizedDocument
from ernie_style.pretrain.heads import SequenceClassificationHead, TaskHead
from ernie_style.pretrain.registry import PretrainTask, TaskConfig, register_task
from pretrain_tasks.pair_files import (
    PairFileMixin,
    read_rows,
    row_error,
    text_field,
    tokenize_text,
    validate_pairs_options,
)

#: The label inventory (label = index): unambiguous sentence-initial English connectives, the
#: 20 of the ERNIE 2.0 issue plus 8 frequent ones (Wikipedia-style text rarely opens sentences
#: with the first 20 alone). Ambiguous openers ("also", "still", "later", "in general") are out.
DISCOURSE_MARKERS: tuple[str, ...] = (
    *("however", "because", "for example", "for instance", "as a result", "meanwhile"),
    *("therefore", "in addition", "moreover", "nevertheless", "in contrast", "instead"),
    *("consequently", "furthermore", "on the other hand", "in fact", "similarly", "otherwise"),
    *("thus", "finally", "additionally", "nonetheless", "hence", "in particular", "in turn"),
    *("in practice", "in other words", "by contrast"),
)
#: Words that make a marker right before them a preposition ("in addition to"), not a connective.
PREPOSITIONS: frozenset[str] = frozenset({"to", "of", "with", "from"})
#: Punctuation right after a marker, removed with it.
MARKER_PUNCTUATION: frozenset[str] = frozenset({",", ";", ":", "--", "-", "—", "–"})
_WORD_CHAR = re.compile(r"\w")


def match_marker(
    words: Sequence[str], markers: Sequence[str] = DISCOURSE_MARKERS
) -> tuple[int, int] | None:
    """`(label, words_to_drop)` when `words` open with a marker (the longest one wins), else
    None. `words_to_drop` covers the marker's words and the punctuation marks right after them.
    """
    if not words:
        return None
    lowered = [w.casefold() for w in words[: _marker_index(tuple(markers))[1] + 1]]
    for k, parts in _marker_index(tuple(markers))[0].get(lowered[0], ()):
        n = len(parts)
        if lowered[:n] != parts:
            continue
        following = lowered[n] if n < len(lowered) else ""
        if following in PREPOSITIONS:
            continue
        drop = n
        while drop < len(words) and words[drop] in MARKER_PUNCTUATION:
            drop += 1  # "However, , there" (a removed citation) leaves two commas
        return k, drop
    return None


@functools.lru_cache(maxsize=8)
def _marker_index(markers: tuple[str, ...]) -> tuple[dict[str, list[tuple[int, list[str]]]], int]:
    """Markers by first word, longest first, and the longest marker's word count."""
    by_first: dict[str, list[tuple[int, list[str]]]] = {}
    for k, marker in enumerate(markers):
        parts = marker.casefold().split()
        if parts:
            by_first.setdefault(parts[0], []).append((k, parts))
    for entries in by_first.values():
        entries.sort(key=lambda entry: -len(entry[1]))
    return by_first, max((len(m.split()) for m in markers), default=0)


def _without_marker(sentence: TokenizedDocument, marker: str) -> np.ndarray:
    """Token ids of `sentence` without an opening marker and without any other whole-word
    occurrence of `marker` (each with the punctuation mark right after it)."""
    words = sentence.doc.words()
    keep = [True] * len(words)
    match = match_marker(words)
    if match is not None:
        keep[: match[1]] = [False] * match[1]
    parts = marker.casefold().split()
    lowered = [w.casefold() for w in words]
    for start in range(len(words) - len(parts) + 1):
        if lowered[start : start + len(parts)] == parts:
            end = start + len(parts)
            end += end < len(words) and words[end] in MARKER_PUNCTUATION
            keep[start:end] = [False] * (end - start)
    kept = [sentence.tokens(w, w + 1) for w in range(len(words)) if keep[w]]
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


@dataclass
class DiscourseRelationConfig(TaskConfig):
    """`pairs_file`: an optional labelled pair file; `pairs_mode`: whether its pairs are
    added to the mined ones or replace them.
    """

    pairs_file: str | None = None
    pairs_mode: str = "add"

    def __post_init__(self) -> None:
        validate_pairs_options("discourse_relation", self.pairs_file, self.pairs_mode)


@register_task
class DiscourseRelation(PairFileMixin, PretrainTask):
    """Sequence level, one label per marker of `DISCOURSE_MARKERS`."""

    name = "discourse_relation"
    level = "sequence"
    description = "which discourse marker (removed from the input) links two sentences"
    task_id = 5
    Config = DiscourseRelationConfig

    def __init__(self, tokenizer: Any, max_seq_len: int = 128, config: Any = None) -> None:
        super().__init__(tokenizer, max_seq_len, config)
        self._longest_marker = max(len(m.split()) for m in DISCOURSE_MARKERS)

    @property
    def num_labels(self) -> int:
        """One label per marker of the inventory."""
        return len(DISCOURSE_MARKERS)

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One example per consecutive sentence pair whose second sentence opens with a
        marker (none in `replace` mode).
        """
        del rng, corpus
        if self.config.pairs_mode == "replace":
            return []
        doc = document.doc
        out = []
        for i in range(doc.num_sentences - 1):
            if doc.sentence_paragraph[i + 1] - doc.sentence_paragraph[i] > 1:
                continue
            start, end = doc.sentence_word_range(i + 1)
            head = [doc.word(w) for w in range(start, min(end, start + self._longest_marker + 4))]
            match = match_marker(head)
            if match is None:
                continue
            label, drop = match
            if not any(_WORD_CHAR.search(doc.word(w)) for w in range(start + drop, end)):
                continue
            first, second = document.sentence_tokens(i), document.tokens(start + drop, end)
            if len(first) and len(second):
                out.append(self._pair_example(first, second, label))
        return out

    def _load_file(self, path: str) -> list[Example]:
        out = []
        for line, row in read_rows(path, ("sentence1", "sentence2", "label")):
            first = tokenize_text(text_field(path, line, row, "sentence1"), self.tokenizer)
            second = tokenize_text(text_field(path, line, row, "sentence2"), self.tokenizer)
            label = self._label(path, line, row["label"])
            rest = _without_marker(second, DISCOURSE_MARKERS[label])
            if not len(first.token_ids) or not len(rest):
                raise row_error(path, line, "a sentence has no tokens (besides the marker)")
            out.append(self._pair_example(first.token_ids, rest, label))
        return out

    def _label(self, path: str, line: int, value: Any) -> int:
        marker = " ".join(value.casefold().split()) if isinstance(value, str) else None
        if marker not in DISCOURSE_MARKERS:
            raise row_error(
                path, line, f"label {value!r} is not a known marker; known: {DISCOURSE_MARKERS}"
            )
        return DISCOURSE_MARKERS.index(marker)

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Classifier over the markers on the pooled [CLS] output."""
        return SequenceClassificationHead(backbone.config.hidden_size, self.num_labels)
