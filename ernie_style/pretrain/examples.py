"""From annotated documents to model inputs: the tokenized view of a document, the corpus
context tasks draw other documents from, example assembly with special tokens, and collation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ernie_style.corpus.document import Document
from ernie_style.corpus.index import TokenTable, build_or_load, load_arrays, tokenizer_key
from ernie_style.corpus.parted import Merger, PartBuilder, build_parted, is_built
from ernie_style.corpus.token_parts import TokenTableParts

IGNORE_INDEX = -100
#: ERNIE input layout supports this many segments (token_type_ids 0..3).
MAX_SEGMENTS = 4

T = TypeVar("T")
#: A training job builds a missing index itself only for corpora up to this many documents
#: (seconds of work); larger ones need `ernie-style index` first (a CPU job, in parallel).
AUTO_BUILD_DOCUMENTS = 5000
#: Documents per part of an index built in parts (the builder's working set).
INDEX_CHUNK = 256


@dataclass
class Example:
    """One model input. `labels` is a per-position list (token tasks, -100 = ignored) or an int
    (sequence tasks).
    """

    task: str
    task_id: int
    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int] | int

    def __len__(self) -> int:
        return len(self.input_ids)


class TokenizedDocument:
    """A `Document` with the sub-token ids of each word (tokenized once, word-aligned).

    Words are tokenized as pre-tokenized input, so every sub-token belongs to exactly one word;
    a word the tokenizer maps to nothing (e.g. a control character) gets no tokens.
    `token_ids[word_offsets[i]:word_offsets[i + 1]]` are the tokens of word `i`.
    """

    #: Index of the document in the `CorpusContext` that made this view (None otherwise).
    position: int | None = None

    def __init__(self, document: Document, tokenizer: Any) -> None:
        self.doc = document
        words = document.words()
        if words:
            backend = tokenizer.backend_tokenizer
            # A call like tokenizer(..., truncation=True, max_length=n) leaves truncation (and
            # padding) switched on in the shared Rust tokenizer, which would cut the whole
            # document to n tokens here; transformers resets them the same way on each call.
            if backend.truncation is not None:
                backend.no_truncation()
            if backend.padding is not None:
                backend.no_padding()
            encoding = backend.encode(words, is_pretokenized=True, add_special_tokens=False)
            self.token_ids = np.asarray(encoding.ids, dtype=np.int64)
            word_of_token = np.asarray(
                [-1 if w is None else w for w in encoding.word_ids], dtype=np.int64
            )
        else:
            self.token_ids = np.zeros(0, dtype=np.int64)
            word_of_token = np.zeros(0, dtype=np.int64)
        counts = np.bincount(word_of_token[word_of_token >= 0], minlength=len(words))
        self.word_offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.word_offsets[1:])

    @classmethod
    def from_arrays(
        cls, document: Document, token_ids: np.ndarray, word_offsets: np.ndarray
    ) -> TokenizedDocument:
        """A view built from a token table's arrays (no tokenization)."""
        view = cls.__new__(cls)
        view.doc = document
        view.token_ids = np.asarray(token_ids, dtype=np.int64)
        view.word_offsets = np.asarray(word_offsets, dtype=np.int64)
        return view

    @property
    def num_words(self) -> int:
        """Number of words."""
        return len(self.word_offsets) - 1

    def word_token_count(self, i: int) -> int:
        """Number of sub-tokens of word `i`."""
        return int(self.word_offsets[i + 1] - self.word_offsets[i])

    def tokens(self, word_start: int, word_end: int) -> np.ndarray:
        """Sub-token ids of words [word_start, word_end)."""
        return self.token_ids[self.word_offsets[word_start] : self.word_offsets[word_end]]

    def word_labels_to_tokens(
        self, word_start: int, word_end: int, word_labels: Sequence[int]
    ) -> np.ndarray:
        """Per-token labels for words [word_start, word_end): each word's label on its first
        sub-token, IGNORE_INDEX on the others.
        """
        offsets = self.word_offsets[word_start : word_end + 1] - self.word_offsets[word_start]
        labels = np.full(int(offsets[-1]), IGNORE_INDEX, dtype=np.int64)
        firsts = offsets[:-1]
        has_tokens = offsets[1:] > firsts
        labels[firsts[has_tokens]] = np.asarray(word_labels, dtype=np.int64)[has_tokens]
        return labels

    def sentence_tokens(self, sentence: int) -> np.ndarray:
        """Sub-token ids of one sentence."""
        return self.tokens(*self.doc.sentence_word_range(sentence))


