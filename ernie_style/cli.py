"""The `ernie-style` command line: one subcommand per module in `ernie_style.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ernie_style import __version__

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = (
    "tasks",
    "prepare",
    "examples",
    "pretrain",
    "export",
    "finetune",
    "evaluate",
    "select",
    "ingest",
    "al-simulate",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ernie-style",
        description="ERNIE 2.0-style continual multi-task pretraining of transformer encoders.",
    )
    parser.add_argument("--version", action="version", version=f"ernie-style {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"ernie_style.commands.{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Known user errors print one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError, PermissionError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ernie-style: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
