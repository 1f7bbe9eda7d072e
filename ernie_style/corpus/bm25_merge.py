"""Merging BM25 passage-index parts on disk, in bounded memory.

Each part (one chunk of documents) holds its passages (`lengths`, `doc_index`, `word_start`,
`word_end`) and its postings rows (`hashes`, `owners` = the part's own passage numbers,
`counts` = term frequencies), the rows sorted by term hash (stable, so a term's rows keep
passage order). The merge streams the per-passage arrays into the final files, then builds the
CSR postings one hash range (bucket) at a time: each bucket finds its rows in every part by
binary search, counts each term's document frequency, then writes the postings in batches of
at most `bucket_rows` rows; a term with more postings than that (a function word of a large
corpus) is written part after part. The working set is one bucket's distinct terms and one
batch, not the corpus and not the longest posting list.

The result is byte-identical to the one-pass `bm25_arrays` build over all passages (tested):
a term's postings are in passage order, BM25 weights are computed element by element with the
same expression, and the mean passage length is the exact integer sum over the passage count.
"""

from __future__ import annotations

import mmap
import resource
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ernie_style.corpus.parted import NpyWriter, write_meta

#: Postings rows per merge bucket (~100 bytes each with the sorting buffers: ~25 MB).
BUCKET_ROWS = 250_000
_FINAL_POSTINGS = (("term_hash", np.uint64), ("postings", np.int32), ("weights", np.float64))


def _part(path: Path, name: str) -> np.ndarray:
    """One array of a part, memory-mapped while it is used (pages a process keeps mapped count
    in its RSS); the postings stage maps the parts once instead (`_MappedPart`)."""
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


