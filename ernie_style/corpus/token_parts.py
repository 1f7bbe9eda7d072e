"""The token table built in parts (`ernie_style.corpus.parted`): each part tokenizes one chunk
of documents; the merge streams the parts into the table's four arrays. The files are
byte-identical to `TokenTable.build`'s one-pass, in-memory build (tested)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ernie_style.corpus.document import Document
from ernie_style.corpus.index import INDEX_VERSION, encode_documents, plain_backend
from ernie_style.corpus.parted import NpyWriter, array_length, write_meta

#: Documents encoded at once within a part: the Python word lists and encodings of a batch are
#: the builder's largest transient objects.
ENCODE_BATCH = 32


class TokenTableParts:
    """Part builder and merger of the token table of `tokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def build_part(self, documents: Sequence[Document], first: int, last: int, out: Path) -> None:
        """Tokenize documents [first, last) into `out`."""
        backend = plain_backend(self.tokenizer)
        tokens, offsets = [], []
        for start in range(first, last, ENCODE_BATCH):  # the encodings' objects stay small
            ids, doc_offsets = encode_documents(
                documents, start, min(start + ENCODE_BATCH, last), backend
            )
            tokens += ids
            offsets += doc_offsets
        arrays = {
            "token_ids": np.concatenate(tokens) if tokens else np.zeros(0, np.int32),
            "token_counts": np.asarray([len(t) for t in tokens], dtype=np.int64),
            "word_offsets": np.concatenate(offsets) if offsets else np.zeros(0, np.int64),
            "word_counts": np.asarray([len(o) for o in offsets], dtype=np.int64),
        }
        for name, array in arrays.items():
            np.save(out / f"{name}.npy", array, allow_pickle=False)
        write_meta(out, {"documents": last - first})

    def merge(self, parts: list[Path], ranges: list[tuple[int, int]], out: Path) -> None:
        """Stream the parts (in document order) into the table's arrays in `out`."""
        tokens = sum(array_length(p / "token_ids.npy") for p in parts)
        offsets = sum(array_length(p / "word_offsets.npy") for p in parts)
        documents = ranges[-1][1]
        _concatenate(parts, "token_ids", NpyWriter(out / "token_ids.npy", np.int32, tokens))
        _concatenate(parts, "word_offsets", NpyWriter(out / "word_offsets.npy", np.int64, offsets))
        _starts(parts, "token_counts", NpyWriter(out / "token_start.npy", np.int64, documents + 1))
        _starts(parts, "word_counts", NpyWriter(out / "word_start.npy", np.int64, documents + 1))
        meta = {"version": INDEX_VERSION, "documents": documents, "tokens": tokens}
        write_meta(out, meta)


def _concatenate(parts: list[Path], name: str, writer: NpyWriter) -> None:
    for part in parts:
        writer.append(np.load(part / f"{name}.npy", mmap_mode="r"))
    writer.close()


def _starts(parts: list[Path], name: str, writer: NpyWriter) -> None:
    """Running start offsets (a leading 0) from the parts' per-document counts."""
    writer.append(np.zeros(1, np.int64))
    base = 0
    for part in parts:
        counts = np.load(part / f"{name}.npy")
        writer.append(base + np.cumsum(counts, dtype=np.int64))
        base += int(counts.sum())
    writer.close()
