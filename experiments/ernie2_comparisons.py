"""ERNIE 2.0's central comparisons at small scale, one resumable command.

Four pretraining variants with equal compute (same total steps, batch, model size, corpus):

- `mlm_only`: knowledge masking at the basic (word) level only, every step (BERT-style);
- `continual`: the seven ERNIE 2.0 tasks introduced one per stage, earlier ones kept training
  (auto allocation, as `configs/pretrain/demo_cpu.yaml` scaled to the step budget);
- `multitask`: the same tasks and per-task budgets, all from the first step (one stage);
- `sequential`: the same tasks one after another, each only in its own stage (no replay).

For every variant and pretraining seed: pretrain, export a release, read the forgetting table
(held-out loss/accuracy of each pretraining task at the end), then fine-tune the release on the
shipped downstream sets (`configs/finetune/demo_multitask.yaml`) for each fine-tuning seed.
Everything lands under `--out` (default runs/experiments/ernie2); a finished piece (release,
fine-tuning run) is reused when the command is run again. `--report` writes `summary.json`
and the plots, which docs/results.md quotes.

    .venv/bin/python experiments/ernie2_comparisons.py --preset small --steps 600 \\
        --seeds 0 --finetune-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
TASKS = (
    "knowledge_masking",
    "capitalization",
    "token_document_relation",
    "sentence_reordering",
    "sentence_distance",
    "discourse_relation",
    "ir_relevance",
)
VARIANTS = ("mlm_only", "continual", "multitask", "sequential")


def budgets(steps: int) -> dict[str, int]:
    """Per-task budgets in the demo's proportions (knowledge masking 4/10, others 1/10 each)."""
    unit = steps // 10
    out = {task: unit for task in TASKS}
    out["knowledge_masking"] = steps - unit * (len(TASKS) - 1)
    return out


def pretrain_config(variant: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """The pretraining config of one variant and seed."""
    base = {
        "output_dir": str(out),
        "seed": seed,
        "batch_size": 32,
        "precision": "auto",  # bf16 where native (the recorded runs: a bf16-native CPU), else fp32
        "model": {"preset": args.preset},
        "data": {
            "corpus": str(args.corpus),
            "max_seq_len": 128,
            "heldout_documents": args.heldout_documents,
        },
        "optim": {"lr": args.lr, "warmup_steps": args.warmup_steps},
        "checkpoint_every": 200,
        "keep_checkpoints": 1,
        "eval_every": max(args.steps // 12, 10),
        "log_every": 20,
    }
    knowledge = {"level_weights": {"basic": 1.0, "phrase": 1.0, "entity": 1.0}}
    plan = budgets(args.steps)
    if variant == "mlm_only":
        base["tasks"] = {
            "knowledge_masking": {
                "budget": args.steps,
                "options": {"level_weights": {"basic": 1.0}},
            }
        }
    elif variant == "continual":
        base["tasks"] = {t: {"budget": plan[t]} for t in TASKS}
        base["tasks"]["knowledge_masking"]["options"] = knowledge
    elif variant == "multitask":
        base["tasks"] = {t: {"allocation": [plan[t]]} for t in TASKS}
        base["tasks"]["knowledge_masking"]["options"] = knowledge
    else:  # sequential: task i only in stage i
        base["tasks"] = {
            t: {"allocation": [plan[t] if s == i else 0 for s in range(len(TASKS))]}
            for i, t in enumerate(TASKS)
        }
        base["tasks"]["knowledge_masking"]["options"] = knowledge
    return base


def cli(*args: str, log: Path) -> None:
    """Run `python -m ernie_style ARGS`, appending its output to `log`; fail loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "ernie_style", *args],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        sys.exit(f"ernie-style {' '.join(args)} failed; see {log}")


def ensure_corpus(path: Path) -> None:
    """Prepare the bundled sample (spaCy annotation, 8k tokenizer) unless already there."""
    if not (path / "tokenizer").is_dir():
        cli(
            "prepare", "--input", str(SAMPLE), "--output", str(path),
            "--train-tokenizer", "8000", "--num-proc", "2", log=path.parent / "prepare.log",
        )  # fmt: skip


def forgetting_table(run: Path) -> dict[str, dict[str, float]]:
    """The last held-out evaluation of every task the run ever evaluated."""
    last: dict[str, dict[str, float]] = {}
    with (run / "heldout.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            last[row["task"]] = {
                "step": int(row["step"]),
                "loss": float(row["loss"]),
                "accuracy": float(row["accuracy"]),
            }
    return last


def pretrain(variant: str, seed: int, args: argparse.Namespace) -> Path:
    """Pretrain and export one variant/seed (reused when its release exists)."""
    root = args.out / variant / f"seed-{seed}"
    release = root / "release"
    if (release / "config.json").is_file():
        return root
    config = root / "pretrain.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    data = pretrain_config(variant, seed, args, root / "pretrain")
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    cli("pretrain", "--config", str(config), "--resume", "auto", log=root / "pretrain.log")
    cli(
        "export", "--run", str(root / "pretrain"), "--output", str(release),
        log=root / "pretrain.log",
    )  # fmt: skip
    timing = {"pretrain_seconds": time.perf_counter() - started}
    (root / "timing.json").write_text(json.dumps(timing) + "\n", encoding="utf-8")
    return root


def finetune(root: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune a release on the shipped sets (reused when its metrics exist)."""
    run = root / f"finetune-seed-{seed}"
    metrics = run / "metrics.json"
    if not metrics.is_file():
        cli(
            "finetune", "--config", str(ROOT / "configs/finetune/demo_multitask.yaml"),
            f"encoder={root / 'release'}", f"output_dir={run}", f"seed={seed}",
            f"epochs={args.finetune_epochs}", f"optim.lr={args.finetune_lr}", "--resume", "auto",
            log=root / f"finetune-seed-{seed}.log",
        )  # fmt: skip
    return json.loads(metrics.read_text(encoding="utf-8"))


def main() -> None:
    """Run (or resume) every piece, then summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "experiments" / "ernie2")
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "demo" / "corpus")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=3e-4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--heldout-documents", type=int, default=6)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument(
        "--pretrain-only",
        action="store_true",
        help="pretrain and export only (evaluate the releases with `ernie-style eval-suite`)",
    )
    args = parser.parse_args()
    ensure_corpus(args.corpus)
    summary: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    for variant in args.variants:
        for seed in args.seeds:
            root = pretrain(variant, seed, args)
            if args.pretrain_only:
                print(f"{variant} seed {seed}: pretrained, release in {root / 'release'}")
                continue
            entry = {
                "forgetting": forgetting_table(root / "pretrain"),
                "timing": json.loads((root / "timing.json").read_text(encoding="utf-8")),
                "finetune": {s: finetune(root, s, args) for s in args.finetune_seeds},
            }
            summary["runs"][f"{variant}/seed-{seed}"] = entry
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            print(f"{variant} seed {seed}: done", flush=True)
    if args.pretrain_only:
        return
    from report import write_report

    write_report(args.out / "summary.json", args.out)


if __name__ == "__main__":
    main()
