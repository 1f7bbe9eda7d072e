"""`ernie-style tasks`: list the registered pretraining tasks."""

from __future__ import annotations

import argparse

from ernie_style.registry import registered_tasks


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tasks` subcommand."""
    parser = subparsers.add_parser("tasks", help="list the registered pretraining tasks")
    parser.add_argument(
        "--max-seq-len", type=int, default=128, help="sequence length the label counts assume"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print name, task id, level, number of labels and description of every task."""
    rows = []
    for name, cls in registered_tasks().items():
        task = cls(tokenizer=_VocabOnly(), max_seq_len=args.max_seq_len)
        labels = str(task.num_labels) if task.num_labels else "vocab size"
        rows.append((name, str(cls.task_id), cls.level, labels, cls.description))
    header = ("name", "id", "level", "labels", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4])
    return 0


class _VocabOnly:
    """Stand-in tokenizer for listing: a vocabulary-sized label space shows as 'vocab size'."""

    def __len__(self) -> int:
        return 0
