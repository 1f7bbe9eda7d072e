"""`ernie-style examples`: build every task's examples from a prepared corpus and report what
they look like (counts, lengths, label distribution, decoded samples); the report itself is
`ernie_style.pretrain.example_report` (imported when the command runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `examples` subcommand."""
    parser = subparsers.add_parser(
        "examples", help="build task examples from a prepared corpus and summarise them"
    )
    parser.add_argument("--corpus", required=True, help="output directory of `prepare`")
    parser.add_argument(
        "--tokenizer", help="Hugging Face tokenizer directory (default: CORPUS/tokenizer)"
    )
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or 'all'")
    parser.add_argument("--max-seq-len", type=int, default=128, help="tokens per example")
    parser.add_argument("--max-documents", type=int, help="use only the first N documents")
    parser.add_argument("--show", type=int, default=1, help="decoded examples to print per task")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build and summarise the examples."""
    from ernie_style.pretrain.example_report import report

    return report(args)
