"""Capitalization prediction (ERNIE 2.0): does each word begin with an upper-case letter in the
original text? The model sees lower-cased input when the tokenizer is uncased, so the case has
to be inferred from context (names, sentence starts, acronyms).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ernie_style.examples import (
    CorpusContext,
    Example,
    TokenizedDocument,
    sentence_windows,
)
from ernie_style.heads import TaskHead, TokenClassificationHead
from ernie_style.registry import PretrainTask, register_task


def capitalization_label(word: str) -> int:
    """1 if the word begins with an upper-case letter, else 0."""
    return int(word[:1].isupper())


@register_task
class Capitalization(PretrainTask):
    """Token level, 2 labels; the label sits on each word's first sub-token."""

    name = "capitalization"
    level = "token"
    description = "is each word capitalized in the original text (label on first sub-token)"
    task_id = 1

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
