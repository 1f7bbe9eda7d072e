"""IR relevance (ERNIE 2.0): how relevant is a passage to a query?

Three classes: 0 = strong, 1 = weak, 2 = irrelevant. Self-supervised pairs: the query is the
document title, or its first sentence when the title has no word (or shares no term with any
other document, so that a weak passage exists). Passages are windows of up to
`passage_sentences` consecutive sentences of one paragraph.

    strong      a random passage of the same document (without the first sentence when that
                is the query)
    weak        a random passage among the `top_k` BM25 passages of the other documents
    irrelevant  a random passage of another document, outside those top `top_k`

Each document gives one example per class (balanced), or none when a class is impossible.
A labelled file (`pairs_file`: TSV with a header, CSV with a header, or JSONL with fields query,
passage, label; label 0/1/2 or strong/weak/irrelevant) adds to or replaces these pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ernie_style.document import Document
from ernie_style.examples import CorpusContext, Example, TokenizedDocument
from ernie_style.heads import SequenceClassificationHead, TaskHead
from ernie_style.pair_files import (
    PairFileMixin,
    read_rows,
    row_error,
    text_field,
    tokenize_text,
    validate_pairs_options,
)
from ernie_style.registry import PretrainTask, TaskConfig, register_task

STRONG, WEAK, IRRELEVANT = 0, 1, 2
LABEL_NAMES = ("strong", "weak", "irrelevant")
_TERM = re.compile(r"\w+")
_DRAWS = 16


def terms(text: str) -> list[str]:
    """BM25 terms of a text: its lower-cased regex words (`\\w+` runs)."""
    return _TERM.findall(text.lower())


class BM25Index:
    """Okapi BM25 over a fixed list of passages (term lists), with an inverted index.

    score(q, p) = sum over query terms t (repeats count) of
    idf(t) * tf(t, p) * (k1 + 1) / (tf(t, p) + k1 * (1 - b + b * len(p) / avg_len)), with
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)). A query only touches the postings of
    its terms. `groups` (e.g. document ids) lets a query exclude the passages of one group.
    """

    def __init__(
        self,
        passages: Sequence[Sequence[str]],
        groups: Sequence[str] | None = None,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if groups is not None and len(groups) != len(passages):
            raise ValueError(f"{len(groups)} groups for {len(passages)} passages")
        self.num_passages = n = len(passages)
        self.vocab: dict[str, int] = {}
        term_list, passage_list, tf_list = [], [], []
        for p, passage in enumerate(passages):
            for term, count in Counter(passage).items():
                term_list.append(self.vocab.setdefault(term, len(self.vocab)))
                passage_list.append(p)
                tf_list.append(count)
        term_ids = np.asarray(term_list, dtype=np.int64)
        order = np.argsort(term_ids, kind="stable")
        self._postings = np.asarray(passage_list, dtype=np.int64)[order]
        tf = np.asarray(tf_list, dtype=np.float64)[order]
        df = np.bincount(term_ids, minlength=len(self.vocab))
        self._offsets = np.zeros(len(self.vocab) + 1, dtype=np.int64)
        np.cumsum(df, out=self._offsets[1:])
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        lengths = np.asarray([len(p) for p in passages], dtype=np.float64)
        avg_len = lengths.mean() if lengths.sum() > 0 else 1.0
        norm = k1 * (1 - b + b * lengths / avg_len)
        self._weights = self.idf[term_ids[order]] * tf * (k1 + 1) / (tf + norm[self._postings])
        names = list(dict.fromkeys(groups if groups is not None else ()))
        self._group_code = {g: i for i, g in enumerate(names)}
        codes = [self._group_code[g] for g in groups] if groups is not None else [-1] * n
        self.groups = np.asarray(codes, dtype=np.int64)

    def scores(self, query_terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Passages sharing a term with the query (ascending) and their BM25 scores."""
        ids = [self.vocab[t] for t in query_terms if t in self.vocab]
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        spans = [slice(self._offsets[t], self._offsets[t + 1]) for t in ids]
        passages = np.concatenate([self._postings[s] for s in spans])
        weights = np.concatenate([self._weights[s] for s in spans])
        if len(passages) * 8 < self.num_passages:
            touched, inverse = np.unique(passages, return_inverse=True)
            return touched, np.bincount(inverse, weights=weights, minlength=len(touched))
        dense = np.bincount(passages, weights=weights, minlength=self.num_passages)
        seen = np.zeros(self.num_passages, dtype=bool)
        seen[passages] = True
        touched = np.flatnonzero(seen)
        return touched, dense[touched]

    def top_k(
        self, query_terms: Sequence[str], k: int, exclude: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (at most) `k` best passages sharing a term with the query, outside group
        `exclude`, best first (ties by passage index), and their scores.
        """
        if k < 1:
            raise ValueError(f"top_k needs k >= 1, got {k}")
        passages, scores = self.scores(query_terms)
        code = self._group_code.get(exclude, -2) if exclude is not None else -2
        keep = self.groups[passages] != code
        passages, scores = passages[keep], scores[keep]
        if len(scores) > k:
            threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
            passages, scores = passages[scores >= threshold], scores[scores >= threshold]
        order = np.lexsort((passages, -scores))[:k]
        return passages[order], scores[order]


def passage_spans(doc: Document, max_sentences: int) -> list[tuple[int, int]]:
    """Sentence ranges [start, end) of up to `max_sentences` sentences within a paragraph."""
    spans = []
    for paragraph in doc.paragraphs():
        for k in range(0, len(paragraph), max_sentences):
            chunk = paragraph[k : k + max_sentences]
            spans.append((chunk[0], chunk[-1] + 1))
    return spans


def passage_tokens(document: TokenizedDocument, span: tuple[int, int]) -> np.ndarray:
    """Sub-token ids of the sentences [start, end) of a document."""
    doc = document.doc
    return document.tokens(
        doc.sentence_word_range(span[0])[0], doc.sentence_word_range(span[1] - 1)[1]
    )


@dataclass
class PassageTable:
    """All passages of a corpus: document index and sentence range of each, and their index."""

    doc_index: np.ndarray
    spans: list[tuple[int, int]]
    index: BM25Index
    #: Passages of document d are first_passage[d]:first_passage[d + 1].
    first_passage: np.ndarray

    @classmethod
    def build(cls, documents: Sequence[Document], max_sentences: int) -> PassageTable:
        """Split every document into passages and index their terms."""
        doc_index, spans, passage_terms, groups = [], [], [], []
        first = np.zeros(len(documents) + 1, dtype=np.int64)
        for d, doc in enumerate(documents):
            first[d] = len(spans)
            for start, end in passage_spans(doc, max_sentences):
                text = doc.text[doc.sentence_starts[start] : doc.sentence_ends[end - 1]]
                doc_index.append(d)
                spans.append((start, end))
                passage_terms.append(terms(text))
                groups.append(doc.id)
        first[len(documents)] = len(spans)
        index = BM25Index(passage_terms, groups)
        return cls(np.asarray(doc_index, dtype=np.int64), spans, index, first)


@dataclass
class IRRelevanceConfig(TaskConfig):
    """`top_k`: BM25 passages weak ones are drawn from; `passage_sentences`: passage size;
    `pairs_file`/`pairs_mode`: an optional labelled file added to or replacing the pairs.
    """

    top_k: int = 10
    passage_sentences: int = 3
    pairs_file: str | None = None
    pairs_mode: str = "add"

    def __post_init__(self) -> None:
        for key in ("top_k", "passage_sentences"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task ir_relevance: {key} must be an integer >= 1, got {value!r}")
        validate_pairs_options("ir_relevance", self.pairs_file, self.pairs_mode)


@register_task
class IRRelevance(PairFileMixin, PretrainTask):
    """Sequence level, 3 labels: strong / weak / irrelevant."""

    name = "ir_relevance"
    level = "sequence"
    description = "is a passage strongly (0), weakly (1) or not (2) relevant to a query"
    task_id = 6
    Config = IRRelevanceConfig

    @property
    def num_labels(self) -> int:
        """Strong, weak, irrelevant."""
        return 3

    def passages(self, corpus: CorpusContext) -> PassageTable:
        """The corpus's passage table and BM25 index (built once per corpus)."""
        size = self.config.passage_sentences
        key = "ir_relevance/bm25" + ("" if size == 3 else f"/{size}")
        return corpus.shared(key, lambda: PassageTable.build(corpus.documents, size))

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One strong, one weak and one irrelevant example (none in `replace` mode, or when a
        class cannot be built).
        """
        if self.config.pairs_mode == "replace":
            return []
        doc, table = document.doc, self.passages(corpus)
        spans = passage_spans(doc, self.config.passage_sentences)
        for query_tokens, query_terms, skip_first in self._queries(document):
            strong = [(max(s, int(skip_first)), e) for s, e in spans if e > int(skip_first)]
            strong = [s for s in strong if len(passage_tokens(document, s))]
            weak, _ = table.index.top_k(query_terms, self.config.top_k, exclude=doc.id)
            if strong and len(weak) and len(query_tokens):
                break
        else:
            return []
        weak_tokens = self._draw_weak(rng, corpus, table, weak)
        other_tokens = self._draw_irrelevant(rng, corpus, table, set(weak.tolist()), doc.id)
        if weak_tokens is None or other_tokens is None:
            return []
        strong_tokens = passage_tokens(document, strong[int(rng.integers(len(strong)))])
        return [
            self._pair_example(query_tokens, passage, label)
            for label, passage in enumerate((strong_tokens, weak_tokens, other_tokens))
        ]

    def _queries(self, document: TokenizedDocument) -> list[tuple[np.ndarray, list[str], bool]]:
        """Query candidates in order of preference: (tokens, terms, is first sentence)."""
        doc, out = document.doc, []
        if terms(doc.title):
            out.append(
                (tokenize_text(doc.title, self.tokenizer).token_ids, terms(doc.title), False)
            )
        if doc.num_sentences:
            out.append((document.sentence_tokens(0), terms(doc.sentence(0)), True))
        return out

    def _draw_weak(
        self, rng: np.random.Generator, corpus: CorpusContext, table: PassageTable, top: np.ndarray
    ) -> np.ndarray | None:
        """Tokens of a random passage among the top BM25 ones (None if draws find only
        passages without tokens).
        """
        for _ in range(_DRAWS):
            p = int(top[int(rng.integers(len(top)))])
            tokens = passage_tokens(corpus.tokenized(int(table.doc_index[p])), table.spans[p])
            if len(tokens):
                return tokens
        return None

    def _draw_irrelevant(
        self,
        rng: np.random.Generator,
        corpus: CorpusContext,
        table: PassageTable,
        avoid: set[int],
        doc_id: str,
    ) -> np.ndarray | None:
        """Tokens of a random passage of another document, not in `avoid` (None if a few
        draws find none).
        """
        for _ in range(_DRAWS):
            d = corpus.random_other_index(rng, doc_id)
            if d is None:
                return None
            first, last = int(table.first_passage[d]), int(table.first_passage[d + 1])
            if first == last:
                continue
            p = int(rng.integers(first, last))
            tokens = passage_tokens(corpus.tokenized(d), table.spans[p])
            if p not in avoid and len(tokens):
                return tokens
        return None

    def _load_file(self, path: str) -> list[Example]:
        out = []
        for line, row in read_rows(path, ("query", "passage", "label")):
            query = tokenize_text(text_field(path, line, row, "query"), self.tokenizer)
            passage = tokenize_text(text_field(path, line, row, "passage"), self.tokenizer)
            if not len(query.token_ids) or not len(passage.token_ids):
                raise row_error(path, line, "the query or the passage has no tokens")
            label = parse_label(path, line, row["label"])
            out.append(self._pair_example(query.token_ids, passage.token_ids, label))
        return out

    def build_head(self, backbone: nn.Module) -> TaskHead:
        """Three-way classifier on the pooled [CLS] output."""
        return SequenceClassificationHead(backbone.config.hidden_size, self.num_labels)


def parse_label(path: str, line: int, value: Any) -> int:
    """A relevance label of a pair-file row: 0/1/2 or strong/weak/irrelevant."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 3:
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in LABEL_NAMES:
        return LABEL_NAMES.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise row_error(path, line, f"label {value!r} is not 0/1/2 or one of {LABEL_NAMES}")
