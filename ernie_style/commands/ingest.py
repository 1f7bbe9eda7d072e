"""`ernie-style ingest`: merge an annotated batch into the labeled set, shrink the pool.

ernie-style ingest --batch annotated.jsonl --labeled LABELED_DIR --tasks ner,pos \\
    [--config FINETUNE.yaml] [--pool POOL.jsonl]

Every line's `labels` is checked against the tasks' label lists (from `--config`, else from the
run directory that selected the batch, named in the lines' `selection.model`); all bad lines are
reported with their line numbers and then nothing is ingested. New labels are appended to
`LABELED_DIR/TASK.jsonl` (an id already there with the same label is skipped, with a different
label it is an error), the ids are removed from `--pool`, and `LABELED_DIR/loop_state.json`
records the round. Ingesting the same batch again changes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ernie_style.finetune.config import FinetuneConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ingest` subcommand."""
    parser = subparsers.add_parser("ingest", help="active learning: add an annotated batch")
    parser.add_argument("--batch", type=Path, required=True, help="annotated batch (JSONL)")
    parser.add_argument("--labeled", type=Path, required=True, help="labeled-set directory")
    parser.add_argument("--tasks", required=True, help="comma-separated tasks to ingest")
    parser.add_argument("--config", type=Path, help="fine-tuning YAML with the tasks' labels")
    parser.add_argument("--pool", type=Path, help="pool file to remove the ingested ids from")
    parser.set_defaults(func=run)


def _selecting_model(batch: Path) -> str | None:
    """The run directory named in the batch lines' `selection.model` (first one found)."""
    if not batch.is_file():
        raise FileNotFoundError(f"--batch {batch}: no such file")
    for raw in batch.read_text(encoding="utf-8-sig").splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        model = line.get("selection", {}).get("model") if isinstance(line, dict) else None
        if isinstance(model, str) and model:
            return model
    return None


def _config(args: argparse.Namespace) -> FinetuneConfig:
    if args.config is not None:
        from ernie_style.config import load_config
        from ernie_style.finetune.config import FinetuneConfig

        return load_config(FinetuneConfig, args.config)
    model = _selecting_model(args.batch)
    if model is None:
        raise ValueError(
            "--config: required (the batch does not name the run that selected it, whose "
            "config would give the label lists)"
        )
    from ernie_style.finetune.loading import read_run_config

    return read_run_config(model)


def run(args: argparse.Namespace) -> int:
    """Validate and merge the batch; print what changed."""
    from ernie_style.active_learning.loop import ingest
    from ernie_style.active_learning.pool import TaskSpec
    from ernie_style.finetune.loading import task_labels
    from ernie_style.run_lock import locked_run

    names = [x.strip() for x in args.tasks.split(",") if x.strip()]
    if not names:
        raise ValueError("--tasks: name at least one task")
    config = _config(args)
    known = [t.name for t in config.tasks]
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ValueError(f"--tasks: {unknown} not in the config; its tasks are {known}")
    specs = {}
    for name in names:
        section = config.task(name)
        specs[name] = TaskSpec.of(section, config, task_labels(section, config.spacy_model))
    if not args.batch.is_file():
        raise FileNotFoundError(f"--batch {args.batch}: no such file")
    with locked_run(args.labeled, "ingest", what="--labeled"):
        report = ingest(args.batch, args.labeled, specs, args.pool)
    added = ", ".join(f"{task} +{n}" for task, n in report.added.items())
    rounds = ", ".join(map(str, sorted(set(report.rounds)))) or "none (nothing new)"
    print(
        f"ingested {args.batch}: {added}; {report.already_labeled} already labelled; "
        f"{report.removed_from_pool} removed from the pool; round(s) {rounds}"
    )
    return 0
