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
label (`strip_markers`): a marker opening sentence2 (whichever it is, with a preposition after
it) is removed, and every other occurrence of the labelled marker, also inside a run-on
("poor.However,"), goes with its punctuation ("The results, however, are" -> "The results are").

On a Chinese corpus the inventory is `DISCOURSE_MARKERS_ZH` (但是, 因此, 所以, 虽然, ...): a
marker counts when sentence i + 1 opens with it and it ends at a segmenter word boundary, so no
part of a connective is left in the input.
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
#: The Chinese inventory: sentence-initial connectives (DisSent's Chinese markers, which ERNIE
#: 2.0's Chinese discourse data followed, plus frequent unambiguous openers). A marker matches
#: only when it ends at a word boundary of the segmenter, so no connective character is left.
DISCOURSE_MARKERS_ZH: tuple[str, ...] = (
    *("但是", "但", "可是", "不过", "然而", "而且", "并且", "因为", "因此", "所以"),
    *("如果", "虽然", "尽管", "此外", "另外", "同时", "例如", "比如", "于是", "否则"),
    *("总之", "因而", "相反", "其实"),
)
#: Punctuation right after a Chinese marker, removed with it.
MARKER_PUNCTUATION_ZH: frozenset[str] = frozenset({"，", "、", "：", ",", ":", "——"})
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


def markers_for(language: str) -> tuple[str, ...]:
    """The marker inventory of a corpus language (English for any but Chinese)."""
    return DISCOURSE_MARKERS_ZH if language == "zh" else DISCOURSE_MARKERS


def match_marker_zh(
    words: Sequence[str], markers: Sequence[str] = DISCOURSE_MARKERS_ZH
) -> tuple[int, int] | None:
    """`(label, words_to_drop)` when Chinese `words` open with a marker that ends at a word
    boundary (the longest such marker wins), else None; the punctuation right after the marker
    is dropped with it. "但是" opening a sentence matches 但是, never 但 plus a stray 是."""
    ends, total = {}, 0
    for index, word in enumerate(words[:8]):
        total += len(word)
        ends[total] = index + 1
    opening = "".join(words[:8])
    found = [k for k, m in enumerate(markers) if opening.startswith(m) and len(m) in ends]
    if not found:
        return None
    best = max(found, key=lambda k: len(markers[k]))
    drop = ends[len(markers[best])]
    while drop < len(words) and words[drop] in MARKER_PUNCTUATION_ZH:
        drop += 1
    return best, drop


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


def strip_markers(text: str, marker: str, language: str = "en") -> str:
    """A pair file's second sentence without anything that gives its label `marker` away: the
    marker it opens with (whichever of the inventory, with a preposition after it: "Because of
    the rain" keeps "the rain"), and every other occurrence of `marker`, also inside a run-on
    ("poor.However, the"), with its punctuation ("The results, however, are" -> "The results
    are"). Chinese: the opening marker, and other occurrences of a marker of two or more
    characters (a single character such as 但 is part of too many words)."""
    if language == "zh":
        opening = max((m for m in DISCOURSE_MARKERS_ZH if text.startswith(m)), key=len, default="")
        text = text[len(opening) :].lstrip("，、：,: ")
        if len(marker) >= 2:
            text = re.sub(re.escape(marker) + "[，、：,:]?", "", text)
        return text.strip()
    text = _opening_marker().sub("", text, count=1)
    words = r"\s+".join(re.escape(part) for part in marker.split())
    occurrence = re.compile(rf"(?:,\s*)?\b{words}\b{_AFTER_MARKER}", re.IGNORECASE)
    text = occurrence.sub(" ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return re.sub(r"\s{2,}", " ", text).strip()


#: What follows a marker and goes with it: a preposition, then punctuation and spaces.
_AFTER_MARKER = r"(?:\s+(?:to|of|with|from)\b)?\s*(?:--|[,;:—–-])?\s*"


@functools.lru_cache(maxsize=1)
def _opening_marker() -> re.Pattern[str]:
    """Any English marker at the start of a text (longest first), with what follows it."""
    names = sorted(DISCOURSE_MARKERS, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(map(re.escape, m.split())) for m in names)
    return re.compile(rf"^\s*(?:{alternatives})\b{_AFTER_MARKER}", re.IGNORECASE)


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
    """Sequence level, one label per marker of the corpus language's inventory
    (`DISCOURSE_MARKERS`, or `DISCOURSE_MARKERS_ZH` on Chinese)."""

    name = "discourse_relation"
    level = "sequence"
    description = "which discourse marker (removed from the input) links two sentences"
    task_id = 5
    Config = DiscourseRelationConfig

    def __init__(
        self, tokenizer: Any, max_seq_len: int = 128, config: Any = None, language: str = "en"
    ) -> None:
        super().__init__(tokenizer, max_seq_len, config, language)
        #: The label inventory of the corpus language.
        self.markers = markers_for(language)
        self._longest_marker = 8 if language == "zh" else max(len(m.split()) for m in self.markers)

    @property
    def num_labels(self) -> int:
        """One label per marker of the inventory."""
        return len(self.markers)

    def match(self, words: Sequence[str]) -> tuple[int, int] | None:
        """The marker opening `words` in this language's inventory (`match_marker`)."""
        if self.language == "zh":
            return match_marker_zh(words, self.markers)
        return match_marker(words, self.markers)

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
            match = self.match(head)
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
            label = self._label(path, line, row["label"])
            text = strip_markers(
                text_field(path, line, row, "sentence2"), self.markers[label], self.language
            )
            rest = tokenize_text(text, self.tokenizer).token_ids
            if not len(first.token_ids) or not len(rest):
                raise row_error(path, line, "a sentence has no tokens (besides the marker)")
            out.append(self._pair_example(first.token_ids, rest, label))
        return out

    def _label(self, path: str, line: int, value: Any) -> int:
        marker = " ".join(value.casefold().split()) if isinstance(value, str) else None
        if marker not in self.markers:
            raise row_error(
                path, line, f"label {value!r} is not a known marker; known: {self.markers}"
            )
        return self.markers.index(marker)

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Classifier over the markers on the pooled [CLS] output."""
        return SequenceClassificationHead(backbone.config.hidden_size, self.num_labels)