class CorpusContext:
    """The corpus a task draws from: other documents (for negatives) and corpus-level
    structures (e.g. a BM25 index) built once and cached by name (`saved`).

    With an `index_root` (training: `CORPUS/indexes`), documents are tokenized once into an
    on-disk token table and corpus-level structures are saved there and memory-mapped
    (`ernie_style.corpus.index`); `first_document` is the position of `documents[0]` in the
    prepared corpus, so the training and held-out parts get their own structures. `draw_from`
    names another context that cross-document draws (IR relevance's passages) come from.
    """

    def __init__(
        self,
        documents: Sequence[Document],
        tokenizer: Any,
        cache_size: int = 64,
        index_root: Path | None = None,
        first_document: int = 0,
        draw_from: CorpusContext | None = None,
    ) -> None:
        self.documents = documents
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self.index_root = index_root
        self.first_document = first_document
        #: Where tasks draw passages of other documents from (default: this corpus); the
        #: held-out corpus draws from the training corpus.
        self.draw_from = draw_from
        # Bounded LRU of decoded documents (each holds its annotation as Python lists, up to
        # ~1 MB): memory must not grow with the corpus; the token table makes a miss cheap.
        self._tokenized: OrderedDict[int, TokenizedDocument] = OrderedDict()
        self._shared: dict[str, Any] = {}
        self._table: TokenTable | None = None
        #: Processes that build a missing index, and the limit and command of `indexed`.
        self.num_proc = 1
        self.auto_build_documents = AUTO_BUILD_DOCUMENTS
        self.index_command = "ernie-style index --corpus CORPUS --tokenizer TOKENIZER"

    @property
    def range_key(self) -> str:
        """The document range of this context, e.g. 'docs0-392' (names on-disk structures)."""
        return f"docs{self.first_document}-{self.first_document + len(self.documents)}"

    def token_table_name(self) -> str:
        """The on-disk name of this context's token table (tokenizer and document range)."""
        return f"tokens-{tokenizer_key(self.tokenizer)}-{self.range_key}"

    def token_table(self) -> TokenTable | None:
        """The on-disk token table (built on first use); None without an index root."""
        if self._table is None and self.index_root is not None:
            name = f"tokens-{tokenizer_key(self.tokenizer)}"
            parts = TokenTableParts(self.tokenizer)
            self._table = self.indexed(
                name,
                lambda out: TokenTable.build(self.documents, self.tokenizer, out),
                (parts.build_part, parts.merge),
                lambda path, mmap: TokenTable(load_arrays(path, mmap)[0]),
            )
        return self._table

    def saved(self, name: str, build: Callable[[Path], None], load: Callable[[Path, bool], T]) -> T:
        """A corpus-level structure named `name` (this context's range is added), saved under
        the index root and memory-mapped, or built in RAM without one; cached."""
        key = f"{name}-{self.range_key}"
        if key not in self._shared:
            self._shared[key] = build_or_load(self.index_root, key, build, load)
        return self._shared[key]

    def indexed(
        self,
        name: str,
        build: Callable[[Path], None],
        parts: tuple[PartBuilder, Merger],
        load: Callable[[Path, bool], T],
    ) -> T:
        """An index named `name` (this context's range is added): under the index root it is
        built in parts (`ernie_style.corpus.parted`: bounded memory, `num_proc` processes,
        resumable, one builder at a time) and memory-mapped; without a root, `build` makes
        it in RAM. A missing index of a corpus over `AUTO_BUILD_DOCUMENTS` documents is an
        error naming the `ernie-style index` command that builds it."""
        key = f"{name}-{self.range_key}"
        if key in self._shared:
            return self._shared[key]
        if self.index_root is None:
            self._shared[key] = build_or_load(None, key, build, load)
            return self._shared[key]
        root = self.index_root
        if not is_built(root, key):
            if len(self.documents) > self.auto_build_documents:
                raise ValueError(
                    f"index {root / key} is missing: build it before training with "
                    f"`{self.index_command}` ({len(self.documents)} documents; a training job "
                    f"builds indexes itself only up to {self.auto_build_documents})"
                )

            def announce() -> None:
                print(
                    f"building index {key} ({len(self.documents)} documents); "
                    f"`{self.index_command}` builds it ahead of training",
                    flush=True,
                )

            build_part, merge = parts
            build_parted(
                root,
                key,
                self.documents,
                build_part,
                merge,
                INDEX_CHUNK,
                self.num_proc,
                None,
                announce,
            )
        self._shared[key] = load(root / key, True)
        return self._shared[key]

    def memo(self, name: str, compute: Callable[[], T]) -> T:
        """A small corpus-level structure kept in RAM (`compute()` runs once per context)."""
        key = f"memo:{name}"
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def __len__(self) -> int:
        return len(self.documents)

    def tokenized(self, index: int) -> TokenizedDocument:
        """The tokenized view of document `index` (cached)."""
        cached = self._tokenized.get(index)
        if cached is None:
            table = self.token_table()
            if table is not None:
                cached = TokenizedDocument.from_arrays(
                    self.documents[index], *table.document(index)
                )
            else:
                cached = TokenizedDocument(self.documents[index], self.tokenizer)
            cached.position = index
            self._tokenized[index] = cached
            if len(self._tokenized) > self.cache_size:
                self._tokenized.popitem(last=False)
        else:
            self._tokenized.move_to_end(index)
        return cached

    def word_span_tokens(self, index: int, word_start: int, word_end: int) -> np.ndarray:
        """Sub-token ids of words [word_start, word_end) of document `index` (straight from
        the token table when there is one: no document is decoded)."""
        table = self.token_table()
        if table is None:
            return self.tokenized(index).tokens(word_start, word_end)
        tokens, offsets = table.document(index)
        return np.asarray(tokens[offsets[word_start] : offsets[word_end]], dtype=np.int64)

    def random_other_index(self, rng: np.random.Generator, exclude_id: str) -> int | None:
        """Index of a random document whose id differs from `exclude_id` (None if there is
        none).
        """
        n = len(self.documents)
        for _ in range(8):
            i = int(rng.integers(n)) if n else 0
            if n and self.documents[i].id != exclude_id:
                return i
        others = [i for i, d in enumerate(self.documents) if d.id != exclude_id]
        return int(rng.choice(others)) if others else None


