"""Indexes built in parts (issue 28): in chunks, in several processes, in several merge buckets,
sharded, resumed after a kill, the files are byte-identical to the one-pass in-memory build;
a dropped part is never merged; a killed build never leaves an index a run would read; and
two processes never build the same index at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ernie_style.corpus.index import TokenTable
from ernie_style.corpus.parted import build_parted, is_built, missing_parts
from ernie_style.corpus.token_parts import TokenTableParts
from pretrain_tasks.ir_relevance import PassageTable


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _reference(tmp_path: Path, build) -> dict[str, bytes]:
    out = tmp_path / "one-pass"
    out.mkdir()
    build(out)
    return _files(out)


@pytest.mark.parametrize("chunk, num_proc", [(1000, 1), (7, 1), (5, 2)])
def test_the_token_table_in_parts_is_byte_identical(
    wiki_documents, wiki_tokenizer, tmp_path, chunk, num_proc
):
    docs = wiki_documents[:40]
    want = _reference(tmp_path, lambda out: TokenTable.build(docs, wiki_tokenizer, out))
    parts = TokenTableParts(wiki_tokenizer)
    assert build_parted(
        tmp_path / "root", "tokens", docs, parts.build_part, parts.merge, chunk, num_proc
    )
    assert _files(tmp_path / "root" / "tokens") == want
    assert not (tmp_path / "root" / "tokens.parts").exists()  # merged parts are removed


@pytest.mark.parametrize("by_words", [False, True])
def test_the_bm25_index_in_parts_buckets_and_processes_is_byte_identical(
    wiki_documents, tmp_path, by_words
):
    docs = wiki_documents[:40]
    want = _reference(
        tmp_path, lambda out: PassageTable.build(docs, 3, out, num_proc=1, by_words=by_words)
    )
    # 997: many buckets; 20: terms with more postings than a bucket holds, written part by part
    for chunk, procs, bucket_rows in ((1000, 1, 10**9), (6, 2, 997), (7, 1, 20)):
        build_part, merge = PassageTable.parts(3, by_words, bucket_rows)
        root = tmp_path / f"root-{bucket_rows}"
        assert build_parted(root, "bm25", docs, build_part, merge, chunk, procs)
        assert _files(root / "bm25") == want, (chunk, procs, bucket_rows)
    table = PassageTable.load(tmp_path / "root-20" / "bm25")
    assert table.index.num_passages == len(table.doc_index) > 40
    offsets = np.load(tmp_path / "root-20" / "bm25" / "term_offsets.npy")
    assert np.diff(offsets).max() > 20  # the heavy-term path ran


def test_the_word_counts_in_parts_are_byte_identical_and_count_the_sample(
    wiki_documents, tmp_path, monkeypatch
):
    from collections import Counter

    import pretrain_tasks.token_document_relation as relation

    docs = wiki_documents[:40]
    monkeypatch.setattr(relation, "FREQUENCY_SAMPLE", 7)  # every 5th document: 0, 5, ..., 35
    counts = Counter(
        w.casefold() for k in range(0, 40, 5) for w in docs[k].words() if any(map(str.isalnum, w))
    )
    want = _reference(tmp_path, lambda out: relation.build_word_counts(docs, 0, 40, out))
    assert relation.load_word_counts(tmp_path / "one-pass") == counts
    for chunk, procs in ((1000, 1), (6, 2), (1, 2)):
        root = tmp_path / f"root-{chunk}"
        parts = (relation.build_word_counts, relation.merge_word_counts)
        assert build_parted(root, "counts", docs, *parts, chunk, procs)
        assert _files(root / "counts") == want, (chunk, procs)


def test_shards_build_their_share_and_a_dropped_part_is_never_merged(
    wiki_documents, wiki_tokenizer, tmp_path
):
    import shutil

    docs = wiki_documents[:30]
    want = _reference(tmp_path, lambda out: TokenTable.build(docs, wiki_tokenizer, out))
    parts = TokenTableParts(wiki_tokenizer)
    root = tmp_path / "root"
    ranges = [(f, min(f + 4, 30)) for f in range(0, 30, 4)]
    # Shard 0 of 2: its parts only; the index is not complete, nothing is merged.
    assert not build_parted(root, "tokens", docs, parts.build_part, parts.merge, 4, 1, (0, 2))
    assert missing_parts(root, "tokens", ranges) == [1, 3, 5, 7]
    # A part lost before shard 1 runs: shard 1 builds its own share but never merges without it.
    shutil.rmtree(root / "tokens.parts" / "part-000002")
    assert not build_parted(root, "tokens", docs, parts.build_part, parts.merge, 4, 1, (1, 2))
    assert missing_parts(root, "tokens", ranges) == [2] and not is_built(root, "tokens")
    # An unsharded run rebuilds the missing part alone and merges.
    assert build_parted(root, "tokens", docs, parts.build_part, parts.merge, 4, 1)
    assert _files(root / "tokens") == want

    # A merger that dropped a part could not write the table (its documents no longer add up).
    def dropping(part_dirs, part_ranges, out):
        parts.merge(part_dirs[:2] + part_dirs[3:], part_ranges, out)

    with pytest.raises(ValueError, match="wrote"):
        build_parted(tmp_path / "root2", "tokens", docs, parts.build_part, dropping, 4, 1)
    assert not is_built(tmp_path / "root2", "tokens")


KILLED_BUILD = """
import sys, time
from pathlib import Path
from ernie_style.corpus.parted import build_parted
from ernie_style.testing.indexes import slow_token_parts
docs, parts = slow_token_parts(float(sys.argv[2]), Path(sys.argv[3]))
print("start", flush=True)
build_parted(Path(sys.argv[1]), "tokens", docs, parts.build_part, parts.merge, 3, 1)
print("done", flush=True)
"""


def test_a_killed_build_leaves_no_index_and_a_rerun_finishes_it(tmp_path):
    from ernie_style.testing.indexes import save_sample_tokenizer, slow_token_parts

    root = tmp_path / "root"
    tokenizer = save_sample_tokenizer(tmp_path / "tokenizer")
    command = [sys.executable, "-c", KILLED_BUILD, str(root), "0.3", str(tokenizer)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "start"
    deadline = time.time() + 60
    while time.time() < deadline and len(list((root / "tokens.parts").glob("part-*"))) < 2:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    built = sorted(p.name for p in (root / "tokens.parts").glob("part-*"))
    assert len(built) >= 2 and not is_built(root, "tokens")  # complete parts, no index
    docs, parts = slow_token_parts(0.0, tokenizer)
    assert build_parted(root, "tokens", docs, parts.build_part, parts.merge, 3, 1)
    reference = tmp_path / "reference"
    reference.mkdir()
    TokenTable.build(docs, parts.tokenizer, reference)
    assert _files(root / "tokens") == _files(reference)
    assert not [p for p in root.iterdir() if p.name.startswith(".tokens.tmp")]


def test_two_processes_never_build_the_same_index_at_once(tmp_path):
    from ernie_style.testing.indexes import save_sample_tokenizer

    root = tmp_path / "root"
    tokenizer = save_sample_tokenizer(tmp_path / "tokenizer")
    log = tmp_path / "log"
    env = dict(os.environ, ERNIE_STYLE_BUILD_LOG=str(log))
    command = [sys.executable, "-c", KILLED_BUILD, str(root), "0.05", str(tokenizer)]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
    for child in children:
        assert child.wait(timeout=120) == 0
    events = log.read_text().split()
    # Every part was built once, by one process, and the two never overlapped.
    starts = [e for e in events if e.startswith("begin:")]
    assert len(starts) == len(set(starts))
    builders = {e.split(":")[1] for e in starts}
    assert len(builders) == 1
    assert is_built(root, "tokens")
