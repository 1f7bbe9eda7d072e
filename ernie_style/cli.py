"""The `ernie-style` command line: one subcommand per module in `ernie_style.commands`.

Known failures print one line, `ernie-style: error: ...`, naming the path involved (no
traceback). Exit codes:

    0  success
    1  I/O failure while working: disk full, file too large, read-only filesystem, a checkpoint
       that could not be written (the previous one stays intact), any other OSError
    2  usage or invalid input: bad arguments or config values, a missing input file, an input
       or output path without permission
    3  the output directory is locked by another running ernie-style command
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

from ernie_style import __version__
from ernie_style.run_lock import RunLockedError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = (
    "tasks",
    "prepare",
    "merge-shards",
    "examples",
    "index",
    "pretrain",
    "export",
    "fill-mask",
    "finetune",
    "eval-suite",
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


#: Exit codes (see the module docstring).
EXIT_IO, EXIT_USAGE, EXIT_LOCKED = 1, 2, 3
_USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, PermissionError)


def describe_error(error: BaseException) -> str:
    """The message of a known error: an OSError as `PATH: reason`, a KeyError unquoted."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        where = str(error.filename)
        if error.filename2 is not None:
            where += f" -> {error.filename2}"
        return f"{where}: {error.strerror}"
    return str(error) or type(error).__name__


def exit_code(error: BaseException) -> int:
    """The exit code of a known error."""
    if isinstance(error, RunLockedError):
        return EXIT_LOCKED
    return EXIT_USAGE if isinstance(error, _USAGE_ERRORS) else EXIT_IO


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Known errors print one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (*_USAGE_ERRORS, OSError, RunLockedError) as error:
        message, code = describe_error(error), exit_code(error)
    # The error and its frames are gone now: let what they held (progress bars) print its
    # last output first, so the error is the last line on stderr.
    gc.collect()
    sys.stderr.flush()
    print(f"ernie-style: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
