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

Content words only: function words (the, of, and; 的, 是, 在) recur in every segment, so
labelling them teaches "frequent word -> 1" (a stump on the 300 most frequent words scored 78.7%
against 50% on the sample corpus). The `frequent_words` (300) most frequent words of the corpus
(counted on up to `FREQUENCY_SAMPLE` documents spread over it) carry no label.

Balance (`balance: true`, the default): most words of a document recur in another of its
segments (~80% positive on the demo corpus), and frequent words recur more often than rare ones.
Each example therefore balances its labels within frequency bands (a word's band is the log2 of
its corpus count): in every band it keeps every label of the rarer class and as many of the
other, drawn with the example's RNG (the rest become IGNORE_INDEX). Labelled words are half
positive, half negative in every band, so neither the majority class nor a word's frequency
predicts the label; the task must judge which topical words recur. A segment with no band
holding both classes gives no example. `balance: false` keeps every label.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ernie_style.corpus.document import Document
from ernie_style.corpus.parted import write_meta
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


def balance_labels(
    labels: list[int], rng: np.random.Generator, bands: Sequence[int] | None = None
) -> list[int]:
    """Keep every 0/1 label of the rarer class and as many of the other, drawn at random,
    within each band of `bands` (one band for all without); the rest become IGNORE_INDEX. A band
    missing one class keeps no label."""
    bands = bands if bands is not None else [0] * len(labels)
    out = [IGNORE_INDEX] * len(labels)
    for band in sorted(set(bands)):
        positions = {
            c: [k for k, label in enumerate(labels) if label == c and bands[k] == band]
            for c in (0, 1)
        }
        keep = min(len(positions[0]), len(positions[1]))
        for c, where in positions.items():
            chosen = rng.choice(len(where), size=keep, replace=False) if keep < len(where) else []
            for k in [where[int(i)] for i in chosen] if keep < len(where) else where:
                out[k] = c
    return out


#: Documents read (evenly spread over the corpus) to count word frequencies.
FREQUENCY_SAMPLE = 2000
#: Index of the sampled word counts (`ernie-style index` builds it with the others).
WORD_COUNTS_INDEX = "token_document_relation-word-counts"


