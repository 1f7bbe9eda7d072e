"""Token-document relation (ERNIE 2.0): does a word of a segment also occur in another segment
of the same document? Words that recur across a document tend to be its key words, so the task
teaches the model to spot them from one segment alone.

Segments are the windows of whole sentences that tile the document (`sentence_windows`); a
document that fits one window but has at least 2 sentences is cut into two halves by sentence
(the first half gets the extra sentence of an odd count). A one-sentence document gives no
example. Each segment makes one example, labelled per word on its first sub-token:

    1               the case-folded word occurs in some other segment of the document
    0               it does not
    IGNORE_INDEX    punctuation (a word without any alphanumeric character), special tokens

A segment without any labelled word (e.g. only punctuation) gives no example.

Balance (`balance: true`, the default): most words of a document recur in another of its
segments (function words above all; ~80% positive on the demo corpus, more for documents of
many segments), so always answering 1 would score ~80%. Each example therefore keeps every label
of its rarer class and as many labels of the other, drawn with the example's RNG (the rest
become IGNORE_INDEX): the labelled words are half positive, half negative, accuracy is compared
with 50%, and the model cannot score by predicting the common class. A segment with only one
class gives no example. `balance: false` keeps every label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from torch import nn

from ernie_style.pretrain.examples import (
    IGNORE_INDEX,
    CorpusContext,
    Example,
    TokenizedDocument,
    sentence_windows,
)
from ernie_style.pretrain.heads import TaskHead, TokenClassificationHead
from ernie_style.pretrain.registry import PretrainTask, TaskConfig, register_task


def is_punctuation(word: str) -> bool:
    """True for a word without any alphanumeric character (punctuation, symbols)."""
    return not any(c.isalnum() for c in word)


def document_segments(document: TokenizedDocument, budget: int) -> list[tuple[int, int]]:
    """Word spans [start, end) of the segments of a document (see the module docstring)."""
    windows = sentence_windows(document, budget)
    if len(windows) != 1:
        return windows
    start, end = windows[0]
    word_sentence = document.doc.word_sentence
    # Word index at which each sentence of the window begins.
    firsts = [
        w for w in range(start, end) if w == start or word_sentence[w] != word_sentence[w - 1]
    ]
    if len(firsts) < 2:
        return []
    middle = firsts[(len(firsts) + 1) // 2]
    return [(start, middle), (middle, end)]


def relation_labels(words: list[str], segments: list[tuple[int, int]]) -> list[list[int]]:
    """Per-word labels of each segment: 1 if the case-folded word occurs in another segment, 0
    if not, IGNORE_INDEX for punctuation. `words` are the document's words; `segments` are word
    spans.
    """
    folded = [[w.casefold() for w in words[a:b]] for a, b in segments]
    segment_count: Counter[str] = Counter()
    for forms in folded:
        segment_count.update(set(forms))
    out = []
    for forms, (a, _) in zip(folded, segments, strict=True):
        # A word present in this segment is elsewhere too when it is in >= 2 segments.
        out.append(
            [
                IGNORE_INDEX if is_punctuation(words[a + k]) else int(segment_count[form] >= 2)
                for k, form in enumerate(forms)
            ]
        )
    return out


def balance_labels(labels: list[int], rng: np.random.Generator) -> list[int]:
    """Keep every 0/1 label of the rarer class and as many of the other, drawn at random; the
    rest become IGNORE_INDEX. All IGNORE_INDEX when one class is missing."""
    positions = {c: [k for k, label in enumerate(labels) if label == c] for c in (0, 1)}
    keep = min(len(positions[0]), len(positions[1]))
    out = [IGNORE_INDEX] * len(labels)
    for c, where in positions.items():
        chosen = rng.choice(len(where), size=keep, replace=False) if keep < len(where) else []
        for k in [where[int(i)] for i in chosen] if keep < len(where) else where:
            out[k] = c
    return out


@register_task
class TokenDocumentRelation(PretrainTask):
    """Token level, 2 labels; the label sits on each word's first sub-token."""

    name = "token_document_relation"
    level = "token"
    description = "does each word also occur in another segment of its document"
    task_id = 2

    @dataclass
    class Config(TaskConfig):
        """`balance`: label as many words that occur elsewhere as words that do not (default)."""

        balance: bool = True

        def __post_init__(self) -> None:
            if not isinstance(self.balance, bool):
                raise TypeError(
                    f"token_document_relation: balance must be a bool, got {self.balance!r}"
                )

    @property
    def num_labels(self) -> int:
        """Occurs elsewhere in the document or not."""
        return 2

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One example per segment of the document (none for a one-sentence document)."""
        segments = document_segments(document, self.max_seq_len - 2)
        all_labels = relation_labels(document.doc.words(), segments)
        if self.config.balance:
            all_labels = [
                self._balanced(document, a, b, labels, rng)
                for (a, b), labels in zip(segments, all_labels, strict=True)
            ]
        examples = (
            self.word_label_example(document, start, end, word_labels)
            for (start, end), word_labels in zip(segments, all_labels, strict=True)
        )
        return [example for example in examples if example is not None]

    def _balanced(
        self,
        document: TokenizedDocument,
        start: int,
        end: int,
        labels: list[int],
        rng: np.random.Generator,
    ) -> list[int]:
        """Balance the labels of the words whose first token is in the example (words without
        tokens and words truncated away carry none)."""
        budget = self.max_seq_len - 2
        offsets = document.word_offsets
        visible = [
            label
            if offsets[start + k + 1] > offsets[start + k]
            and offsets[start + k] - offsets[start] < budget
            else IGNORE_INDEX
            for k, label in enumerate(labels)
        ]
        return balance_labels(visible, rng)

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Binary classifier per token."""
        return TokenClassificationHead(backbone.config.hidden_size, self.num_labels)
