"""Sentence reordering (ERNIE 2.0): a paragraph is cut into m segments (1 <= m <= M), the
segments are shuffled, and the model predicts the permutation among all sum_{m=1..M} m!
possibilities (9 classes for M = 3, 33 for M = 4).

Permutation: `perm[k]` is the original index of the segment shown k-th, so the model input is
`[CLS] seg[perm[0]] [SEP] seg[perm[1]] [SEP] ...` with token_type_ids 0, 1, ... per shown
segment. Classes are enumerated by m, then by the permutations of range(m) in
`itertools.permutations` order: class 0 is (0,), 1 is (0, 1), 2 is (1, 0), 3 is (0, 1, 2), ...

Cutting: m is drawn uniformly from min(`min_segments`, n)..min(M, n) for a paragraph of n
sentences (`min_segments` 2 by default: a one-segment example is class 0 by its [SEP] count
alone; 1 is ERNIE's 1..M draw), and the paragraph is cut at m - 1
random sentence boundaries (contiguous groups of whole sentences), never inside a sentence: a
cut inside a sentence leaves one segment ending in final punctuation (the original last one)
and the others without, which gives the order away. Only sentences with sub-tokens count, so
every segment has at least one token; a one-sentence paragraph is one segment (class 0). A
paragraph longer than the sequence budget is replaced by a window of its whole sentences that
fits (from a random sentence, grown forward then backward); a single sentence that is longer
still is cut by `assemble`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

from ernie_style.pretrain.examples import (
    MAX_SEGMENTS,
    CorpusContext,
    Example,
    TokenizedDocument,
    assemble,
)
from ernie_style.pretrain.heads import SequenceClassificationHead, TaskHead
from ernie_style.pretrain.registry import PretrainTask, TaskConfig, register_task


def _check_max_segments(max_segments: object) -> int:
    if isinstance(max_segments, bool) or not isinstance(max_segments, int):
        raise TypeError(f"sentence_reordering: max_segments must be an int, got {max_segments!r}")
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(
            f"sentence_reordering: max_segments must be in 1..{MAX_SEGMENTS}, got {max_segments}"
        )
    return max_segments


@cache
def permutation_classes(max_segments: int) -> tuple[tuple[int, ...], ...]:
    """All permutations of up to `max_segments` segments, in class order."""
    _check_max_segments(max_segments)
    return tuple(
        perm for m in range(1, max_segments + 1) for perm in itertools.permutations(range(m))
    )


@cache
def _class_index(max_segments: int) -> dict[tuple[int, ...], int]:
    return {perm: i for i, perm in enumerate(permutation_classes(max_segments))}


def num_permutation_classes(max_segments: int) -> int:
    """sum_{m=1..max_segments} m!: 1, 3, 9, 33 for 1..4."""
    return len(permutation_classes(max_segments))


def permutation_to_class(perm: Sequence[int], max_segments: int) -> int:
    """Class index of `perm` (perm[k] = original index of the segment shown k-th)."""
    key = tuple(int(p) for p in perm)
    index = _class_index(max_segments).get(key)
    if index is None:
        raise ValueError(f"{key} is not a permutation of range(m) with 1 <= m <= {max_segments}")
    return index


def class_to_permutation(index: int, max_segments: int) -> tuple[int, ...]:
    """The permutation of class `index` (inverse of `permutation_to_class`)."""
    classes = permutation_classes(max_segments)
    if not 0 <= index < len(classes):
        raise ValueError(f"class {index} out of range 0..{len(classes) - 1}")
    return classes[index]


def _random_cuts(candidates: list[int], m: int, rng: np.random.Generator) -> list[int]:
    """Draw m - 1 sorted cut points without replacement from `candidates`."""
    picks = rng.choice(len(candidates), size=m - 1, replace=False) if m > 1 else []
    return sorted(candidates[int(i)] for i in picks)


@register_task
class SentenceReordering(PretrainTask):
    """Sequence level: which permutation shuffled the paragraph's segments."""

    name = "sentence_reordering"
    level = "sequence"
    description = "predict the permutation of a paragraph's shuffled segments"
    task_id = 3

    @dataclass
    class Config(TaskConfig):
        """`max_segments` M: a paragraph is cut into up to M segments (M <= 4);
        `min_segments`: at least this many where the paragraph has that many sentences (2 by
        default, so that few examples are one segment, whose class the [SEP] count gives away;
        1 is ERNIE 2.0's uniform 1..M draw)."""

        max_segments: int = 3
        min_segments: int = 2

        def __post_init__(self) -> None:
            _check_max_segments(self.max_segments)
            if isinstance(self.min_segments, bool) or self.min_segments not in (1, 2):
                raise ValueError(
                    f"sentence_reordering: min_segments must be 1 or 2, got {self.min_segments!r}"
                )

    def __init__(
        self,
        tokenizer: Any,
        max_seq_len: int = 128,
        config: TaskConfig | Mapping | None = None,
        language: str = "en",
    ) -> None:
        super().__init__(tokenizer, max_seq_len, config, language)
        # [CLS] + M x [SEP] + at least one token per segment.
        if 2 * self.config.max_segments + 1 > max_seq_len:
            raise ValueError(
                f"sentence_reordering: max_segments {self.config.max_segments} needs "
                f"max_seq_len >= {2 * self.config.max_segments + 1}, got {max_seq_len}"
            )

    @property
    def num_labels(self) -> int:
        """sum_{m=1..M} m!."""
        return num_permutation_classes(self.config.max_segments)

    def paragraph_window(
        self, document: TokenizedDocument, sentences: list[int], rng: np.random.Generator
    ) -> list[int]:
        """The sentences of a paragraph that fit the token budget: all if they fit, else a
        window grown from a random sentence holding tokens, forward, then backward.
        """
        offsets = document.word_offsets
        sizes = []
        for s in sentences:
            a, b = document.doc.sentence_word_range(s)
            sizes.append(int(offsets[b] - offsets[a]))
        budget = self.max_seq_len - 1 - self.config.max_segments
        with_tokens = [i for i, size in enumerate(sizes) if size]
        if sum(sizes) <= budget or not with_tokens:
            return sentences
        first = last = with_tokens[int(rng.integers(len(with_tokens)))]
        used = sizes[first]
        while last + 1 < len(sentences) and used + sizes[last + 1] <= budget:
            last += 1
            used += sizes[last]
        while first > 0 and used + sizes[first - 1] <= budget:
            first -= 1
            used += sizes[first]
        return sentences[first : last + 1]

    def cut_segments(
        self, document: TokenizedDocument, sentences: list[int], rng: np.random.Generator
    ) -> list[tuple[int, int]]:
        """Word spans of the m segments the sentences are cut into (empty: no token at all)."""
        doc, offsets = document.doc, document.word_offsets
        start = doc.sentence_word_range(sentences[0])[0]
        end = doc.sentence_word_range(sentences[-1])[1]
        # Sentences holding at least one token; a cut goes before one of them.
        sentence_starts = []
        for s in sentences:
            a, b = doc.sentence_word_range(s)
            if offsets[b] > offsets[a]:
                sentence_starts.append(a)
        if not sentence_starts:
            return []
        most = min(self.config.max_segments, len(sentence_starts))
        m = int(rng.integers(min(self.config.min_segments, most), most + 1))  # M = 1: m = 1
        cuts = _random_cuts(sentence_starts[1:], m, rng)
        bounds = [start, *cuts, end]
        return list(itertools.pairwise(bounds))

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One example per paragraph holding at least one token."""
        tok, max_segments = self.tokenizer, self.config.max_segments
        out = []
        for paragraph in document.doc.paragraphs():
            sentences = self.paragraph_window(document, paragraph, rng)
            segments = self.cut_segments(document, sentences, rng)
            if not segments:
                continue
            perm = tuple(int(k) for k in rng.permutation(len(segments)))
            shown = [document.tokens(*segments[k]) for k in perm]
            ids, types, _ = assemble(shown, self.max_seq_len, tok.cls_token_id, tok.sep_token_id)
            label = permutation_to_class(perm, max_segments)
            out.append(Example(self.name, self.task_id, ids, types, label))
        return out

    def subset_metrics(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, tuple[float, float]]:
        """Accuracy without the one-segment examples (class 0, which the input's single [SEP]
        gives away): what the model learned about order."""
        multi = targets != 0
        right = (logits.argmax(-1)[multi] == targets[multi]).float().sum().item()
        return {"accuracy_multi_segment": (right, float(multi.sum().item()))}

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Classifier over the pooled [CLS] output."""
        return SequenceClassificationHead(backbone.config.hidden_size, self.num_labels)
