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

import multiprocessing
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ernie_style.corpus.bm25_merge import BUCKET_ROWS, merge_passage_parts
from ernie_style.corpus.document import Document
from ernie_style.corpus.index import load_arrays, save_arrays
from ernie_style.corpus.parted import write_meta
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

STRONG, WEAK, IRRELEVANT = 0, 1, 2
LABEL_NAMES = ("strong", "weak", "irrelevant")
_TERM = re.compile(r"\w+")
_DRAWS = 16


def terms(text: str) -> list[str]:
    """BM25 terms of a text: its lower-cased regex words (`\\w+` runs)."""
    return _TERM.findall(text.lower())


def word_terms(doc: Document, word_start: int, word_end: int) -> list[str]:
    """BM25 terms of words [start, end) of a document: its annotated words (a Chinese
    segmenter's), lower-cased, punctuation left out. Chinese has no spaces, so `terms` would
    make a whole clause one term."""
    return [w.lower() for w in map(doc.word, range(word_start, word_end)) if _TERM.search(w)]


#: Longest word `segment_with_index` looks up (characters).
MAX_WORD_CHARS = 8
_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def segment_with_index(text: str, index: BM25Index) -> list[str]:
    """BM25 terms of an unannotated Chinese text (a title), by forward maximum matching against
    the words the index holds: at each position the longest indexed word wins, an unknown
    character stands alone. Latin and digit runs are `terms` as usual."""
    out, pos, text = [], 0, text.lower()
    for run in _HAN_RUN.finditer(text):
        out += terms(text[pos : run.start()])
        start = run.start()
        while start < run.end():
            for end in range(min(run.end(), start + MAX_WORD_CHARS), start, -1):
                if end == start + 1 or index.has_term(text[start:end]):
                    out.append(text[start:end])
                    start = end
                    break
        pos = run.end()
    return out + terms(text[pos:])


def term_hashes(terms: Sequence[str]) -> np.ndarray:
    """Stable 64-bit ids of terms (crc32 and adler32 side by side): the index stores these
    instead of a vocabulary dict, so it maps from disk with nothing to rebuild in RAM."""
    out = np.empty(len(terms), dtype=np.uint64)
    for i, term in enumerate(terms):
        data = term.encode("utf-8")
        out[i] = (zlib.crc32(data) << 32) | zlib.adler32(data)
    return out


def bm25_arrays(
    hashes: np.ndarray,
    passages: np.ndarray,
    tf: np.ndarray,
    lengths: np.ndarray,
    k1: float = 1.2,
    b: float = 0.75,
) -> dict[str, np.ndarray]:
    """CSR BM25 arrays from one (term hash, passage, term frequency) row per posting."""
    if k1 < 0 or not 0 <= b <= 1:
        raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    n = len(lengths)
    term_hash, term_of = np.unique(hashes, return_inverse=True)
    order = np.argsort(term_of, kind="stable")
    postings = passages[order].astype(np.int32)
    tf = tf[order].astype(np.float64)
    df = np.bincount(term_of, minlength=len(term_hash))
    offsets = np.zeros(len(term_hash) + 1, dtype=np.int64)
    np.cumsum(df, out=offsets[1:])
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    lengths = np.asarray(lengths, dtype=np.float64)
    avg_len = lengths.mean() if lengths.sum() > 0 else 1.0
    norm = k1 * (1 - b + b * lengths / avg_len)
    weights = idf[term_of[order]] * tf * (k1 + 1) / (tf + norm[postings])
    return {
        "term_hash": term_hash.astype(np.uint64),
        "term_offsets": offsets,
        "postings": postings,
        "weights": weights.astype(np.float64),
    }


