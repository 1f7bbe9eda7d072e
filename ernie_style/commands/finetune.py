"""`ernie-style finetune`: MT-DNN-style multi-task fine-tuning of a released encoder.

ernie-style finetune --config configs/finetune/demo_multitask.yaml [key=value ...] [--dry-run]
accelerate launch -m ernie_style finetune --config ... --resume auto
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `finetune` subcommand."""
    parser = subparsers.add_parser("finetune", help="multi-task fine-tuning (MT-DNN style)")
    parser.add_argument("--config", required=True, help="YAML run config (configs/finetune/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. lr=3e-5")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and task table, exit"
    )
    parser.add_argument(
        "--resume", help="'auto' (newest complete checkpoint in output_dir) or a checkpoint dir"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate, then dry-run or train."""
    from ernie_style.config import dump_yaml, load_config
    from ernie_style.finetune.config import FinetuneConfig

    config = load_config(FinetuneConfig, args.config, args.overrides)
    if args.dry_run:
        from ernie_style.precision import describe_for_this_machine

        print(dump_yaml(config))
        print(describe_for_this_machine(config.precision))
        for task in config.tasks:
            size = config.batch_size_of(task)
            print(f"{task.name:24s} {task.type:22s} batch {size:4d}  metrics {task.metrics}")
        return 0
    from ernie_style.finetune.trainer import FinetuneTrainer
    from ernie_style.run_lock import locked_run

    # One run per output_dir (rank 0 holds the lock; a killed run's lock goes with it).
    with locked_run(config.output_dir, "finetune", name_directory=True):
        trainer = FinetuneTrainer(config, resume=args.resume)
        trainer.train()
        if trainer.accelerator.is_main_process:
            print(f"done: {trainer.total_steps} steps; results in {config.output_dir}")
        trainer.accelerator.end_training()
    return 0
