"""Capitalization prediction (ERNIE 2.0): does each word begin with an upper-case letter in the
original text? The model sees lower-cased input, so the case has to be inferred from context
(names, sentence starts, acronyms). Words without a cased letter (numbers, punctuation) carry no
label.

With an uncased vocabulary (BERT-uncased, ERNIE) the corpus's token table is already lower-cased.
A vocabulary that keeps case (RoBERTa, XLM-R, DeBERTa-v3, `prepare --cased`) would put the label
in the input, so on one the task tokenizes the lower-cased words of each window itself.
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
        #: A cased vocabulary: the words are lower-cased and tokenized here (see module doc).
        self.lowercase_words = keeps_case(tokenizer)

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
            if self.lowercase_words:
                words = [doc.word(i).lower() for i in range(start, end)]
                example = self._lowercased_example(words, word_labels)
            else:
                example = self.word_label_example(document, start, end, word_labels)
            if example is not None:
                out.append(example)
        return out

    def _lowercased_example(self, words: list[str], word_labels: list[int]) -> Example | None:
        """`word_label_example` for lower-cased `words` tokenized here (a cased vocabulary)."""
        encoding = self.tokenizer.backend_tokenizer.encode(
            words, is_pretokenized=True, add_special_tokens=False
        )
        labels, previous = [], None
        for word in encoding.word_ids:
            first = word is not None and word != previous
            labels.append(word_labels[word] if first else IGNORE_INDEX)
            previous = word
        return self.token_label_example(encoding.ids, labels)

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Binary classifier per token."""
        return TokenClassificationHead(backbone.config.hidden_size, self.num_labels)