class _MappedPart:
    """A part's postings arrays (`hashes`, `owners`, `counts`, `lengths`), mapped once for the
    whole merge. Pages stay in the page cache but leave this process's RSS once read: each
    read (a bucket's binary search, rows copied out) is followed by `release` (madvise
    DONTNEED over the part's mappings, which also drops the neighbouring pages the kernel's
    fault-around mapped), so at most one part's pages are mapped at a time, however many parts
    there are and however many postings a term has."""

    def __init__(self, path: Path, first_passage: int) -> None:
        self.first_passage = first_passage
        self._maps: list[mmap.mmap] = []
        self.hashes, self.owners, self.counts, self.lengths = (
            self._map(path, name) for name in ("hashes", "owners", "counts", "lengths")
        )

    def _map(self, path: Path, name: str) -> np.ndarray:
        with (path / f"{name}.npy").open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(mapped)
        return np.frombuffer(mapped, dtype=dtype, count=int(np.prod(shape)), offset=offset)

    def release(self) -> None:
        """Drop every page of the part mapped so far from this process (a later read maps it
        again from the page cache)."""
        for mapped in self._maps:
            mapped.madvise(mmap.MADV_DONTNEED)

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, global passage numbers, term frequencies, passage lengths) of rows
        [lo, hi), copied out of the mapping (whose pages are then dropped)."""
        local = np.array(self.owners[lo:hi])
        rows = (
            np.array(self.hashes[lo:hi]),
            local + self.first_passage,
            np.array(self.counts[lo:hi]),
            self.lengths[local],
        )
        self.release()
        return rows


class _BucketSpan:
    """One part's rows of a hash bucket: its distinct terms, where each term's rows start in
    the part and how many there are (a part's rows are sorted by hash, passage order kept)."""

    def __init__(self, part: _MappedPart, low: np.uint64, high: np.uint64 | None) -> None:
        hashes = part.hashes
        lo = int(np.searchsorted(hashes, low, side="left"))
        hi = len(hashes) if high is None else int(np.searchsorted(hashes, high, side="left"))
        self.terms, first, self.sizes = np.unique(
            hashes[lo:hi], return_index=True, return_counts=True
        )
        part.release()
        self.starts = first + lo

    def rows_of(self, first_term: np.uint64, last_term: np.uint64) -> tuple[int, int]:
        """Row range [lo, hi) of this part's terms with first_term <= hash <= last_term."""
        a = int(np.searchsorted(self.terms, first_term, side="left"))
        b = int(np.searchsorted(self.terms, last_term, side="right"))
        if a == b:
            return 0, 0
        return int(self.starts[a]), int(self.starts[b - 1] + self.sizes[b - 1])


def _allow_open_files(needed: int) -> None:
    """Raise this process's open-file limit to `needed` (each mapped array holds a file
    descriptor) up to the hard limit; past it, one clear error before any work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise OSError(
                f"merging the BM25 index maps {needed} files, over this process's open-file "
                f"limit ({hard}, `ulimit -Hn`): raise it, or build the index in fewer parts"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _term_batches(df: np.ndarray, bucket_rows: int) -> list[tuple[int, int]]:
    """Consecutive term ranges [a, b) of at most `bucket_rows` postings (a heavier term alone)."""
    batches, start, rows = [], 0, 0
    for term, size in enumerate(df.tolist()):
        if term > start and rows + size > bucket_rows:
            batches.append((start, term))
            start, rows = term, 0
        rows += size
    if start < len(df):
        batches.append((start, len(df)))
    return batches


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
    """The CSR postings, one hash bucket at a time. Per bucket, a first pass over the parts
    counts each term's document frequency; then the postings are written in term batches of
    at most `bucket_rows` rows, and a term with more postings than that (a function word of a
    large corpus) part after part, already in passage order. The working set is one bucket's
    distinct terms and one batch, whatever the largest posting list."""
    _allow_open_files(4 * len(parts) + 256)
    mapped = [
        _MappedPart(path, int(first))
        for path, first in zip(parts, first_passage_of_part, strict=False)
    ]
    rows = sum(len(part.hashes) for part in mapped)
    buckets = max(1, -(-rows // bucket_rows))
    starts = [np.uint64((i << 64) // buckets) for i in range(buckets)] + [None]
    raw = {name: (out / f".{name}.raw").open("wb") for name, _ in _FINAL_POSTINGS}
    offsets_raw = (out / ".term_offsets.raw").open("wb")
    offsets_raw.write(np.zeros(1, np.int64).tobytes())

    def write(owners: np.ndarray, tf: np.ndarray, lengths: np.ndarray, idf: Any) -> None:
        frequency = tf.astype(np.float64)
        norm = k1 * (1 - b + b * lengths.astype(np.float64) / average)
        weights = idf * frequency * (k1 + 1) / (frequency + norm)
        raw["postings"].write(owners.astype(np.int32).tobytes())
        raw["weights"].write(weights.astype(np.float64).tobytes())

    base = 0
    for i in range(buckets):
        spans = [_BucketSpan(part, starts[i], starts[i + 1]) for part in mapped]
        term_hash = np.unique(np.concatenate([span.terms for span in spans]))
        df = np.zeros(len(term_hash), np.int64)
        for span in spans:
            df[np.searchsorted(term_hash, span.terms)] += span.sizes
        idf = np.log1p((total - df + 0.5) / (df + 0.5))
        raw["term_hash"].write(term_hash.astype(np.uint64).tobytes())
        offsets_raw.write((base + np.cumsum(df)).astype(np.int64).tobytes())
        base += int(df.sum())
        for a, z in _term_batches(df, bucket_rows):
            first_term, last_term = term_hash[a], term_hash[z - 1]
            if z - a == 1 and df[a] > bucket_rows:  # one heavy term: part after part
                for part, span in zip(mapped, spans, strict=True):
                    _, owners, tf, lengths = part.rows(*span.rows_of(first_term, last_term))
                    write(owners, tf, lengths, idf[a])
                continue
            pieces = [
                part.rows(*span.rows_of(first_term, last_term))
                for part, span in zip(mapped, spans, strict=True)
            ]
            hashes, owners, tf, lengths = (
                np.concatenate(column) for column in zip(*pieces, strict=True)
            )
            term_of = np.searchsorted(term_hash[a:z], hashes)
            order = np.argsort(term_of, kind="stable")
            write(owners[order], tf[order], lengths[order], idf[a:z][term_of[order]])
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
