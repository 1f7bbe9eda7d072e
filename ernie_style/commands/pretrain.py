"""`ernie-style pretrain`: continual multi-task pretraining from a YAML config.

ernie-style pretrain --config configs/pretrain/demo_cpu.yaml output_dir=runs/x [--dry-run]
accelerate launch -m ernie_style pretrain --config ... --resume auto
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ernie_style.pretrain.config import PretrainConfig
    from ernie_style.pretrain.schedule import ContinualSchedule


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


def _resume_plan(config: PretrainConfig, schedule: ContinualSchedule, resume: str) -> None:
    """Merge the schedule history of the checkpoint or release `--resume` names into
    `schedule`, as the run will (stages already started keep the allocation they ran with)."""
    from ernie_style.pretrain.export import RELEASE_MARKER
    from ernie_style.train.checkpoint import resolve_resume

    root = Path(config.output_dir) / "checkpoints"
    source = resolve_resume(resume, root, print, "checkpoint or release")
    if source is None:
        return
    if (source / RELEASE_MARKER).is_file():
        saved = json.loads((source / RELEASE_MARKER).read_text(encoding="utf-8"))["schedule"]
    else:
        state = json.loads((source / "trainer_state.json").read_text(encoding="utf-8"))
        saved = state["schedule"]
    schedule.load_state_dict(saved)
    started = min(schedule.stage + 1, len(schedule.stages))
    print(
        f"resuming from {source} at step {schedule.step} of {schedule.total_steps}: stages "
        f"1-{started} as they ran, later stages from this config"
    )


def run(args: argparse.Namespace) -> int:
    """Validate, then dry-run or train."""
    from ernie_style.config import dump_yaml, load_config
    from ernie_style.pretrain.config import PretrainConfig

    config = load_config(PretrainConfig, args.config, args.overrides)
    schedule = config.build_schedule()
    from ernie_style.pretrain.trainer import check_batch_divides

    check_batch_divides(config, int(os.environ.get("WORLD_SIZE", "1")))
    if args.dry_run:
        from ernie_style.precision import describe_for_this_machine

        print(dump_yaml(config))
        if config.describe_defaults():
            print(config.describe_defaults())
        if config.describe_left_out():
            print(config.describe_left_out())
        print(describe_for_this_machine(config.precision))
        if args.resume:
            _resume_plan(config, schedule, args.resume)
        print(schedule.plan_table())
        return 0
    from ernie_style.pretrain.trainer import PretrainTrainer
    from ernie_style.run_lock import locked_run

    # One run per output_dir (rank 0 holds the lock; a killed run's lock goes with it).
    with locked_run(config.output_dir, "pretrain", name_directory=True):
        trainer = PretrainTrainer(config, resume=args.resume)
        run_dir = trainer.train()
        if trainer.accelerator.is_main_process:
            steps = trainer.state.schedule.total_steps
            print(f"done: {steps} steps; run directory {run_dir}")
        trainer.accelerator.end_training()
    return 0
