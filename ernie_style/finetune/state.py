"""Fine-tuning run state on disk besides the engine's checkpoints: the best model so far.

Checkpoints (`output_dir/checkpoints/step-N/`: weights, optimizer state by parameter name,
balancer, sampler positions, step, evaluation history, best score, RNG state, config) are
written and read by the shared engine (`ernie_style.train.engine`), the fine-tuning trainer
adding its own part (`FinetuneTrainer.checkpoint_state`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file

from ernie_style.fileio import atomic_dir, sweep_stale_dirs

BEST_DIR = "best"


def save_best(run_dir: Path, weights: dict[str, Any], best: dict[str, Any]) -> None:
    """Write the best model's weights and score to `run_dir/best/`, built aside and swapped in
    (`fileio.atomic_dir`), so a crash leaves the previous best model or the new one."""
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    try:
        with atomic_dir(run_dir / BEST_DIR) as tmp:
            save_file(weights, str(tmp / "model.safetensors"))
            (tmp / "best.json").write_text(json.dumps(best) + "\n", encoding="utf-8")
    except SafetensorError as error:  # a full disk: the temp copy is gone, best/ untouched
        raise OSError(f"could not write {run_dir / BEST_DIR}: {error}") from error


def recover_best(run_dir: Path) -> None:
    """Clean up after a `save_best` that was killed: remove its temp copy; if it died with the
    previous copy renamed aside and no `best/`, put that copy back. Copies of processes still
    running are left alone."""
    sweep_stale_dirs(run_dir / BEST_DIR)
