"""`ernie-style eval-suite`: fine-tune one encoder on every task of a suite, several seeds.

ernie-style eval-suite --encoder DIR|preset:NAME|random:DIR --suite configs/suites/cpu.yaml \
    --output runs/suite/NAME [--seeds N] [--tokenizer DIR]
CUDA_VISIBLE_DEVICES=1 ernie-style eval-suite ...   # a second worker on the same --output
ernie-style eval-suite --compare OUT_A OUT_B ... --output DIR [--labels A B ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval-suite` subcommand."""
    parser = subparsers.add_parser(
        "eval-suite",
        help="fine-tune an encoder on a suite of tasks, several seeds; mean ± std table",
        description="Fine-tune an encoder on each task of a suite (and jointly, if the suite "
        "says so) for several seeds; writes results.md/json/png. Resumable: rerun the same "
        "command after an interruption. Several workers (one per GPU or core) may run the same "
        "command on one --output: each takes the runs no other worker holds. "
        "--compare tabulates several such outputs side by side.",
    )
    parser.add_argument(
        "--encoder",
        help="encoder dir, preset:NAME (random init; needs --tokenizer) or random:DIR "
        "(DIR's architecture and tokenizer, random init)",
    )
    parser.add_argument("--suite", help="suite YAML (configs/suites/)")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    parser.add_argument("--seeds", type=int, help="number of fine-tuning seeds (default: suite's)")
    parser.add_argument("--tokenizer", help="tokenizer dir (presets; overrides the encoder's)")
    parser.add_argument(
        "--launcher",
        default="",
        help="run each fine-tuning run under this command instead of python, e.g. "
        "'accelerate launch --num_processes 8' (several GPUs per run)",
    )
    parser.add_argument("--compare", nargs="+", type=Path, help="eval-suite outputs to compare")
    parser.add_argument("--labels", nargs="+", help="names of the compared outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the suite (or compare finished ones) and print the table."""
    from ernie_style.finetune import suite_report

    if args.compare:
        labels = args.labels or [path.name for path in args.compare]
        if len(labels) != len(args.compare):
            raise SystemExit("--labels: give one label per --compare folder")
        missing = [str(p) for p in args.compare if not (p / "results.json").is_file()]
        if missing:
            raise SystemExit(f"--compare: no results.json in {', '.join(missing)}")
        suite_report.compare(args.compare, labels, args.output)
        print((args.output / "comparison.md").read_text(encoding="utf-8"))
        return 0
    if not args.encoder or not args.suite:
        raise SystemExit("eval-suite: --encoder and --suite are required (or --compare)")
    from ernie_style.finetune.suite import load_suite, run_suite, unfinished_runs
    from ernie_style.run_lock import oserrors_name

    suite = load_suite(args.suite)
    seeds = list(range(args.seeds or suite.seeds))
    with oserrors_name(args.output):  # workers share --output: claims per run, no lock on it
        run_suite(
            suite,
            args.encoder,
            args.output,
            seeds,
            args.tokenizer,
            suite_path=args.suite,
            launcher=args.launcher,
        )
    pending = unfinished_runs(args.output, suite, seeds)
    if pending:
        print(
            f"eval-suite: this worker is done; {len(pending)} run(s) not finished: "
            + "; ".join(pending)
            + ". The worker that finishes the last run writes the results (or rerun this "
            "command once no worker is left)."
        )
        return 0
    suite_report.summarise(args.output, suite, seeds, args.encoder)
    print((args.output / "results.md").read_text(encoding="utf-8"))
    return 0
