"""Pool scoring throughput: our EC scoring vs plain transformers inference, same run.

A `small` encoder (hidden 256, 4 layers) is fine-tuned briefly on the shipped active-learning
seed set (WNUT-16 tweets: gold NER + silver POS, two token tasks) and exported per task. Then,
over the 360-tweet pool, batch 32, 2 threads, both sides in the precision `auto` picks on this
machine (bf16 autocast where the CPU runs bf16 natively, fp32 where it is emulated):

- (a) `score_pool(method="ec")`: pool encoding per task, batched forward passes, per-word entropy
  confidences and readable pre-annotations for both tasks;
- (b) plain transformers: each task's stock `AutoModelForTokenClassification` export run over
  the pool tokenized with the same tokenizer (`is_split_into_words`, padded per batch), logits
  only.

Printed: example-task pairs per second of each and the ratio (a)/(b) (target >= 1.0).

    .venv/bin/python bench/al_scoring.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _results import record
from _timing import ForeignLoad, precision_header

from ernie_style.precision import autocast

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "active_learning" / "wnut16"
BATCH = 32


def train_model(workdir: Path) -> object:
    """A briefly fine-tuned two-task model (returns the trainer)."""
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.trainer import FinetuneTrainer
    from ernie_style.testing.finetune import make_encoder_dir

    sizes = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
    encoder = make_encoder_dir(workdir / "encoder", vocab_size=8000, **sizes)
    config = yaml.safe_load((ROOT / "configs" / "active_learning" / "wnut16_pos.yaml").read_text())
    config |= {"encoder": str(encoder), "epochs": 1, "output_dir": str(workdir / "run")}
    for task in config["tasks"]:
        task["data"] = {k: str(ROOT / v) for k, v in task["data"].items()}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    trainer = FinetuneTrainer(load_config(FinetuneConfig, path, []))
    trainer.train()
    return trainer


def time_ours(trainer: object) -> tuple[float, int]:
    """(seconds, example-task pairs) of encoding + EC scoring the pool."""
    from ernie_style.active_learning.pool import encode_pool, read_pool
    from ernie_style.active_learning.scoring import score_pool

    pool = read_pool(EXAMPLE / "pool.jsonl")
    with ForeignLoad() as load:
        start = time.perf_counter()
        encoded = {
            task.name: encode_pool(pool, task, trainer.config, trainer.tokenizer)
            for task in trainer.config.tasks
        }
        scores = score_pool(
            trainer.unwrapped, trainer.tasks, encoded, method="ec", batch_size=BATCH, progress=False
        )
        seconds = time.perf_counter() - start
    print(f"  (a) foreign load {load.cores if load.cores is not None else float('nan'):.2f}")
    return seconds, scores.confidences.size


def time_stock(trainer: object, choice: Any) -> tuple[float, int]:
    """(seconds, example-task pairs) of stock token-classification inference per task."""
    from transformers import AutoModelForTokenClassification

    from ernie_style.active_learning.pool import read_pool

    pool = read_pool(EXAMPLE / "pool.jsonl")
    words = [record.fields["tokens"] for record in pool.records]
    models = [
        AutoModelForTokenClassification.from_pretrained(
            str(trainer.run_dir / "tasks" / task.name), local_files_only=True
        ).eval()
        for task in trainer.config.tasks
    ]
    tokenizer = trainer.tokenizer
    with ForeignLoad() as load:
        start = time.perf_counter()
        with torch.no_grad(), autocast(choice, torch.device("cpu")):
            for model in models:
                for i in range(0, len(words), BATCH):
                    inputs = tokenizer(
                        words[i : i + BATCH],
                        is_split_into_words=True,
                        truncation=True,
                        max_length=128,
                        padding=True,
                        return_tensors="pt",
                    )
                    model(**inputs).logits.float()
        seconds = time.perf_counter() - start
    print(f"  (b) foreign load {load.cores if load.cores is not None else float('nan'):.2f}")
    return seconds, len(words) * len(models)


def main() -> None:
    """Train once, time both, print the ratio."""
    torch.set_num_threads(2)
    choice, header = precision_header("auto")
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train_model(Path(tmp))
        torch.set_num_threads(2)
        time_ours(trainer)  # warm-up (allocator, kernels)
        ours_s, ours_n = time_ours(trainer)
        stock_s, stock_n = time_stock(trainer, choice)
    ours, stock = ours_n / ours_s, stock_n / stock_s
    print(f"(a) score_pool (EC, 2 tasks)        {ours:8.1f} example-task pairs/s")
    print(f"(b) transformers inference (logits) {stock:8.1f} example-task pairs/s")
    verdict = "MET" if ours / stock >= 1.0 else "NOT MET"
    print(f"ratio (a)/(b): {ours / stock:.2f}x (target >= 1.0: {verdict})")
    record(
        f"AL scoring pairs/s, score_pool / transformers inference ({choice.dtype})",
        ours / stock,
        ">= 1.0",
        ours / stock >= 1.0,
        f"{ours:,.0f} vs {stock:,.0f} example-task pairs/s",
    )


if __name__ == "__main__":
    main()