def fit_segment_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Truncated lengths that fit `budget` tokens in total, cutting the longest segments first
    (water-filling), so short segments stay whole.
    """
    if sum(lengths) <= budget:
        return list(lengths)
    order = sorted(lengths)
    remaining, cap = budget, 0
    for k, length in enumerate(order):
        share = remaining // (len(order) - k)
        if length > share:
            cap = share
            break
        remaining -= length
    fitted = [min(length, cap) for length in lengths]
    # Hand out the leftover tokens one by one to the segments that were cut, in order.
    leftover = budget - sum(fitted)
    for i, length in enumerate(lengths):
        if leftover <= 0:
            break
        if length > fitted[i]:
            fitted[i] += 1
            leftover -= 1
    return fitted


def assemble(
    segments: Sequence[Sequence[int] | np.ndarray],
    max_seq_len: int,
    cls_id: int,
    sep_id: int,
    segment_labels: Sequence[Sequence[int] | np.ndarray] | None = None,
) -> tuple[list[int], list[int], list[int] | None]:
    """`[CLS] s0 [SEP] s1 [SEP] ...` with token_type_ids 0,1,2,.. per segment, truncated to
    `max_seq_len` (longest segments cut first, from their end). Per-token labels, if given,
    are carried along with IGNORE_INDEX on the special tokens.
    """
    if not 1 <= len(segments) <= MAX_SEGMENTS:
        raise ValueError(f"between 1 and {MAX_SEGMENTS} segments expected, got {len(segments)}")
    budget = max_seq_len - 1 - len(segments)
    lengths = fit_segment_lengths([len(s) for s in segments], budget)
    input_ids, token_types = [cls_id], [0]
    labels: list[int] | None = [IGNORE_INDEX] if segment_labels is not None else None
    for k, (segment, length) in enumerate(zip(segments, lengths, strict=True)):
        input_ids.extend(_int_list(segment[:length]))
        input_ids.append(sep_id)
        token_types.extend([k] * (length + 1))
        if labels is not None and segment_labels is not None:
            labels.extend(_int_list(segment_labels[k][:length]))
            labels.append(IGNORE_INDEX)
    return input_ids, token_types, labels


def _int_list(values: Sequence[int] | np.ndarray) -> list[int]:
    """Python ints of a list or array (`tolist` converts a whole array at C speed)."""
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False).tolist()
    return [int(v) for v in values]


def collate(examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Pad a batch of examples into tensors: input_ids, attention_mask, token_type_ids,
    task_type_ids and labels ([B, T] for token tasks, [B] for sequence tasks).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(e) for e in examples)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    token_types = torch.zeros((batch, width), dtype=torch.long)
    task_types = torch.zeros((batch, width), dtype=torch.long)
    token_level = isinstance(examples[0].labels, list)
    labels = (
        torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        if token_level
        else torch.zeros(batch, dtype=torch.long)
    )
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        attention[row, :n] = 1
        token_types[row, :n] = torch.tensor(ex.token_type_ids)
        task_types[row, :n] = ex.task_id
        if token_level:
            labels[row, :n] = torch.tensor(ex.labels)
        else:
            labels[row] = int(ex.labels)  # type: ignore[arg-type]
    return {
        "task": examples[0].task,
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": token_types,
        "task_type_ids": task_types,
        "labels": labels,
    }


def sentence_windows(document: TokenizedDocument, budget: int) -> list[tuple[int, int]]:
    """Word spans [start, end) that tile the document by whole sentences, each holding at most
    `budget` sub-tokens (a single longer sentence forms its own window and is truncated later).
    """
    doc = document.doc
    windows: list[tuple[int, int]] = []
    start = end = used = 0
    for sentence in range(doc.num_sentences):
        s_start, s_end = doc.sentence_word_range(sentence)
        if s_start == s_end:
            continue
        size = int(document.word_offsets[s_end] - document.word_offsets[s_start])
        if size == 0:
            continue  # e.g. only control characters: nothing for the model to see
        if end > start and used + size > budget:
            windows.append((start, end))
            start, used = s_start, 0
        if end == start:
            start = s_start
        end, used = s_end, used + size
    if end > start:
        windows.append((start, end))
    return windows
