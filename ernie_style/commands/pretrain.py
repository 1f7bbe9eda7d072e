"""`ernie-style pretrain`: continual multi-task pretraining from a YAML config.

ernie-style pretrain --config configs/pretrain/demo_cpu.yaml output_dir=runs/x [--dry-run]
accelerate launch -m ernie_style pretrain --config ... --resume auto
"""

from __future__ import annotations

import argparse
import os

from ernie_style.config import dump_yaml, load_config
from ernie_style.pretrain_config import PretrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` subcommand."""
    parser = subparsers.add_parser("pretrain", help="continual multi-task pretraining")
    parser.add_argument("--config", required=True, help="YAML run config (configs/pretrain/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. seed=3")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and stage plan, exit"
    )
    parser.add_argument(
        "--resume", help="'auto' (newest complete checkpoint in output_dir) or a checkpoint dir"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate, then dry-run or train."""
    config = load_config(PretrainConfig, args.config, args.overrides)
    schedule = config.build_schedule()
    from ernie_style.trainer import check_batch_divides

    check_batch_divides(config, int(os.environ.get("WORLD_SIZE", "1")))
    if args.dry_run:
        print(dump_yaml(config))
        print(schedule.plan_table())
        return 0
    from ernie_style.run_lock import locked_run
    from ernie_style.trainer import PretrainTrainer

    # One run per output_dir (rank 0 holds the lock; a killed run's lock goes with it).
    with locked_run(config.output_dir, "pretrain", name_directory=True):
        trainer = PretrainTrainer(config, resume=args.resume)
        run_dir = trainer.train()
        if trainer.accelerator.is_main_process:
            steps = trainer.state.schedule.total_steps
            print(f"done: {steps} steps; run directory {run_dir}")
        trainer.accelerator.end_training()
    return 0
