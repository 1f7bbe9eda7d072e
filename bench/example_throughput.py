"""Example construction for all seven tasks vs. how fast the tiny model trains on them.

Target: building examples (tokens/s, tokenization included) is >= 5x faster than the tiny model
trains on them (in the precision `auto` picks on this machine, AdamW, batch 32, sequence 128),
so data never starves training.

    .venv/bin/python bench/example_throughput.py [--documents 40] [--steps 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import record
from _timing import precision_header
from transformers import ErnieModel

from ernie_style.corpus.document import DocumentSequence
from ernie_style.corpus.prepared import load_corpus
from ernie_style.precision import autocast
from ernie_style.pretrain.examples import CorpusContext, collate
from ernie_style.pretrain.model import ErniePretrainingModel, build_backbone_config
from ernie_style.pretrain.registry import registered_tasks
from ernie_style.pretrain.stream import TaskExampleStream
from ernie_style.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"


def prepared_corpus(out: Path) -> Path:
    """Prepare the sample corpus once (the prepare cache makes re-runs instant)."""
    cmd = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(SAMPLE)]
    cmd += ["--output", str(out), "--train-tokenizer", "8000", "--num-proc", "2", "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def construction_rate(corpus_dir: Path, documents: int, seq_len: int) -> tuple[float, dict]:
    """Tokens/s of building every task's examples from `documents` fresh documents."""
    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    dataset = load_corpus(corpus_dir).select(range(documents))
    corpus = CorpusContext(DocumentSequence(dataset), tokenizer)
    tasks = [cls(tokenizer, max_seq_len=seq_len) for cls in registered_tasks().values()]
    per_task, total_tokens = {}, 0
    start = time.perf_counter()
    for task in tasks:
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        tokens = sum(len(e) for e in task.corpus_examples(rng, corpus))
        for i in range(len(corpus)):
            tokens += sum(len(e) for e in task.examples(corpus.tokenized(i), rng, corpus))
        per_task[task.name] = tokens / (time.perf_counter() - t0)
        total_tokens += tokens
    return total_tokens / (time.perf_counter() - start), per_task


def training_rate(
    corpus_dir: Path, steps: int, seq_len: int, batch_size: int, choice: Any
) -> float:
    """Tokens/s (non-padding) of the tiny model training round-robin on all seven tasks."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    corpus = CorpusContext(DocumentSequence(load_corpus(corpus_dir)), tokenizer)
    tasks = {n: c(tokenizer, max_seq_len=seq_len) for n, c in registered_tasks().items()}
    streams = [TaskExampleStream(t, corpus, seed=0) for t in tasks.values()]
    batches = [collate(streams[i % 7].take(batch_size), tokenizer.pad_token_id) for i in range(14)]
    config = build_backbone_config("tiny", vocab_size=len(tokenizer))
    model = ErniePretrainingModel(ErnieModel(config), tasks).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        with autocast(choice, torch.device("cpu")):
            loss = model(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:7]:  # warm-up: one step per task
        step(batch)
    tokens, start = 0, time.perf_counter()
    for i in range(steps):
        batch = batches[i % len(batches)]
        step(batch)
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "bench" / "corpus")
    args = parser.parse_args()
    choice, header = precision_header("auto")
    print(header, flush=True)
    corpus_dir = prepared_corpus(args.corpus)
    build, per_task = construction_rate(corpus_dir, args.documents, args.seq_len)
    train = training_rate(corpus_dir, args.steps, args.seq_len, args.batch_size, choice)
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    for name, rate in per_task.items():
        print(f"  build {name:<24} {rate:>12,.0f} tokens/s")
    print(f"example construction, all 7 tasks: {build:>12,.0f} tokens/s")
    print(f"tiny model training ({choice.dtype}):        {train:>12,.0f} tokens/s")
    print(f"ratio construction/training: {build / train:.1f}x (target >= 5x)")
    record(
        "example construction / tiny-model training tokens/s",
        build / train,
        ">= 5.0",
        build / train >= 5.0,
        f"{build:,.0f} vs {train:,.0f} tokens/s",
    )


if __name__ == "__main__":
    main()
