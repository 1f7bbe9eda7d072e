"""Knowledge masking (ERNIE 1.0/2.0): masked language modelling over whole linguistic units.

Three masking levels decide what a unit is:

    basic    every word is a unit
    phrase   every phrase (noun chunk) is a unit, plus every word no phrase covers
    entity   every named entity is a unit, plus every word no entity covers

About `mask_prob` of the window's tokens are selected unit by unit, so a phrase or entity is
always masked as a whole. The level is drawn per example from `level_weights`, or, with
`staged`, follows the training progress (basic, then phrase, then entity, a third each).

Selection rule: the units are shuffled, the level's phrases or entities first (otherwise single
words, far more numerous, would fill the target and entities would rarely be masked); a unit is
taken when its tokens still fit within the target `max(1, round(mask_prob * n_tokens))`,
otherwise it is skipped (a smaller unit further on may still fit); the scan stops when the
target is reached. If no unit fits at all (every unit is longer than the target), the first of
the shortest units in the shuffled order is taken, so every example has at least one masked
unit. Each selected unit is then, as a whole, replaced by [MASK] tokens (`mask_token_prob`), by
random non-special tokens (`random_token_prob`), or kept (`keep_prob`). Special tokens
(including [UNK] from the tokenizer) are never selected.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ernie_style.pretrain.examples import (
    IGNORE_INDEX,
    CorpusContext,
    Example,
    TokenizedDocument,
    assemble,
    sentence_windows,
)
from ernie_style.pretrain.heads import MaskedLMHead, TaskHead
from ernie_style.pretrain.registry import PretrainTask, TaskConfig, register_task

#: Masking levels, in the order of ERNIE's staged curriculum.
LEVELS = ("basic", "phrase", "entity")


def _default_level_weights() -> dict[str, float]:
    return {level: 1.0 for level in LEVELS}


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"knowledge_masking: {name} must be a number, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"knowledge_masking: {name} must be in [0, 1], got {value!r}")
    return float(value)


def _check_level_weights(level_weights: object) -> dict[str, float]:
    if not isinstance(level_weights, Mapping):
        raise TypeError(
            f"knowledge_masking: level_weights must be a mapping, got {level_weights!r}"
        )
    weights = {level: 0.0 for level in LEVELS}
    for level, weight in level_weights.items():
        if level not in LEVELS:
            raise ValueError(
                f"knowledge_masking: unknown level {level!r} in level_weights; "
                f"known levels: {', '.join(LEVELS)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"knowledge_masking: level_weights[{level!r}] must be a number")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"knowledge_masking: level_weights[{level!r}] must be finite and >= 0, "
                f"got {weight!r}"
            )
        weights[level] = float(weight)
    if sum(weights.values()) <= 0:
        raise ValueError("knowledge_masking: level_weights needs a positive weight")
    return weights


def select_units(
    sizes: list[int],
    target: int,
    rng: np.random.Generator,
    first: list[bool] | None = None,
) -> list[int]:
    """Indices of the units (of the given token counts, all > 0) masked for `target` tokens.

    See the module docstring for the rule: shuffled scan, skip units that overshoot, at least
    one unit. Units flagged in `first` (the level's phrases or entities) are scanned before the
    others, each group in shuffled order.
    """
    if not sizes:
        return []
    order = rng.permutation(len(sizes))
    if first is not None:
        flagged = np.asarray(first, dtype=bool)[order]
        order = np.concatenate([order[flagged], order[~flagged]])
    ordered = np.asarray(sizes, dtype=np.int64)[order]
    # The scan takes the longest prefix that fits, then (skipping what would overshoot) each
    # next unit that still fits, until the target is reached: one numpy search per extra unit.
    taken = int(np.searchsorted(np.cumsum(ordered), target, side="right"))
    chosen = order[:taken].tolist()
    used = int(ordered[:taken].sum())
    position = taken
    while used < target and position < len(order):
        fits = np.flatnonzero(ordered[position:] <= target - used)
        if not len(fits):
            break
        position += int(fits[0])
        chosen.append(int(order[position]))
        used += int(ordered[position])
        position += 1
    if not chosen:
        smallest = ordered.min()
        chosen.append(int(order[int(np.argmax(ordered == smallest))]))
    return chosen


@register_task
class KnowledgeMasking(PretrainTask):
    """Token level masked LM over words, phrases and entities (num_labels = vocabulary)."""

    name = "knowledge_masking"
    level = "token"
    description = "masked LM over whole words, phrases and named entities (knowledge masking)"
    task_id = 0

    @dataclass
    class Config(TaskConfig):
        """Options of knowledge masking.

        `level_weights` maps level names (basic, phrase, entity) to non-negative weights; a level
        left out gets weight 0. With `staged`, the weights are ignored and the level follows the
        training progress.
        """

        mask_prob: float = 0.15
        mask_token_prob: float = 0.8
        random_token_prob: float = 0.1
        keep_prob: float = 0.1
        level_weights: dict[str, float] = field(default_factory=_default_level_weights)
        staged: bool = False

        def __post_init__(self) -> None:
            if _check_probability("mask_prob", self.mask_prob) == 0.0:
                raise ValueError("knowledge_masking: mask_prob must be > 0")
            split = [
                _check_probability(name, getattr(self, name))
                for name in ("mask_token_prob", "random_token_prob", "keep_prob")
            ]
            if not math.isclose(sum(split), 1.0, abs_tol=1e-6):
                raise ValueError(
                    "knowledge_masking: mask_token_prob + random_token_prob + keep_prob "
                    f"must sum to 1, got {sum(split)}"
                )
            if not isinstance(self.staged, bool):
                raise TypeError(f"knowledge_masking: staged must be a bool, got {self.staged!r}")
            self.level_weights = _check_level_weights(self.level_weights)

    def __init__(
        self,
        tokenizer: Any,
        max_seq_len: int = 128,
        config: TaskConfig | Mapping | None = None,
        language: str = "en",
    ) -> None:
        super().__init__(tokenizer, max_seq_len, config, language)
        special = set(self.tokenizer.all_special_ids)
        self._special_ids = np.asarray(sorted(special), dtype=np.int64)
        self._random_ids = np.asarray(
            [i for i in range(len(self.tokenizer)) if i not in special], dtype=np.int64
        )
        if self._random_ids.size == 0:
            raise ValueError("knowledge_masking: the vocabulary has no non-special token")
        self._mask_id = int(self.tokenizer.mask_token_id)
        self._progress = 0.0
        self._warned = False

    @property
    def num_labels(self) -> int:
        """The vocabulary size."""
        return len(self.tokenizer)

    def set_progress(self, fraction: float) -> None:
        """Training progress (clamped to 0..1); drives the staged level curriculum."""
        if math.isnan(fraction):
            raise ValueError("knowledge_masking: progress must be a number, got nan")
        self._progress = min(max(float(fraction), 0.0), 1.0)

    def choose_level(self, rng: np.random.Generator) -> str:
        """The masking level of the next example: staged by progress, else drawn by weight."""
        if self.config.staged:
            return LEVELS[min(int(self._progress * 3), 2)]
        weights = np.asarray([self.config.level_weights[level] for level in LEVELS])
        return LEVELS[int(rng.choice(len(LEVELS), p=weights / weights.sum()))]

    def units(
        self,
        document: TokenizedDocument,
        start: int,
        end: int,
        level: str,
        spans: list[tuple[int, int]] | None = None,
    ) -> list[tuple[int, int]]:
        """Word spans [a, b) of the masking units of words [start, end) at `level`.

        Annotated spans outside the window, or overlapping an earlier span, are left out (their
        words become units of their own). `spans`: the window's `annotated_spans`, when the
        caller already has them.
        """
        if spans is None:
            spans = self.annotated_spans(document, start, end, level)
        units = list(spans)
        covered = np.zeros(end - start, dtype=bool)
        for a, b in units:
            covered[a - start : b - start] = True
        units.extend((w, w + 1) for w in range(start, end) if not covered[w - start])
        return sorted(units)

    def annotated_spans(
        self, document: TokenizedDocument, start: int, end: int, level: str
    ) -> list[tuple[int, int]]:
        """The level's phrase or entity spans inside words [start, end), without overlaps
        (an earlier span wins); none at the basic level."""
        if level not in LEVELS:
            raise ValueError(f"knowledge_masking: unknown level {level!r}")
        if level == "basic":
            return []
        doc = document.doc
        starts = np.asarray(getattr(doc, f"{level}_starts"), dtype=np.int64)
        ends = np.asarray(getattr(doc, f"{level}_ends"), dtype=np.int64)
        inside = (starts >= start) & (starts < ends) & (ends <= end)
        spans = sorted(zip(starts[inside].tolist(), ends[inside].tolist(), strict=True))
        # Sorted by start, the kept spans are disjoint and so also sorted by end: a span
        # overlaps an earlier kept one exactly when it starts before the last kept one ends.
        kept, last_end = [], start
        for a, b in spans:
            if a >= last_end:
                kept.append((a, b))
                last_end = b
        return kept

    def mask_window(
        self,
        document: TokenizedDocument,
        start: int,
        end: int,
        level: str,
        rng: np.random.Generator,
        max_tokens: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masked token ids and labels of words [start, end), cut to `max_tokens` tokens.

        Units reaching past the cut are never selected. Labels hold the original ids of the
        selected tokens and IGNORE_INDEX elsewhere; all labels are ignored when no token is
        eligible.
        """
        spans = self.annotated_spans(document, start, end, level)
        original = document.tokens(start, end)[:max_tokens].copy()
        # Units tile the window: each annotated span, and each word no span covers. Tokens are
        # in word order, so a unit's eligible tokens are one run of `eligible_positions`.
        covered = np.zeros(end - start, dtype=bool)
        opens_span = np.zeros(end - start, dtype=bool)
        for a, b in spans:
            covered[a - start : b - start] = True
            opens_span[a - start] = True
        opens_unit = ~covered | opens_span
        unit_of_word = np.cumsum(opens_unit) - 1
        word_tokens = np.diff(document.word_offsets[start : end + 1])
        unit_of_token = np.repeat(unit_of_word, word_tokens)
        num_units = int(unit_of_word[-1]) + 1 if len(unit_of_word) else 0
        eligible = ~np.isin(original, self._special_ids)
        eligible_positions = np.flatnonzero(eligible)
        sizes_all = np.bincount(unit_of_token[eligible_positions], minlength=num_units)
        if len(original) < len(unit_of_token):  # a unit reaching past the cut is never selected
            sizes_all[unit_of_token[len(original)]] = 0
            sizes_all[unit_of_token[len(original)] + 1 :] = 0
        starts_all = np.zeros(num_units + 1, dtype=np.int64)
        np.cumsum(
            np.bincount(unit_of_token[eligible_positions], minlength=num_units), out=starts_all[1:]
        )
        candidates = np.flatnonzero(sizes_all)
        sizes = sizes_all[candidates].tolist()
        is_span = opens_span[np.flatnonzero(opens_unit)][candidates].tolist()
        ids = original.copy()
        labels = np.full(len(original), IGNORE_INDEX, dtype=np.int64)
        target = max(1, round(self.config.mask_prob * int(eligible.sum())))
        cfg = self.config
        for index in select_units(sizes, target, rng, first=is_span):
            unit = candidates[index]
            positions = eligible_positions[starts_all[unit] : starts_all[unit + 1]]
            labels[positions] = original[positions]
            draw = rng.random()
            if draw < cfg.mask_token_prob:
                ids[positions] = self._mask_id
            elif draw < cfg.mask_token_prob + cfg.random_token_prob:
                ids[positions] = rng.choice(self._random_ids, size=len(positions))
        return ids, labels

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One masked example per window of whole sentences; windows without a maskable token
        give none.
        """
        tok, budget = self.tokenizer, self.max_seq_len - 2
        out = []
        for start, end in sentence_windows(document, budget):
            level = self.choose_level(rng)
            if level != "basic" and not document.doc.has_annotations:
                if not self._warned:
                    warnings.warn(
                        f"knowledge_masking: document {document.doc.id!r} has no phrase or "
                        "entity (a corpus prepared with --annotator none has none; with a "
                        "tagger, a short document may have none); documents without them "
                        "fall back to word masking (said once per run)",
                        stacklevel=2,
                    )
                    self._warned = True
                level = "basic"
            ids, labels = self.mask_window(document, start, end, level, rng, budget)
            if not (labels != IGNORE_INDEX).any():
                continue
            input_ids, types, token_labels = assemble(
                [ids], self.max_seq_len, tok.cls_token_id, tok.sep_token_id, [labels]
            )
            out.append(Example(self.name, self.task_id, input_ids, types, token_labels))
        return out

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Masked-LM head tied to the backbone's word embeddings."""
        return MaskedLMHead(backbone)
