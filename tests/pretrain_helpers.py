"""Helpers for tests that run `ernie-style pretrain`: a small prepared corpus, tiny configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"


def make_small_corpus(root: Path) -> Path:
    """20 sample articles (first 6 paragraphs each), regex-annotated, with a 1500 tokenizer."""
    subset = root / "subset.jsonl"
    with SAMPLE.open(encoding="utf-8") as f, subset.open("w", encoding="utf-8") as out:
        for _, line in zip(range(20), f, strict=False):
            row = json.loads(line)
            row["text"] = "\n\n".join(row["text"].split("\n\n")[:6])
            out.write(json.dumps(row) + "\n")
    corpus = root / "prepared"
    cmd = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(subset)]
    cmd += ["--output", str(corpus), "--annotator", "none", "--train-tokenizer", "1500"]
    subprocess.run(cmd, check=True, capture_output=True, env=child_env())
    return corpus


def child_env() -> dict[str, str]:
    """Environment for child processes: offline, quiet, deterministic threads."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        # DeepSpeed compiles a small op on first use (~20 s): keep it between runs.
        TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"),
    )
    return env


def write_config(path: Path, corpus: Path, output_dir: Path, **changes) -> Path:
    """A tiny run: 3 tasks over 3 stages, 8 examples per step, sequence 64."""
    config = {
        "output_dir": str(output_dir),
        "seed": 11,
        "batch_size": 8,
        "precision": "auto",
        "model": {"preset": "tiny"},
        "data": {"corpus": str(corpus), "max_seq_len": 64, "heldout_documents": 3},
        "tasks": {
            "knowledge_masking": {"budget": 12},
            "capitalization": {"budget": 8},
            "sentence_distance": {"budget": 6},
        },
        "optim": {"lr": 2.0e-3, "warmup_steps": 3},
        "checkpoint_every": 5,
        "keep_checkpoints": 10,
        "eval_every": 10,
        "log_every": 5,
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def pretrain_cmd(config: Path, *extra: str) -> list[str]:
    """The pretrain command line for a config."""
    return [sys.executable, "-m", "ernie_style", "pretrain", "--config", str(config), *extra]


def step_losses(run_dir: Path) -> dict[tuple[int, str], float]:
    """(step, task) -> loss from train_loss.csv; a step logged twice keeps its last value."""
    import csv

    out = {}
    with (run_dir / "train_loss.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[(int(row["step"]), row["task"])] = float(row["loss"])
    return out
