"""Merging BM25 passage-index parts on disk, in bounded memory.

Each part (one chunk of documents) holds its passages (`lengths`, `doc_index`, `word_start`,
`word_end`) and its postings rows (`hashes`, `owners` = the part's own passage numbers,
`counts` = term frequencies), the rows sorted by term hash (stable, so a term's rows keep
passage order). The merge streams the per-passage arrays into the final files, then builds the
CSR postings one hash range (bucket) at a time: each bucket gathers its rows from every part
by binary search, so the working set is one bucket (`bucket_rows` rows), not the corpus.

The result is byte-identical to the one-pass `bm25_arrays` build over all passages (tested):
a term's postings are in passage order, BM25 weights are computed element by element with the
same expression, and the mean passage length is the exact integer sum over the passage count.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ernie_style.corpus.parted import NpyWriter, write_meta

#: Postings rows per merge bucket (~100 bytes each with the sorting buffers: ~25 MB).
BUCKET_ROWS = 250_000
_FINAL_POSTINGS = (("term_hash", np.uint64), ("postings", np.int32), ("weights", np.float64))


def _part(path: Path, name: str) -> np.ndarray:
    """One array of a part, memory-mapped. Mapped only while used: pages a process keeps
    mapped count in its RSS, so no part stays mapped across the merge."""
    return np.load(path / f"{name}.npy", mmap_mode="r")


def merge_passage_parts(
    parts: list[Path],
    ranges: list[tuple[int, int]],
    out: Path,
    meta: dict,
    k1: float = 1.2,
    b: float = 0.75,
    bucket_rows: int = BUCKET_ROWS,
) -> None:
    """Write the passage table of `parts` (in document order) to `out` with `meta`."""
    counts = [len(_part(path, "lengths")) for path in parts]
    first_passage_of_part = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(first_passage_of_part[-1])
    total_length = sum(int(_part(path, "lengths").sum()) for path in parts)
    average = total_length / total if total_length > 0 else 1.0
    _write_passages(parts, ranges, out, total)
    _write_postings(parts, first_passage_of_part, out, total, average, k1, b, bucket_rows)
    documents = ranges[-1][1]
    write_meta(out, {"version": 1, "documents": documents, "passages": total, **meta})


def _write_passages(
    parts: list[Path], ranges: list[tuple[int, int]], out: Path, total: int
) -> None:
    """The per-passage arrays, part after part, and `first_passage` per document."""
    for name, dtype in (("doc_index", np.int32), ("word_start", np.int32), ("word_end", np.int32)):
        writer = NpyWriter(out / f"{name}.npy", dtype, total)
        for path in parts:
            writer.append(_part(path, name))
        writer.close()
    shutil.copyfile(out / "doc_index.npy", out / "groups.npy")
    first = NpyWriter(out / "first_passage.npy", np.int64, ranges[-1][1] + 1)
    base = 0
    first.append(np.zeros(1, np.int64))
    for path, (start, stop) in zip(parts, ranges, strict=True):
        per_document = np.bincount(_part(path, "doc_index") - start, minlength=stop - start)
        first.append(base + np.cumsum(per_document))
        base += int(per_document.sum())
    first.close()


def _bucket_rows(path: Path, first: int, low: np.uint64, high: np.uint64 | None) -> tuple:
    """(hashes, passages, term frequencies, passage lengths) of one part's rows with
    low <= hash < high (high None: no upper bound)."""
    hashes = _part(path, "hashes")
    lo = int(np.searchsorted(hashes, low, side="left"))
    hi = len(hashes) if high is None else int(np.searchsorted(hashes, high, side="left"))
    local = np.array(_part(path, "owners")[lo:hi])
    lengths = _part(path, "lengths")[local]
    return np.array(hashes[lo:hi]), local + first, np.array(_part(path, "counts")[lo:hi]), lengths


def _write_postings(
    parts: list[Path],
    first_passage_of_part: np.ndarray,
    out: Path,
    total: int,
    average: float,
    k1: float,
    b: float,
    bucket_rows: int,
) -> None:
    rows = sum(len(_part(path, "hashes")) for path in parts)
    buckets = max(1, -(-rows // bucket_rows))
    starts = [np.uint64((i << 64) // buckets) for i in range(buckets)] + [None]
    raw = {name: (out / f".{name}.raw").open("wb") for name, _ in _FINAL_POSTINGS}
    offsets_raw = (out / ".term_offsets.raw").open("wb")
    offsets_raw.write(np.zeros(1, np.int64).tobytes())
    base = 0
    for i in range(buckets):
        pieces = [
            _bucket_rows(path, int(first), starts[i], starts[i + 1])
            for path, first in zip(parts, first_passage_of_part, strict=False)
        ]
        hashes, owners, tf, lengths = (
            np.concatenate(column) for column in zip(*pieces, strict=True)
        )
        term_hash, term_of = np.unique(hashes, return_inverse=True)
        order = np.argsort(term_of, kind="stable")
        frequency = tf[order].astype(np.float64)
        df = np.bincount(term_of, minlength=len(term_hash))
        idf = np.log1p((total - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * lengths[order].astype(np.float64) / average)
        weights = idf[term_of[order]] * frequency * (k1 + 1) / (frequency + norm)
        raw["term_hash"].write(term_hash.astype(np.uint64).tobytes())
        raw["postings"].write(owners[order].astype(np.int32).tobytes())
        raw["weights"].write(weights.astype(np.float64).tobytes())
        offsets_raw.write((base + np.cumsum(df)).astype(np.int64).tobytes())
        base += int(df.sum())
    for handle in (*raw.values(), offsets_raw):
        handle.close()
    for name, dtype in (*_FINAL_POSTINGS, ("term_offsets", np.int64)):
        _raw_to_npy(out / f".{name}.raw", out / f"{name}.npy", dtype)


def _raw_to_npy(raw: Path, target: Path, dtype: type, block: int = 1 << 18) -> None:
    """Copy a raw array file into a `.npy` file in blocks, then delete it."""
    itemsize = np.dtype(dtype).itemsize
    writer = NpyWriter(target, dtype, raw.stat().st_size // itemsize)
    with raw.open("rb") as handle:
        while chunk := handle.read(block * itemsize):
            writer.append(np.frombuffer(chunk, dtype=dtype))
    writer.close()
    raw.unlink()
