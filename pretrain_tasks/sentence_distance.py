"""Sentence distance (ERNIE 2.0): how far apart are two sentences?

Three classes: 0 = adjacent in the same document (sentence i then sentence i + 1), 1 = same
document but not adjacent (sentence i then a later sentence j >= i + 2), 2 = different documents
(a sentence of this document, then one of a document drawn by `corpus.random_other_index`).

The classes are balanced by sampling: for each example the class is drawn uniformly, then a
pair of that class is built. A document yields about one example per two sentences
(`num_sentences // 2` draws); documents with fewer than 3 sentences, or in a corpus
without another document, yield none, so that all three classes are always possible.
Sentences the tokenizer maps to no token are never paired; a class-2 draw that finds only
such documents is dropped. A document never gives the same pair twice in one pass: a repeated
draw is redrawn (up to 8 times, then the example is dropped).
"""

from __future__ import annotations

import bisect

import numpy as np
from torch import nn

from ernie_style.pretrain.examples import CorpusContext, Example, TokenizedDocument, assemble
from ernie_style.pretrain.heads import SequenceClassificationHead, TaskHead
from ernie_style.pretrain.registry import PretrainTask, register_task

ADJACENT, SAME_DOCUMENT, OTHER_DOCUMENT = 0, 1, 2
#: Draws of another document before an example of class 2 is given up.
_OTHER_DOCUMENT_TRIES = 8
#: Draws of a pair before an example whose pairs this document already gave is given up.
_REPEAT_TRIES = 8


def _usable_sentences(document: TokenizedDocument) -> list[int]:
    """Indices of the sentences that have at least one sub-token."""
    doc = document.doc
    word_tokens = np.diff(document.word_offsets)
    sentence_tokens = np.bincount(
        np.asarray(doc.word_sentence, dtype=np.int64),
        weights=word_tokens,
        minlength=doc.num_sentences,
    )
    return np.flatnonzero(sentence_tokens > 0).tolist()


@register_task
class SentenceDistance(PretrainTask):
    """Sequence level, 3 labels: adjacent / same document / other document."""

    name = "sentence_distance"
    level = "sequence"
    description = "are two sentences adjacent (0), in the same document (1) or not (2)"
    task_id = 4

    @property
    def num_labels(self) -> int:
        """Adjacent, same document, other document."""
        return 3

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """About one balanced example per two sentences; none for documents under 3
        sentences or without an adjacent and a distant pair of non-empty sentences.
        """
        doc = document.doc
        # Another document to draw class 2 from (a corpus's ids are unique after `prepare`;
        # counting them would read every document of a large corpus).
        others = len(corpus) > 1 or (len(corpus) == 1 and document.position is None)
        if doc.num_sentences < 3 or not others:
            return []  # too short, or no other document to draw class 2 from
        usable = _usable_sentences(document)
        usable_set = set(usable)
        adjacent = [i for i in usable if i + 1 in usable_set]
        distant = [i for i in usable if usable[-1] >= i + 2]
        if not adjacent or not distant:
            return []
        out, used = [], set()
        for _ in range(doc.num_sentences // 2):
            label = int(rng.integers(3))
            for _ in range(_REPEAT_TRIES):  # a pair already given by this document is redrawn
                if label == ADJACENT:
                    i = adjacent[int(rng.integers(len(adjacent)))]
                    key, second = (label, i, i + 1), document.sentence_tokens(i + 1)
                elif label == SAME_DOCUMENT:
                    i = distant[int(rng.integers(len(distant)))]
                    partners = usable[bisect.bisect_left(usable, i + 2) :]
                    j = partners[int(rng.integers(len(partners)))]
                    key, second = (label, i, j), document.sentence_tokens(j)
                else:
                    i = usable[int(rng.integers(len(usable)))]
                    found = self._other_sentence(rng, corpus, doc.id)
                    if found is None:
                        break  # only documents without tokens drawn: skip this example
                    (other, j), second = found
                    key = (label, i, other, j)
                if key not in used:
                    used.add(key)
                    out.append(self._example([document.sentence_tokens(i), second], label))
                    break
        return out

    def _other_sentence(
        self, rng: np.random.Generator, corpus: CorpusContext, doc_id: str
    ) -> tuple[tuple[int, int], np.ndarray] | None:
        """((document index, sentence index), tokens) of a random non-empty sentence of
        another document; None when the drawn documents have none.
        """
        for _ in range(_OTHER_DOCUMENT_TRIES):
            index = corpus.random_other_index(rng, doc_id)
            if index is None:
                return None
            other = corpus.tokenized(index)
            sentences = _usable_sentences(other)
            if sentences:
                k = sentences[int(rng.integers(len(sentences)))]
                return (index, k), other.sentence_tokens(k)
        return None

    def _example(self, segments: list[np.ndarray], label: int) -> Example:
        tok = self.tokenizer
        ids, types, _ = assemble(segments, self.max_seq_len, tok.cls_token_id, tok.sep_token_id)
        return Example(self.name, self.task_id, ids, types, label)

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Three-way classifier on the pooled [CLS] output."""
        return SequenceClassificationHead(backbone.config.hidden_size, self.num_labels)
