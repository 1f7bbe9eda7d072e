"""`ernie-style tasks`: list the registered pretraining tasks."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tasks` subcommand."""
    parser = subparsers.add_parser("tasks", help="list the registered pretraining tasks")
    parser.add_argument(
        "--max-seq-len", type=int, default=128, help="sequence length the label counts assume"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print name, task id, level, number of labels and description of every task."""
    from ernie_style.pretrain.registry import registered_tasks
    from ernie_style.tokenizer import train_wordpiece

    tasks = registered_tasks()
    # Tasks need a tokenizer to exist; a throwaway one trained on their descriptions will do.
    # A label space as large as its vocabulary (masked LM) is shown as "vocab size".
    tokenizer = train_wordpiece([c.description for c in tasks.values()], 64, min_frequency=1)
    rows = []
    for name, cls in tasks.items():
        task = cls(tokenizer=tokenizer, max_seq_len=args.max_seq_len)
        labels = "vocab size" if task.num_labels == len(tokenizer) else str(task.num_labels)
        rows.append((name, str(cls.task_id), cls.level, labels, cls.description))
    header = ("name", "id", "level", "labels", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4])
    return 0