class BM25Index:
    """Okapi BM25 over a fixed list of passages (term lists), as a CSR inverted index.

    score(q, p) = sum over query terms t (repeats count) of
    idf(t) * tf(t, p) * (k1 + 1) / (tf(t, p) + k1 * (1 - b + b * len(p) / avg_len)), with
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)). A query only touches the postings of
    its terms. `groups` (e.g. document ids) lets a query exclude the passages of one group.
    The arrays (`arrays()`) can be saved and memory-mapped back (`from_arrays`).
    """

    def __init__(
        self,
        passages: Sequence[Sequence[str]],
        groups: Sequence[Any] | None = None,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        if groups is not None and len(groups) != len(passages):
            raise ValueError(f"{len(groups)} groups for {len(passages)} passages")
        hashes, owners, counts = [], [], []
        for p, passage in enumerate(passages):
            counted = Counter(passage)
            hashes.append(term_hashes(list(counted)))
            owners.append(np.full(len(counted), p, dtype=np.int64))
            counts.append(np.fromiter(counted.values(), dtype=np.int64, count=len(counted)))
        lengths = np.asarray([len(p) for p in passages], dtype=np.int64)
        arrays = bm25_arrays(
            np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
            np.concatenate(owners) if owners else np.zeros(0, np.int64),
            np.concatenate(counts) if counts else np.zeros(0, np.int64),
            lengths,
            k1,
            b,
        )
        names = list(dict.fromkeys(groups if groups is not None else ()))
        self._group_code: dict[Any, int] | None = {g: i for i, g in enumerate(names)}
        codes = [self._group_code[g] for g in groups] if groups is not None else [-1] * len(lengths)
        self._load({**arrays, "groups": np.asarray(codes, dtype=np.int64)})

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BM25Index:
        """An index over saved arrays; `groups` are integers and `exclude` takes one."""
        index = cls.__new__(cls)
        index._group_code = None
        index._load(arrays)
        return index

    def _load(self, arrays: dict[str, np.ndarray]) -> None:
        self.term_hash = arrays["term_hash"]
        self._offsets = arrays["term_offsets"]
        self._postings = arrays["postings"]
        self._weights = arrays["weights"]
        self.groups = arrays["groups"]
        self.num_passages = len(self.groups)

    def arrays(self) -> dict[str, np.ndarray]:
        """The index as named arrays (what `from_arrays` takes)."""
        return {
            "term_hash": self.term_hash,
            "term_offsets": self._offsets,
            "postings": self._postings,
            "weights": self._weights,
            "groups": self.groups,
        }

    def has_term(self, term: str) -> bool:
        """Whether some passage holds `term`."""
        wanted = term_hashes([term])[0]
        where = int(np.searchsorted(self.term_hash, wanted))
        return where < len(self.term_hash) and self.term_hash[where] == wanted

    def scores(self, query_terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Passages sharing a term with the query (ascending) and their BM25 scores."""
        hashes = term_hashes(query_terms)
        where = np.searchsorted(self.term_hash, hashes)
        hit = where < len(self.term_hash)
        hit[hit] = self.term_hash[where[hit]] == hashes[hit]
        ids = where[hit].tolist()
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        spans = [slice(self._offsets[t], self._offsets[t + 1]) for t in ids]
        passages = np.concatenate([self._postings[s] for s in spans]).astype(np.int64)
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
        self, query_terms: Sequence[str], k: int, exclude: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (at most) `k` best passages sharing a term with the query, outside group
        `exclude`, best first (ties by passage index), and their scores.
        """
        if k < 1:
            raise ValueError(f"top_k needs k >= 1, got {k}")
        passages, scores = self.scores(query_terms)
        if exclude is not None:
            code = self._group_code.get(exclude, -2) if self._group_code is not None else exclude
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


def _passage_rows(
    documents: Sequence[Document], first: int, last: int, size: int, by_words: bool = False
) -> dict:
    """Passages of documents [first, last): owner, word range, length, and postings rows;
    terms are the annotated words with `by_words` (Chinese), else regex words."""
    doc_index, word_start, word_end, lengths, hashes, owners, counts = [], [], [], [], [], [], []
    for d in range(first, last):
        doc = documents[d]
        for start, end in passage_spans(doc, size):
            if by_words:
                first_word = doc.sentence_word_range(start)[0]
                counted = Counter(word_terms(doc, first_word, doc.sentence_word_range(end - 1)[1]))
            else:
                text = doc.text[doc.sentence_starts[start] : doc.sentence_ends[end - 1]]
                counted = Counter(terms(text))
            owners.append(np.full(len(counted), len(lengths), dtype=np.int64))
            hashes.append(term_hashes(list(counted)))
            counts.append(np.fromiter(counted.values(), dtype=np.int64, count=len(counted)))
            lengths.append(sum(counted.values()))
            doc_index.append(d)
            word_start.append(doc.sentence_word_range(start)[0])
            word_end.append(doc.sentence_word_range(end - 1)[1])
    empty_u, empty_i = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return {
        "doc_index": np.asarray(doc_index, dtype=np.int32),
        "word_start": np.asarray(word_start, dtype=np.int32),
        "word_end": np.asarray(word_end, dtype=np.int32),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "hashes": np.concatenate(hashes) if hashes else empty_u,
        "owners": np.concatenate(owners) if owners else empty_i,
        "counts": np.concatenate(counts) if counts else empty_i,
    }


_BUILD_DOCUMENTS: Sequence[Document] = ()


def _rows_in_worker(job: tuple[int, int, int, bool]) -> dict:
    return _passage_rows(_BUILD_DOCUMENTS, *job)


@dataclass
class PassageTable:
    """All passages of a corpus: owner document and word range of each, and their BM25 index
    (groups = owner documents). Saved as arrays, memory-mapped by training processes."""

    doc_index: np.ndarray
    word_start: np.ndarray
    word_end: np.ndarray
    index: BM25Index
    #: Passages of document d are first_passage[d]:first_passage[d + 1].
    first_passage: np.ndarray

    @staticmethod
    def build(
        documents: Sequence[Document],
        max_sentences: int,
        out: Path,
        num_proc: int = 1,
        chunk: int = 500,
        by_words: bool = False,
    ) -> None:
        """Split every document into passages and index their terms (chunks of documents in
        `num_proc` forked processes when there are several chunks); save the arrays in `out`.
        `by_words`: terms are the annotated words (`word_terms`, for Chinese)."""
        global _BUILD_DOCUMENTS
        if not documents:
            raise ValueError("ir_relevance: no documents to index")
        total = len(documents)
        jobs = [(f, min(f + chunk, total), max_sentences, by_words) for f in range(0, total, chunk)]
        if num_proc > 1 and len(jobs) > 1:
            _BUILD_DOCUMENTS = documents
            try:
                with multiprocessing.get_context("fork").Pool(num_proc) as pool:
                    parts = pool.map(_rows_in_worker, jobs)
            finally:
                _BUILD_DOCUMENTS = ()
        else:
            parts = [_passage_rows(documents, *job) for job in jobs]
        first_row = np.cumsum([0] + [len(p["lengths"]) for p in parts])
        joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        joined["owners"] = np.concatenate([p["owners"] + first_row[i] for i, p in enumerate(parts)])
        owner_doc = joined["doc_index"]
        arrays = bm25_arrays(
            joined["hashes"], joined["owners"], joined["counts"], joined["lengths"]
        )
        arrays |= {
            "groups": owner_doc,
            "doc_index": owner_doc,
            "word_start": joined["word_start"],
            "word_end": joined["word_end"],
            "first_passage": np.searchsorted(owner_doc, np.arange(total + 1)).astype(np.int64),
        }
        meta = {"documents": total, "passages": len(owner_doc), "passage_sentences": max_sentences}
        save_arrays(out, arrays, meta)

    @classmethod
    def parts(
        cls, max_sentences: int, by_words: bool = False, bucket_rows: int = BUCKET_ROWS
    ) -> tuple[Any, Any]:
        """(part builder, merger) of this table for `ernie_style.corpus.parted`: the same
        files as `build`, in bounded memory (`bucket_rows` postings per merge bucket)."""

        def build_part(documents: Sequence[Document], first: int, last: int, out: Path) -> None:
            rows = _passage_rows(documents, first, last, max_sentences, by_words)
            order = np.argsort(rows["hashes"], kind="stable")  # a term's rows keep passage order
            for key in ("hashes", "owners", "counts"):
                rows[key] = rows[key][order]
            for key, array in rows.items():
                np.save(out / f"{key}.npy", array, allow_pickle=False)
            write_meta(out, {"passages": len(rows["lengths"])})

        def merge(parts: list[Path], ranges: list[tuple[int, int]], out: Path) -> None:
            meta = {"passage_sentences": max_sentences}
            merge_passage_parts(parts, ranges, out, meta, bucket_rows=bucket_rows)

        return build_part, merge

    @classmethod
    def load(cls, path: Path, mmap: bool = True) -> PassageTable:
        """A saved table (memory-mapped by default)."""
        arrays, _ = load_arrays(path, mmap)
        return cls(
            arrays["doc_index"],
            arrays["word_start"],
            arrays["word_end"],
            BM25Index.from_arrays(arrays),
            arrays["first_passage"],
        )

    def tokens(self, corpus: CorpusContext, p: int) -> np.ndarray:
        """Sub-token ids of passage `p`."""
        return corpus.word_span_tokens(
            int(self.doc_index[p]), int(self.word_start[p]), int(self.word_end[p])
        )


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
        """The corpus's passage table and BM25 index: built on first use (in parallel), saved
        next to a prepared corpus and memory-mapped, or held in RAM for an in-memory corpus."""
        size = self.config.passage_sentences
        by_words = self.language == "zh"
        return corpus.indexed(
            f"ir_relevance-bm25-p{size}" + ("-words" if by_words else ""),
            lambda out: PassageTable.build(corpus.documents, size, out, by_words=by_words),
            PassageTable.parts(size, by_words),
            PassageTable.load,
        )

    def prepare(self, corpus: CorpusContext) -> None:
        """Build (or map) the passage index before training forks its loader workers."""
        if self.config.pairs_mode != "replace":
            self.passages(corpus)

    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """One strong, one weak and one irrelevant example (none in `replace` mode, or when a
        class cannot be built).
        """
        if self.config.pairs_mode == "replace":
            return []
        # Weak and irrelevant passages come from the corpus's pool: itself, or for held-out
        # documents the training corpus (a handful of held-out documents has no real BM25
        # neighbours, so "weak" there would be noise, not a weaker match).
        pool = corpus.draw_from or corpus
        doc, table = document.doc, self.passages(pool)
        own = self._own_index(document, corpus) if pool is corpus else -1
        spans = passage_spans(doc, self.config.passage_sentences)
        for query_tokens, query_terms, skip_first in self._queries(document, table.index):
            strong = [(max(s, int(skip_first)), e) for s, e in spans if e > int(skip_first)]
            strong = [s for s in strong if len(passage_tokens(document, s))]
            weak, _ = table.index.top_k(query_terms, self.config.top_k, exclude=own)
            if strong and len(weak) and len(query_tokens):
                break
        else:
            return []
        weak_tokens = self._draw_weak(rng, pool, table, weak)
        other_tokens = self._draw_irrelevant(rng, pool, table, set(weak.tolist()), doc.id)
        if weak_tokens is None or other_tokens is None:
            return []
        strong_tokens = passage_tokens(document, strong[int(rng.integers(len(strong)))])
        return [
            self._pair_example(query_tokens, passage, label)
            for label, passage in enumerate((strong_tokens, weak_tokens, other_tokens))
        ]

    @staticmethod
    def _own_index(document: TokenizedDocument, corpus: CorpusContext) -> int:
        """The corpus position of `document` (its passages are not weak candidates); -1 for a
        document outside the corpus."""
        if document.position is not None:
            return document.position
        ids = [i for i, d in enumerate(corpus.documents) if d.id == document.doc.id]
        return ids[0] if ids else -1

    def _queries(
        self, document: TokenizedDocument, index: BM25Index | None = None
    ) -> list[tuple[np.ndarray, list[str], bool]]:
        """Query candidates in order of preference: (tokens, terms, is first sentence). On
        Chinese the title is segmented against the index's words and the first sentence's terms
        are its segmenter words."""
        doc, out = document.doc, []
        chinese = self.language == "zh" and index is not None
        title_terms = segment_with_index(doc.title, index) if chinese else terms(doc.title)
        if title_terms:
            out.append((tokenize_text(doc.title, self.tokenizer).token_ids, title_terms, False))
        if doc.num_sentences:
            first = (
                word_terms(doc, *doc.sentence_word_range(0))
                if self.language == "zh"
                else terms(doc.sentence(0))
            )
            out.append((document.sentence_tokens(0), first, True))
        return out

    def _draw_weak(
        self, rng: np.random.Generator, corpus: CorpusContext, table: PassageTable, top: np.ndarray
    ) -> np.ndarray | None:
        """Tokens of a random passage among the top BM25 ones (None if draws find only
        passages without tokens).
        """
        for _ in range(_DRAWS):
            p = int(top[int(rng.integers(len(top)))])
            tokens = table.tokens(corpus, p)
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
            tokens = table.tokens(corpus, p)
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
