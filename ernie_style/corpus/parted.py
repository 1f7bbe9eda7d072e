"""Building a corpus structure in parts: in bounded memory, in parallel, resumably, and never
twice at once.

A structure over N documents is built as parts of `chunk` documents each, then merged:

    ROOT/NAME.parts/part-000000/   one chunk's arrays (.npy) and meta.json, renamed into place
    ROOT/NAME/                      the merged structure (what training maps), renamed into place

- **Bounded memory**: a part holds one chunk's arrays; the merge streams the parts into the
  final `.npy` files (`NpyWriter`), so the working set is a chunk, not the corpus.
- **Parallel**: missing parts are built by `num_proc` forked processes (each retired after
  `PARTS_PER_WORKER` parts, so the pages of the corpus it read leave with it).
- **Resumable and safe**: a part and the merged structure each appear by one rename, so a build
  killed at any moment leaves complete parts and no merged structure; a rerun builds only the
  missing parts (temporary directories of dead builders are swept) and merges.
- **Sharded**: `shard=(i, n)` builds parts i, i+n, ... only (one machine's share); the merge
  runs once every part exists, on whichever run finds them all.
- **One builder at a time**: an unsharded build and every merge hold an exclusive lock on
  `ROOT/.NAME.lock`, so the ranks of a training job never build the same structure at once
  (the second waits, then finds it built). Shards build their parts without it (disjoint
  parts, each renamed into place), then take it to merge.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ernie_style.fileio import sibling, sweep_stale_dirs

#: A part builder: (documents, first, last, out_dir) writes the part's arrays into out_dir.
PartBuilder = Callable[[Sequence[Any], int, int, Path], None]
#: A merger: (ordered part directories, chunk ranges, out_dir) writes the structure.
Merger = Callable[[list[Path], list[tuple[int, int]], Path], None]

#: Parts a build worker process builds before it is replaced by a fresh one.
PARTS_PER_WORKER = 4
_WORKER_DOCUMENTS: Sequence[Any] = ()
_WORKER_BUILDER: PartBuilder | None = None


class NpyWriter:
    """Write a 1-D `.npy` file of known length piece by piece, byte-identical to `np.save`
    of the whole array (format 1.0 header, C order)."""

    def __init__(self, path: Path, dtype: Any, length: int) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = int(length)
        self.written = 0
        self._file = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self._file, header | {"shape": (self.length,)})

    def append(self, values: np.ndarray) -> None:
        """Append `values` (cast to the file's dtype)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        values.tofile(self._file)  # no bytes copy of the array
        self.written += len(values)

    def close(self) -> None:
        """Finish the file; it must hold exactly `length` values."""
        self._file.close()
        if self.written != self.length:
            raise ValueError(f"{self.path}: wrote {self.written} of {self.length} values")


def array_length(path: Path) -> int:
    """The length of a saved 1-D array, read from its header alone."""
    return len(np.load(path, mmap_mode="r"))


def chunk_ranges(total: int, chunk: int) -> list[tuple[int, int]]:
    """[first, last) document ranges of `chunk` documents covering `total`."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return [(first, min(first + chunk, total)) for first in range(0, total, chunk)] or [(0, 0)]


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """`meta.json` (written last: its presence marks the directory complete)."""
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


@contextmanager
def build_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock of structure `name` under `root` (blocks until it is free)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_built(root: Path, name: str) -> bool:
    """Whether the merged structure `root/name` is complete."""
    return (root / name / "meta.json").is_file()


def missing_parts(root: Path, name: str, ranges: list[tuple[int, int]]) -> list[int]:
    """Indexes of the parts not yet built."""
    parts = root / f"{name}.parts"
    return [k for k in range(len(ranges)) if not (parts / _part_name(k) / "meta.json").is_file()]


def build_parted(
    root: Path,
    name: str,
    documents: Sequence[Any],
    build_part: PartBuilder,
    merge: Merger,
    chunk: int,
    num_proc: int = 1,
    shard: tuple[int, int] | None = None,
    announce: Callable[[], None] | None = None,
) -> bool:
    """Build structure `name` under `root` from `documents` unless it is complete (see the
    module docstring); `announce` runs once this process starts building. Returns whether it
    is complete afterwards (False only for a shard whose siblings have parts left)."""
    if is_built(root, name):
        return True
    ranges = chunk_ranges(len(documents), chunk)
    parts_dir = root / f"{name}.parts"
    if announce is not None:
        announce = _once(announce)
    if shard is not None:  # a machine's share: parts are disjoint and each appears atomically
        if announce is not None:
            announce()
        index, count = shard
        todo = [k for k in missing_parts(root, name, ranges) if k % count == index]
        parts_dir.mkdir(parents=True, exist_ok=True)
        _build_parts(parts_dir, documents, ranges, todo, build_part, num_proc)
    with build_lock(root, name):
        if is_built(root, name):  # another process built it while this one waited
            return True
        parts_dir.mkdir(parents=True, exist_ok=True)
        if announce is not None:
            announce()
        if shard is None:
            todo = missing_parts(root, name, ranges)
            _build_parts(parts_dir, documents, ranges, todo, build_part, num_proc)
        if missing_parts(root, name, ranges):
            return False
        target = root / name
        sweep_stale_dirs(target)
        temp = sibling(target, "tmp")
        temp.mkdir()
        try:
            merge([parts_dir / _part_name(k) for k in range(len(ranges))], ranges, temp)
            os.rename(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        return True


def _once(function: Callable[[], None]) -> Callable[[], None]:
    done = []

    def call() -> None:
        if not done:
            done.append(True)
            function()

    return call


def _part_name(k: int) -> str:
    return f"part-{k:06d}"


def _build_parts(
    parts_dir: Path,
    documents: Sequence[Any],
    ranges: list[tuple[int, int]],
    todo: list[int],
    build_part: PartBuilder,
    num_proc: int,
) -> None:
    jobs = [(str(parts_dir / _part_name(k)), *ranges[k]) for k in todo]
    if not jobs:
        return
    global _WORKER_DOCUMENTS, _WORKER_BUILDER
    _WORKER_DOCUMENTS, _WORKER_BUILDER = documents, build_part
    try:
        # Forked workers, even for one process: a worker reading documents keeps the pages of
        # the memory-mapped corpus it touched in its RSS, so each one retires after
        # `PARTS_PER_WORKER` parts and the builder's peak RSS stays that of a few parts.
        context = multiprocessing.get_context("fork")
        processes = max(1, min(num_proc, len(jobs)))
        with context.Pool(
            processes, initializer=_single_threaded, maxtasksperchild=PARTS_PER_WORKER
        ) as pool:
            for _ in pool.imap_unordered(_build_in_worker, jobs):
                pass
    finally:
        _WORKER_DOCUMENTS, _WORKER_BUILDER = (), None


def _single_threaded() -> None:
    """Each worker process is one core: no thread pool of the Rust tokenizer inside it."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _build_in_worker(job: tuple[str, int, int]) -> None:
    assert _WORKER_BUILDER is not None
    _build_one(_WORKER_DOCUMENTS, _WORKER_BUILDER, job)


def _build_one(
    documents: Sequence[Any], build_part: PartBuilder, job: tuple[str, int, int]
) -> None:
    """Build one part in a temporary sibling and rename it into place."""
    path, first, last = Path(job[0]), job[1], job[2]
    sweep_stale_dirs(path)
    temp = sibling(path, "tmp")
    temp.mkdir()
    try:
        build_part(documents, first, last, temp)
        try:
            os.rename(temp, path)
        except OSError:  # a worker of a killed earlier build finished the same part first
            if not (path / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
