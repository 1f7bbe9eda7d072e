"""Pretraining facts of `suite_comparison.sh` runs, as markdown for docs/results.md.

    .venv/bin/python experiments/pretrain_report.py runs/experiments/real_tiny

For every variant under the folder: steps, tokens seen, wall time, and the last held-out loss and
accuracy of every pretraining task (the forgetting table); copies each run's held-out loss plot.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ernie2_comparisons import TASKS, forgetting_table


def final_state(run: Path) -> dict:
    """trainer_state.json of the run's newest checkpoint."""
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    return json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))


def main() -> None:
    """Print the tables; copy the plots next to `--plots`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--plots", type=Path, help="copy each run's heldout_loss.png here")
    args = parser.parse_args()
    variants = sorted(p.parents[1].name for p in args.folder.glob("*/seed-0/release"))
    print("| variant | steps | tokens seen | pretraining wall time |")
    print("|---|---|---|---|")
    for variant in variants:
        root = args.folder / variant / "seed-0"
        state = final_state(root / "pretrain")
        timing = root / "timing.json"
        seconds = json.loads(timing.read_text())["pretrain_seconds"] if timing.is_file() else None
        wall = f"{seconds / 60:.0f} min" if seconds else "-"
        print(f"| {variant} | {state['step']:,} | {state['tokens_seen']:,} | {wall} |")
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            source = root / "pretrain" / "heldout_loss.png"
            if source.is_file():
                shutil.copy(source, args.plots / f"{args.folder.name}_{variant}_heldout.png")
    print()
    print("| variant | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for variant in variants:
        last = forgetting_table(args.folder / variant / "seed-0" / "pretrain")
        cells = [
            f"{last[t]['loss']:.3f} ({last[t]['accuracy']:.2f})" if t in last else "-"
            for t in TASKS
        ]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
