"""`ernie-style merge-shards`: join `prepare --shard I/N` outputs into one prepared corpus."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `merge-shards` subcommand."""
    from ernie_style.commands.prepare import add_index_argument, add_tokenizer_arguments

    parser = subparsers.add_parser(
        "merge-shards",
        help="join the outputs of `prepare --shard I/N` into one prepared corpus",
        description=(
            "Check that the shard outputs come from the same inputs and settings and that "
            "every shard 0..N-1 is there once, concatenate them, add up their counters and "
            "optionally train the tokenizer on the merged text."
        ),
    )
    parser.add_argument("--input", required=True, nargs="+", action="extend", metavar="DIR")
    parser.add_argument("--output", required=True, metavar="DIR")
    add_tokenizer_arguments(parser)
    add_index_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge (or reuse an up-to-date merge)."""
    from ernie_style.commands.prepare import index_prepared, prepare_lock_path
    from ernie_style.corpus.merge_shards import merge_shards
    from ernie_style.corpus.prepare import PrepareConfig
    from ernie_style.corpus.prepared import check_output_dir
    from ernie_style.run_lock import locked_run

    config = PrepareConfig(
        tokenizer_vocab_size=args.train_tokenizer,
        cased=args.cased,
        tokenizer_min_frequency=args.tokenizer_min_frequency,
    )
    output = Path(args.output)
    check_output_dir(output)
    with locked_run(output, "merge-shards", what="--output", path=prepare_lock_path(output)):
        merge_shards(args.input, output, config)
        index_prepared(output, args.no_index)
    return 0
