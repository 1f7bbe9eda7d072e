"""The corpus indexes of a pretraining run, built by a CPU job before training.

A run reads three kinds of index, all built in parts (`ernie_style.corpus.parted`: bounded
memory, `--num-proc` processes, resumable, shardable, one builder at a time) and memory-mapped:

- the token table of each document range (training documents; the held-out tail) for the
  run's tokenizer;
- IR relevance's BM25 passage index of the training documents (`passage_sentences` per
  passage);
- token-document relation's word counts over a sample of the training documents (its
  frequency bands).

`ernie-style index` (and `prepare` / `merge-shards`, for the corpus's own tokenizer) call
`build_indexes`; a training run finds them built (`corpus_contexts` names them the same way).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from ernie_style.corpus.index import index_root
from ernie_style.defaults import DEFAULT_HELDOUT_DOCUMENTS, DEFAULT_PASSAGE_SENTENCES
from ernie_style.pretrain.examples import CorpusContext


def default_num_proc() -> int:
    """Processes an index build uses by default: the cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def index_command(
    corpus: str | Path,
    tokenizer: str | Path | None,
    heldout: int = DEFAULT_HELDOUT_DOCUMENTS,
    index_dir: str | Path | None = None,
) -> str:
    """The `ernie-style index` command line that builds a run's indexes."""
    words = ["ernie-style", "index", "--corpus", str(corpus)]
    if tokenizer:
        words += ["--tokenizer", str(tokenizer)]
    if heldout != DEFAULT_HELDOUT_DOCUMENTS:
        words += ["--heldout-documents", str(heldout)]
    if index_dir:
        words += ["--index-dir", str(index_dir)]
    return shlex.join(words)


def corpus_contexts(
    dataset: Any,
    corpus: str | Path,
    tokenizer: Any,
    tokenizer_path: str | Path | None,
    heldout: int,
    index_dir: str | Path | None = None,
) -> tuple[CorpusContext, CorpusContext | None]:
    """The training and held-out contexts of a prepared corpus (`dataset` loaded from
    `corpus`), with their index root, build processes and index command."""
    from ernie_style.corpus.document import DocumentSequence

    n_heldout = min(heldout, max(len(dataset) - 1, 0))
    n_train = len(dataset) - n_heldout
    root = index_root(Path(corpus), index_dir)
    command = index_command(corpus, tokenizer_path, heldout, index_dir)
    train_documents = DocumentSequence(dataset.select(range(n_train)))
    train = CorpusContext(train_documents, tokenizer, index_root=root)
    contexts = [train]
    held = None
    if n_heldout:
        held = CorpusContext(
            DocumentSequence(dataset.select(range(n_train, len(dataset)))),
            tokenizer,
            index_root=root,
            first_document=n_train,
            draw_from=train,
        )
        contexts.append(held)
    for context in contexts:
        context.num_proc = default_num_proc()
        context.index_command = command
    return train, held


def build_indexes(
    corpus: str | Path,
    tokenizer_path: str | Path | None = None,
    heldout: int = DEFAULT_HELDOUT_DOCUMENTS,
    index_dir: str | Path | None = None,
    passage_sentences: tuple[int, ...] = (DEFAULT_PASSAGE_SENTENCES,),
    num_proc: int | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, bool]:
    """Build every index a run over `corpus` with this tokenizer reads (the corpus's own
    tokenizer by default); returns each index's name and whether it is complete (a shard
    leaves an index incomplete until every shard has built its parts)."""
    from ernie_style.corpus.language import corpus_language
    from ernie_style.corpus.parted import build_parted, is_built
    from ernie_style.corpus.prepared import load_corpus
    from ernie_style.corpus.token_parts import TokenTableParts
    from ernie_style.pretrain.examples import INDEX_CHUNK
    from ernie_style.tokenizer import load_tokenizer
    from pretrain_tasks.ir_relevance import PassageTable
    from pretrain_tasks.token_document_relation import (
        WORD_COUNTS_INDEX,
        build_word_counts,
        merge_word_counts,
    )

    tokenizer = load_tokenizer(tokenizer_path or Path(corpus) / "tokenizer")
    dataset = load_corpus(corpus)
    train, held = corpus_contexts(dataset, corpus, tokenizer, tokenizer_path, heldout, index_dir)
    by_words = corpus_language(corpus) == "zh"
    jobs = []
    for context in (train, held):
        if context is not None:
            parts = TokenTableParts(tokenizer)
            jobs.append((context, context.token_table_name(), (parts.build_part, parts.merge)))
    for size in passage_sentences:
        name = f"ir_relevance-bm25-p{size}" + ("-words" if by_words else "")
        jobs.append((train, f"{name}-{train.range_key}", PassageTable.parts(size, by_words)))
    word_counts = (build_word_counts, merge_word_counts)
    jobs.append((train, f"{WORD_COUNTS_INDEX}-{train.range_key}", word_counts))
    complete = {}
    root = train.index_root
    assert root is not None
    procs = num_proc or default_num_proc()
    for context, name, (build_part, merge) in jobs:
        docs = context.documents
        build_parted(root, name, docs, build_part, merge, INDEX_CHUNK, procs, shard)
        complete[name] = is_built(root, name)
    return complete
