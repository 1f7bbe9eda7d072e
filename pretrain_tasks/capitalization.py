"""Capitalization prediction (ERNIE 2.0): does each word begin with an upper-case letter in the
original text? The model sees lower-cased input, so the case has to be inferred from context
(names, sentence starts, acronyms). A tokenizer that keeps case (`prepare --cased`) would put
the label in the input, so the task refuses it. Words without a cased letter (numbers,
punctuation) carry no label.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from torch import nn

from ernie_style.corpus.language import CASELESS_LANGUAGES
from ernie_style.pretrain.examples import (
    IGNORE_INDEX,
    CorpusContext,
    Example,
    TokenizedDocument,
    sentence_windows,
)
from ernie_style.pretrain.heads import TaskHead, TokenClassificationHead
from ernie_style.pretrain.registry import PretrainTask, register_task


def capitalization_label(word: str) -> int:
    """1 if the word's first cased letter is upper-case, 0 if lower-case, IGNORE_INDEX for a
    word without one (numbers, punctuation, scripts without case)."""
    for char in word:
        if char.isupper():
            return 1
        if char.islower():
            return 0
    return IGNORE_INDEX


def keeps_case(tokenizer: Any) -> bool:
    """Whether the tokenizer gives "Paris" and "paris" different input (a cased tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.normalizer is not None:
        return backend.normalizer.normalize_str("Paris") != "paris"
    upper = tokenizer("Paris AbC", add_special_tokens=False)["input_ids"]
    return upper != tokenizer("paris abc", add_special_tokens=False)["input_ids"]


@register_task
class Capitalization(PretrainTask):
    """Token level, 2 labels; the label sits on each word's first sub-token."""

    name = "capitalization"
    level = "token"
    description = "is each word capitalized in the original text (label on first sub-token)"
    task_id = 1
    unusable_in: ClassVar[dict[str, str]] = {
        language: "the corpus is in a language without letter case"
        for language in CASELESS_LANGUAGES
    }

    def __init__(
        self, tokenizer: Any, max_seq_len: int = 128, config: Any = None, language: str = "en"
    ) -> None:
        super().__init__(tokenizer, max_seq_len, config, language)
        if keeps_case(tokenizer):
            raise ValueError(
                "capitalization: the tokenizer keeps case (prepared with --cased?), so every "
                "label would be readable from the input; use an uncased tokenizer for this task "
                "or leave the task out"
            )

    @property
    def num_labels(self) -> int:
        """Capitalized or not."""
        return 2

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One example per window of whole sentences tiling the document."""
        doc = document.doc
        out = []
        for start, end in sentence_windows(document, self.max_seq_len - 2):
            word_labels = [capitalization_label(doc.word(i)) for i in range(start, end)]
            example = self.word_label_example(document, start, end, word_labels)
            if example is not None:
                out.append(example)
        return out

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Binary classifier per token."""
        return TokenClassificationHead(backbone.config.hidden_size, self.num_labels)