def sampled_documents(total: int, first: int, last: int) -> range:
    """Indexes in [first, last) of the documents whose words are counted: every
    `total // FREQUENCY_SAMPLE`-th document of a corpus of `total`."""
    step = max(1, total // FREQUENCY_SAMPLE)
    return range(-(-first // step) * step, last, step)


def count_words(documents: Sequence[Document], first: int, last: int) -> Counter[str]:
    """Case-folded word counts (punctuation left out) of the sampled documents in
    [first, last)."""
    counts: Counter[str] = Counter()
    for index in sampled_documents(len(documents), first, last):
        counts.update(w.casefold() for w in documents[index].words() if not is_punctuation(w))
    return counts


def _write_counts(out: Path, counts: Counter[str]) -> None:
    (out / "counts.json").write_text(
        json.dumps(dict(sorted(counts.items())), ensure_ascii=False), encoding="utf-8"
    )
    write_meta(out, {"words": len(counts)})


def build_word_counts(documents: Sequence[Document], first: int, last: int, out: Path) -> None:
    """Write the sampled word counts of documents [first, last) to `out` (one part of the
    word-count index, or the whole of it)."""
    _write_counts(out, count_words(documents, first, last))


def merge_word_counts(parts: list[Path], ranges: list[tuple[int, int]], out: Path) -> None:
    """Sum the parts' word counts into the index (its size is the sample's vocabulary)."""
    del ranges
    total: Counter[str] = Counter()
    for part in parts:
        total.update(load_word_counts(part))
    _write_counts(out, total)


def load_word_counts(path: Path, mmap: bool = True) -> Counter[str]:
    """The word counts saved under `path`."""
    del mmap
    return Counter(json.loads((path / "counts.json").read_text(encoding="utf-8")))


def word_counts(corpus: CorpusContext) -> Counter[str]:
    """The corpus's sampled word counts: an index under the corpus's index root, built ahead
    of training by `ernie-style index` (counting in the training process maps pages of the
    corpus spread over all of it, which stay in its RSS), or counted in RAM without a root."""
    return corpus.indexed(
        WORD_COUNTS_INDEX,
        lambda out: build_word_counts(corpus.documents, 0, len(corpus.documents), out),
        (build_word_counts, merge_word_counts),
        load_word_counts,
    )


def frequency_bands(counts: Counter[str], frequent_words: int) -> dict[str, int]:
    """Case-folded word -> frequency band (log2 of its count in the sample), with the
    `frequent_words` most frequent words (at most a tenth of the distinct words) mapped to -1
    (left unlabelled). Words not in the sample are band 0."""
    bands = {word: int(math.log2(n)) for word, n in counts.items()}
    # On a small corpus the most frequent words are a large part of its vocabulary: leave out
    # at most a tenth of the distinct words.
    for word, _ in counts.most_common(min(frequent_words, len(counts) // 10)):
        bands[word] = -1
    return bands


@register_task
class TokenDocumentRelation(PretrainTask):
    """Token level, 2 labels; the label sits on each word's first sub-token."""

    name = "token_document_relation"
    level = "token"
    description = "does each word also occur in another segment of its document"
    task_id = 2

    @dataclass
    class Config(TaskConfig):
        """`balance`: label as many words that occur elsewhere as words that do not (default),
        within each frequency band (`balance_by_frequency`, default); `frequent_words`: the
        corpus's most frequent words, which carry no label (0 labels every word)."""

        balance: bool = True
        frequent_words: int = 300
        balance_by_frequency: bool = True

        def __post_init__(self) -> None:
            for name in ("balance", "balance_by_frequency"):
                if not isinstance(getattr(self, name), bool):
                    raise TypeError(
                        f"token_document_relation: {name} must be a bool, got "
                        f"{getattr(self, name)!r}"
                    )
            if not isinstance(self.frequent_words, int) or self.frequent_words < 0:
                raise ValueError(
                    "token_document_relation: frequent_words must be an integer >= 0, got "
                    f"{self.frequent_words!r}"
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
        words = document.doc.words()
        all_labels = relation_labels(words, segments)
        bands = self._bands(corpus)
        word_bands = [bands.get(w.casefold(), 0) for w in words]
        all_labels = [
            [IGNORE_INDEX if word_bands[a + k] < 0 else label for k, label in enumerate(labels)]
            for (a, _), labels in zip(segments, all_labels, strict=True)
        ]
        if self.config.balance:
            all_labels = [
                self._balanced(
                    document,
                    a,
                    labels,
                    word_bands[a:b] if self.config.balance_by_frequency else None,
                    rng,
                )
                for (a, b), labels in zip(segments, all_labels, strict=True)
            ]
        examples = (
            self.word_label_example(document, start, end, word_labels)
            for (start, end), word_labels in zip(segments, all_labels, strict=True)
        )
        return [example for example in examples if example is not None]

    def prepare(self, corpus: CorpusContext) -> None:
        """Count the corpus's word frequencies before training forks its loader workers."""
        self._bands(corpus)

    def _bands(self, corpus: CorpusContext) -> dict[str, int]:
        """Word -> frequency band of the training corpus (held-out documents use its bands)."""
        pool = corpus.draw_from or corpus
        limit = self.config.frequent_words
        return pool.memo(f"word-bands-{limit}", lambda: frequency_bands(word_counts(pool), limit))

    def _balanced(
        self,
        document: TokenizedDocument,
        start: int,
        labels: list[int],
        bands: list[int] | None,
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
        return balance_labels(visible, rng, bands)

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Binary classifier per token."""
        return TokenClassificationHead(backbone.config.hidden_size, self.num_labels)
