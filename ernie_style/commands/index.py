"""`ernie-style index`: build a pretraining run's corpus indexes ahead of training, on CPUs."""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `index` subcommand."""
    from ernie_style.commands.prepare import parse_shard
    from ernie_style.defaults import DEFAULT_HELDOUT_DOCUMENTS, DEFAULT_PASSAGE_SENTENCES

    parser = subparsers.add_parser(
        "index",
        help="build the token tables and BM25 passage index a run reads (before training)",
        description=(
            "Build the corpus indexes a pretraining run over CORPUS with TOKENIZER reads: the "
            "token table of the training and held-out documents and IR relevance's BM25 "
            "passage index. Parts of 256 documents are built by --num-proc processes in "
            "bounded memory and merged on disk; a killed build resumes from its finished "
            "parts; --shard I/N builds one machine's share of the parts on shared storage "
            "(the run that finds every part merges)."
        ),
    )
    parser.add_argument("--corpus", required=True, metavar="DIR", help="a prepared corpus")
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="the run's tokenizer (default: the corpus's own)"
    )
    parser.add_argument(
        "--heldout-documents",
        type=int,
        default=DEFAULT_HELDOUT_DOCUMENTS,
        help="the run's data.heldout_documents (default %(default)s)",
    )
    parser.add_argument("--index-dir", metavar="DIR", help="the run's data.index_dir")
    parser.add_argument(
        "--passage-sentences",
        type=int,
        nargs="+",
        default=[DEFAULT_PASSAGE_SENTENCES],
        help="IR relevance passage sizes to index (default %(default)s)",
    )
    parser.add_argument(
        "--num-proc", type=int, default=None, help="processes (default: cores, <= 8)"
    )
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the indexes and say which are complete."""
    from ernie_style.pretrain.indexes import build_indexes

    if args.num_proc is not None and args.num_proc < 1:
        raise ValueError(f"--num-proc must be >= 1, got {args.num_proc}")
    if args.heldout_documents < 0:
        raise ValueError("--heldout-documents must be >= 0")
    if min(args.passage_sentences) < 1:
        raise ValueError(f"--passage-sentences must be >= 1, got {args.passage_sentences}")
    start = time.perf_counter()
    complete = build_indexes(
        args.corpus,
        args.tokenizer,
        args.heldout_documents,
        args.index_dir,
        tuple(args.passage_sentences),
        args.num_proc,
        args.shard,
    )
    seconds = time.perf_counter() - start
    for name, done in complete.items():
        print(f"index {name}: {'complete' if done else 'parts of this shard built'}")
    print(f"{sum(complete.values())} of {len(complete)} indexes complete in {seconds:.1f} s")
    return 0
