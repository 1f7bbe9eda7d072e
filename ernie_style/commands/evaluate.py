"""`ernie-style evaluate`: re-score a saved task model on its task's data.

ernie-style evaluate --model runs/finetune/tasks/sentiment --task-config FILE.yaml [--split dev]

`--model` is a task export of `ernie-style finetune` (a stock transformers model directory with
`ernie_style_task.json`); `--task-config` is a fine-tuning config naming that task's data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    parser = subparsers.add_parser("evaluate", help="re-score a fine-tuned task model")
    parser.add_argument("--model", required=True, help="task directory written by finetune")
    parser.add_argument("--task-config", required=True, help="fine-tuning YAML with the task")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument(
        "--split", action="append", help="split(s) to score (default: dev and test)"
    )
    parser.add_argument("--predictions", type=Path, help="write SPLIT.jsonl predictions here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the export, read and encode the task's data, print the metrics (JSON)."""
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.export import load_exported
    from ernie_style.finetune.scoring import evaluate_export

    model, info = load_exported(Path(args.model))
    overrides = [*args.overrides]
    if not any(o.startswith("encoder=") for o in overrides):
        overrides.append(f"encoder={args.model}")
    config = load_config(FinetuneConfig, args.task_config, overrides)
    results = evaluate_export(model, info, config, Path(args.model), args.split, args.predictions)
    print(json.dumps(results, indent=2))
    return 0
