"""`ernie-style export`: turn a run's checkpoint into a release stock transformers loads."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser("export", help="write a release of a pretraining run")
    parser.add_argument("--run", required=True, help="the run's output_dir")
    parser.add_argument("--checkpoint", help="step-N or a checkpoint path (default: newest)")
    parser.add_argument("--output", required=True, help="release directory to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and say where."""
    from ernie_style.pretrain.export import export_release

    path = export_release(args.run, args.output, args.checkpoint)
    print(f"release written to {path}")
    return 0
