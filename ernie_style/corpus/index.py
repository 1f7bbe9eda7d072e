"""Corpus-level structures built once, saved on disk next to the prepared corpus, and loaded
memory-mapped.

A training process (and each of its loader workers) maps these files instead of building them
in RAM: start-up time and resident memory do not grow with the corpus beyond the pages touched.
Each structure is a directory of `.npy` arrays plus `meta.json`, built in a temporary sibling
directory and renamed into place, so it is absent or complete (two builders racing on shared
storage both succeed; the second one's copy is dropped).

    CORPUS/indexes/tokens-<tokenizer>-<docs>/   every document's sub-token ids, word-aligned
    CORPUS/indexes/<task key>-<docs>/           e.g. the IR-relevance BM25 passage index

`<docs>` names the document range (training documents exclude the held-out tail); `<tokenizer>`
is a fingerprint of the vocabulary, so a release's tokenizer gets its own token table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ernie_style.corpus.document import Document
from ernie_style.fileio import sibling, sweep_stale_dirs

INDEX_DIR = "indexes"
#: Bump when the layout of a saved structure changes.
INDEX_VERSION = 1
T = TypeVar("T")


def save_arrays(directory: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `arrays` as NAME.npy and `meta` as meta.json into `directory`."""
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    meta = {"version": INDEX_VERSION, **meta}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_arrays(directory: Path, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of a saved structure (memory-mapped, read-only, by default)."""
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{directory}: index version {meta.get('version')}, expected {INDEX_VERSION}"
        )
    arrays = {
        path.stem: np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        for path in sorted(directory.glob("*.npy"))
    }
    return arrays, meta


def build_or_load(
    root: Path | None,
    name: str,
    build: Callable[[Path], None],
    load: Callable[[Path, bool], T],
) -> T:
    """`load(root/name, mmap=True)`, building it first with `build(temp_dir)` if it is not
    there.

    Without a `root` (a corpus held only in memory) the structure is built in a temporary
    directory and loaded into RAM (`mmap=False`).
    """
    if root is None:
        with tempfile.TemporaryDirectory(prefix="ernie-style-index-") as temp:
            build(Path(temp))
            return load(Path(temp), False)
    target = root / name
    if not (target / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        sweep_stale_dirs(target)  # temp dirs left by killed builders
        temp = sibling(target, "tmp")
        temp.mkdir()
        try:
            build(temp)
            try:
                os.rename(temp, target)
            except OSError:
                if not (target / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return load(target, True)


def index_root(corpus: Path, index_dir: str | Path | None = None) -> Path:
    """Where a prepared corpus's structures live: `index_dir` (default CORPUS/indexes), in a
    folder named after the corpus fingerprint, so a re-prepared corpus never reads stale ones."""
    from ernie_style.corpus.prepared import DOCUMENTS_DIR, read_fingerprint

    corpus = Path(corpus)
    if corpus.name == DOCUMENTS_DIR and not (corpus / DOCUMENTS_DIR).is_dir():
        corpus = corpus.parent  # the config named CORPUS/documents
    record = read_fingerprint(corpus)
    if record is not None:
        fingerprint = str(record["fingerprint"])
    else:  # not written by `prepare`: the dataset's own state stands in
        state = corpus / DOCUMENTS_DIR / "state.json"
        fingerprint = hashlib.sha256(state.read_bytes() if state.is_file() else b"").hexdigest()
    root = Path(index_dir) if index_dir else corpus / INDEX_DIR
    return root / f"corpus-{fingerprint[:12]}"


def tokenizer_key(tokenizer: Any) -> str:
    """A short fingerprint of a tokenizer's vocabulary and lower-casing."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    lowercase = bool(getattr(tokenizer, "do_lower_case", False))
    return hashlib.sha256(json.dumps([lowercase, vocab]).encode("utf-8")).hexdigest()[:16]


class TokenTable:
    """Every document's sub-token ids, word-aligned, as three flat arrays.

    Document `d`'s tokens are `token_ids[token_start[d]:token_start[d + 1]]`; its word offsets
    (relative to its first token, `num_words + 1` of them) are
    `word_offsets[word_start[d]:word_start[d + 1]]`.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.token_ids = arrays["token_ids"]
        self.token_start = arrays["token_start"]
        self.word_offsets = arrays["word_offsets"]
        self.word_start = arrays["word_start"]

    def __len__(self) -> int:
        return len(self.token_start) - 1

    def document(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, word offsets) of document `d`, as views."""
        tokens = self.token_ids[self.token_start[d] : self.token_start[d + 1]]
        return tokens, self.word_offsets[self.word_start[d] : self.word_start[d + 1]]

    @staticmethod
    def build(documents: Sequence[Document], tokenizer: Any, out: Path, chunk: int = 256) -> None:
        """Tokenize every document in one pass, in memory (the Rust tokenizer's batch encoder,
        on all cores): for corpora held in RAM. `TokenTableParts` builds the same files in
        parts, in bounded memory, for a prepared corpus."""
        backend = plain_backend(tokenizer)
        tokens, offsets = [], []
        for first in range(0, len(documents), chunk):
            ids, doc_offsets = encode_documents(
                documents, first, min(first + chunk, len(documents)), backend
            )
            tokens += ids
            offsets += doc_offsets
        token_start = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in tokens], out=token_start[1:])
        word_start = np.zeros(len(offsets) + 1, dtype=np.int64)
        np.cumsum([len(o) for o in offsets], out=word_start[1:])
        arrays = {
            "token_ids": np.concatenate(tokens) if tokens else np.zeros(0, np.int32),
            "token_start": token_start,
            "word_offsets": np.concatenate(offsets) if offsets else np.zeros(0, np.int64),
            "word_start": word_start,
        }
        save_arrays(out, arrays, {"documents": len(documents), "tokens": int(token_start[-1])})


def plain_backend(tokenizer: Any) -> Any:
    """The tokenizer's Rust backend with truncation and padding off."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def encode_documents(
    documents: Sequence[Document], first: int, last: int, backend: Any
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sub-token ids (int32) and word offsets (int64, `num_words + 1` each, relative to the
    document's first token) of documents [first, last)."""
    words = [documents[d].words() for d in range(first, last)]
    encodings = backend.encode_batch(
        [w or [""] for w in words], is_pretokenized=True, add_special_tokens=False
    )
    tokens, offsets = [], []
    for doc_words, encoding in zip(words, encodings, strict=True):
        ids = np.asarray(encoding.ids if doc_words else [], dtype=np.int32)
        word_of = np.asarray(
            [-1 if w is None else w for w in encoding.word_ids] if doc_words else [],
            dtype=np.int64,
        )
        counts = np.bincount(word_of[word_of >= 0], minlength=len(doc_words))
        doc_offsets = np.zeros(len(doc_words) + 1, dtype=np.int64)
        np.cumsum(counts, out=doc_offsets[1:])
        tokens.append(ids)
        offsets.append(doc_offsets)
    return tokens, offsets
