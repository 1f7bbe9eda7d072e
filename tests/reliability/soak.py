"""The kill soak: many seeded SIGKILL trials of `pretrain`, `finetune`, `prepare` and `ingest`.

    .venv/bin/python tests/reliability/soak.py [--trials 20] [--seed 0] [--out runs/soak]
        [--commands pretrain,finetune,prepare,ingest] [--fresh 1] [--keep]

Per command, `--trials` seeded trials with a mix of faults (see `PLANS`): a kill at a random
moment (of training, or since the launch), in the middle of a checkpoint write or of best/,
at the renames that install a prepared corpus, at every rename of `ingest`, and several kills
per trial. Every trial checks the outcome against an uninterrupted reference run (see
tests/reliability/kill_trials.py). Runs are forked from this process, which imports the heavy
modules once; `--fresh N` adds N pretrain and N finetune trials whose runs are fresh
`python -m ernie_style` processes. Prints a table (command | fault | trials | kills landed |
survived | data lost) and writes it to OUT/soak.json and OUT/soak.md. Exit status 1 if any
trial failed. Not a pytest module (tests/reliability/test_kill_*.py run a few trials each).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kill_ingest import ingest_trials
from kill_prepare import prepare_reference, prepare_setup, prepare_trial
from kill_runs import fork_launcher, preload, subprocess_launcher
from kill_training import TRAINING, training_trial
from kill_trials import Trial

from ernie_style.testing import ROOT

#: Fault mixes, cycled over the trials of each command (several kills = one per run).
PLANS: dict[str, list[Any]] = {
    "pretrain": [
        ["random"],
        ["checkpoint"],
        ["anytime"],
        ["random", "checkpoint"],
        ["checkpoint", "random"],
        ["checkpoint", "checkpoint", "random"],
    ],
    "finetune": [
        ["random"],
        ["checkpoint"],
        ["best"],
        ["random", "checkpoint"],
        ["anytime"],
        ["checkpoint", "best", "random"],
    ],
    "prepare": [
        ("anytime", None),
        ("building", None),
        ("replace", None),
        ("rename", (1, "before")),
        ("rename", (1, "after")),
        ("rename-replace", (1, "before")),
        ("rename-replace", (1, "after")),
        ("rename-replace", (2, "before")),
        ("rename-replace", (2, "after")),
        ("building", None),
    ],
}

#: The faults of the extra trials whose runs are fresh processes (`--fresh`).
FRESH = {"pretrain": ["random"], "finetune": ["checkpoint"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per command (20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials (0)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "soak", help="output dir")
    parser.add_argument(
        "--commands", default="pretrain,finetune,prepare,ingest", help="commands to soak"
    )
    parser.add_argument(
        "--fresh", type=int, default=1, help="extra pretrain/finetune trials in fresh processes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (runs, logs)")
    return parser.parse_args(argv)


def soak_training(
    command: str, work: Path, args: argparse.Namespace, report: Callable[[Trial], None]
) -> dict:
    """Reference + `args.trials` forked trials + `args.fresh` fresh-process trials."""
    inputs = TRAINING[command].inputs(work)
    reference = TRAINING[command].make_reference(work, inputs, fork_launcher)
    plans = PLANS[command]
    for i in range(args.trials):
        seed = args.seed * 1000 + i
        report(training_trial(command, work, inputs, reference, seed, plans[i % len(plans)]))
    for i in range(args.fresh):
        seed = args.seed * 1000 + 900 + i
        trial = training_trial(
            command, work, inputs, reference, seed, FRESH[command], launch=subprocess_launcher
        )
        trial.fault += " (fresh process)"
        report(trial)
    return reference


def soak_prepare(work: Path, args: argparse.Namespace, report: Callable[[Trial], None]) -> dict:
    """Reference + `args.trials` trials."""
    source = prepare_setup(work)
    reference = prepare_reference(work, source, fork_launcher)
    plans = PLANS["prepare"]
    for i in range(args.trials):
        fault, crash_at = plans[i % len(plans)]
        seed = args.seed * 1000 + i
        report(prepare_trial(work, source, reference, seed, fault, crash_at=crash_at))
    return reference


def soak_ingest(work: Path, args: argparse.Namespace, report: Callable[[Trial], None]) -> dict:
    """`args.trials` random kills plus every crash point (15 trials)."""
    for trial in ingest_trials(work, args.seed, args.trials, crash_points=True):
        report(trial)
    return {}


SOAKS = {
    "pretrain": functools.partial(soak_training, "pretrain"),
    "finetune": functools.partial(soak_training, "finetune"),
    "prepare": soak_prepare,
    "ingest": soak_ingest,
}


def table(trials: list[Trial]) -> list[dict[str, Any]]:
    """Rows per (command, fault), then a total per command."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for trial in trials:
        for key in ((trial.command, trial.fault), (trial.command, "all")):
            row = rows.setdefault(
                key,
                {"command": key[0], "fault": key[1], "trials": 0, "kills": 0, "kills_landed": 0}
                | {"survived": 0, "data_lost": 0, "seconds": 0.0},
            )
            row["trials"] += 1
            row["kills"] += len(trial.kills)
            row["kills_landed"] += sum(k.killed for k in trial.kills)
            row["survived"] += trial.survived
            row["data_lost"] += trial.data_lost
            row["seconds"] = round(row["seconds"] + trial.seconds, 2)
    order = list(SOAKS)
    return sorted(
        rows.values(), key=lambda r: (order.index(r["command"]), r["fault"] == "all", r["fault"])
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table in Markdown."""
    lines = [
        "| command | fault | trials | kills landed | survived | data lost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        fault = "**all**" if row["fault"] == "all" else row["fault"]
        lines.append(
            f"| {row['command']} | {fault} | {row['trials']} | "
            f"{row['kills_landed']}/{row['kills']} | {row['survived']} | {row['data_lost']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns the exit status."""
    args = parse_args(argv)
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = sorted(set(commands) - set(SOAKS))
    if unknown:
        raise SystemExit(f"--commands: unknown {unknown}; choose from {sorted(SOAKS)}")
    preload(*commands)  # sets the one-thread environment before torch is imported
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ernie-soak-"))
    trials: list[Trial] = []
    references: dict[str, Any] = {}

    def report(trial: Trial) -> None:
        trials.append(trial)
        status = "ok" if trial.survived and not trial.data_lost else "FAILED"
        landed = sum(k.killed for k in trial.kills)
        print(
            f"{trial.command:9s} {trial.fault:36s} seed {trial.seed:6d} kills {landed}/"
            f"{len(trial.kills)} {status} ({trial.seconds:.1f} s)",
            flush=True,
        )
        for problem in trial.problems:
            print(f"    {problem}", flush=True)

    for command in commands:
        root = work / command
        root.mkdir()
        references[command] = SOAKS[command](root, args, report)
    rows = table(trials)
    seconds = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed,
        "trials_per_command": args.trials,
        "seconds": seconds,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "table": rows,
        "references": references,
        "trials": [t.as_dict() for t in trials],
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(rows)
    header = f"Kill soak: seed {args.seed}, {args.trials} trials per command, {seconds} s.\n\n"
    (args.out / "soak.md").write_text(header + text, encoding="utf-8")
    print()
    print(header + text)
    failed = [t for t in trials if not t.survived or t.data_lost]
    if args.keep or failed:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
