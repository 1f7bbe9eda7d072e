"""Fine-tuning throughput: our single-task step vs. the transformers `Trainer`, and the cost of
GradNorm against equal weighting.

One run, one machine, the same encoder and data for both sides:

- encoder: a randomly initialised ERNIE encoder of the `small` preset (hidden 256, 4 layers,
  4 heads, task embeddings on) saved locally with a WordPiece tokenizer trained on the shipped
  fine-tuning texts; task: `wiki_pairs` (pair classification, data/finetune/), batch 32,
  max 128 tokens, `torch.set_num_threads(2)`, both sides in the fastest precision on this
  machine (bf16 autocast where the CPU runs bf16 natively, fp32 where it is emulated);
- (a) ours: `FinetuneTrainer` (one task), timed over `next_batches` + `train_step` (sampling,
  collation, forward, backward, clipping, AdamW) after warm-up steps;
- (b) stock: `ErnieForSequenceClassification.from_pretrained(encoder)` trained by
  `transformers.Trainer` (bf16 where native, fused AdamW, `DataCollatorWithPadding` to a
  multiple of 8, in-process data loading, no eval/save/logging), eager and with torch_compile,
  the faster of the two reported; the same encoded examples, timed per step by a callback after
  the same warm-up.

Printed: examples/s of both and the ratio (a)/(b) (target >= 1.0); the mean step time of a
two-task run (wiki_pairs + sentiment) with `balancing: gradnorm` and with `equal`, and their
ratio (target <= 1.5).

    .venv/bin/python bench/finetune_throughput.py [--steps N] [--warmup N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _results import record
from _timing import ForeignLoad, precision_header

ROOT = Path(__file__).resolve().parents[1]

BATCH = 32


def make_encoder(workdir: Path) -> Path:
    """The `small` encoder + tokenizer, saved locally."""
    from ernie_style.testing.finetune import make_encoder_dir

    sizes = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
    return make_encoder_dir(workdir / "encoder", vocab_size=8000, **sizes)


def write_config(workdir: Path, encoder: Path, names: list[str], balancing: str) -> Path:
    """A fine-tuning config over shipped tasks, in the shipped default precision (auto)."""
    from ernie_style.testing.finetune import shipped_tasks

    data = {
        "output_dir": str(workdir / f"run-{balancing}-{len(names)}"),
        "encoder": str(encoder),
        "precision": "auto",
        "epochs": 100,
        "batch_size": BATCH,
        "optim": {"lr": 1e-4},
        "balancing": balancing,
        "checkpoint_every": 0,
        "tasks": shipped_tasks(*names),
    }
    for task in data["tasks"]:
        task.pop("batch_size", None)
    path = workdir / f"{balancing}-{len(names)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def time_ours(config_path: Path, warmup: int, steps: int) -> tuple[float, float, Any]:
    """(examples/s, mean step seconds, trainer) of `next_batches` + `train_step` after
    `warmup` steps."""
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.trainer import FinetuneTrainer

    trainer = FinetuneTrainer(load_config(FinetuneConfig, config_path, []))
    torch.set_num_threads(2)
    for step in range(warmup):
        trainer.train_step(step, trainer.next_batches(step))
    with ForeignLoad() as load:
        start = time.perf_counter()
        for step in range(warmup, warmup + steps):
            trainer.train_step(step, trainer.next_batches(step))
        seconds = time.perf_counter() - start
    print(f"    foreign load {load.cores if load.cores is not None else float('nan'):.2f} cores")
    return steps * BATCH / seconds, seconds / steps, trainer


def time_stock(
    encoder: Path,
    trainer: Any,
    workdir: Path,
    warmup: int,
    steps: int,
    bf16: bool,
    compile_model: bool,
) -> float:
    """Examples/s of `transformers.Trainer` on ErnieForSequenceClassification."""
    import datasets
    from transformers import (
        DataCollatorWithPadding,
        ErnieForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    task = trainer.tasks["wiki_pairs"]
    examples = task.splits["train"]
    needed = (warmup + steps) * BATCH
    rows = list(itertools.islice(itertools.cycle(examples), needed))
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [r["input_ids"] for r in rows],
            "token_type_ids": [r["token_type_ids"] for r in rows],
            "labels": [r["labels"] for r in rows],
        }
    )
    ends: list[float] = []
    loads: list[ForeignLoad] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, _args: Any, state: Any, *__: Any, **___: Any) -> None:
            if state.global_step == warmup:
                ends.append(time.perf_counter())
                loads.append(ForeignLoad().__enter__())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            ends.append(time.perf_counter())

    model = ErnieForSequenceClassification.from_pretrained(
        str(encoder), num_labels=task.num_labels, local_files_only=True
    )
    args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=BATCH,
        max_steps=warmup + steps,
        learning_rate=1e-4,
        bf16=bf16,
        use_cpu=True,
        optim="adamw_torch_fused",
        torch_compile=compile_model,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    collator = DataCollatorWithPadding(trainer.tokenizer, pad_to_multiple_of=8)
    stock = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[StepClock()],
    )
    torch.set_num_threads(2)
    saved_env = dict(os.environ)  # torch_compile exports ACCELERATE_DYNAMO_* for the process
    stock.train()
    os.environ.clear()
    os.environ.update(saved_env)
    loads[0].__exit__(None, None, None)
    print(f"    foreign load {loads[0].cores if loads[0].cores is not None else float('nan'):.2f}")
    timed = ends[-(steps + 1) :]
    return steps * BATCH / (timed[-1] - timed[0])


def main() -> None:
    """Run both comparisons and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip (b) with torch_compile")
    args = parser.parse_args()
    torch.set_num_threads(2)
    choice, header = precision_header("auto")
    print(header, flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        encoder = make_encoder(workdir)
        print("(a) ours, single task wiki_pairs")
        ours, _, trainer = time_ours(
            write_config(workdir, encoder, ["wiki_pairs"], "equal"), args.warmup, args.steps
        )
        stocks = {}
        for compiled in [False] + ([] if args.no_compile else [True]):
            name = "torch_compile" if compiled else "eager"
            print(f"(b) transformers Trainer, ErnieForSequenceClassification, {name}")
            stocks[name] = time_stock(
                encoder,
                trainer,
                workdir,
                args.warmup,
                args.steps,
                bf16=choice.dtype == "bf16",
                compile_model=compiled,
            )
            print(f"    {stocks[name]:8.1f} examples/s")
        fastest = max(stocks, key=stocks.__getitem__)
        stock = stocks[fastest]
        del trainer
        print("(c) two tasks, equal vs gradnorm")
        _, equal_step, _ = time_ours(
            write_config(workdir, encoder, ["wiki_pairs", "sentiment"], "equal"),
            args.warmup,
            args.steps,
        )
        _, gradnorm_step, _ = time_ours(
            write_config(workdir, encoder, ["wiki_pairs", "sentiment"], "gradnorm"),
            args.warmup,
            args.steps,
        )
    print(f"(a) ours                 {ours:8.1f} examples/s")
    print(f"(b) transformers Trainer {stock:8.1f} examples/s ({fastest}, {choice.dtype})")
    verdict = "MET" if ours / stock >= 1.0 else "NOT MET"
    print(f"ratio (a)/(b): {ours / stock:.2f}x (target >= 1.0: {verdict})")
    record(
        f"fine-tuning examples/s, ours / transformers Trainer ({choice.dtype})",
        ours / stock,
        ">= 1.0",
        ours / stock >= 1.0,
        f"{ours:,.1f} vs {stock:,.1f} examples/s (stock {fastest})",
    )
    print(f"step time equal {equal_step * 1000:.1f} ms, gradnorm {gradnorm_step * 1000:.1f} ms")
    ratio = gradnorm_step / equal_step
    verdict = "MET" if ratio <= 1.5 else "NOT MET"
    print(f"ratio gradnorm/equal: {ratio:.2f}x (target <= 1.5: {verdict})")
    record(
        "fine-tuning step time, GradNorm / equal weights",
        ratio,
        "<= 1.5",
        ratio <= 1.5,
        f"{gradnorm_step * 1000:.1f} vs {equal_step * 1000:.1f} ms",
    )
    print(f"benchmark wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
