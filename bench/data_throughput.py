"""The pretraining data path without the model (issue 13): per-rank example building for the
seven-task mix at sequence 512 and the base recipe's batch (768 examples a step).

    .venv/bin/python bench/data_throughput.py [--batch 768] [--steps 14]

Prints one line per target, `<figure>: <value> (target <op> <number>)`:
- per-rank seconds per step, rank 0 of world 1, 2, 4, 8 (RANK/WORLD_SIZE emulated through the
  step layout; no process group needed): world 8 / world 1 <= 0.2;
- 2 loader workers vs 1 (steps/s through the DataLoader, whole steps): >= 1.7;
- start-up seconds and peak RSS of a training process's data side (corpus, token table, mapped
  indexes, first step) for the prepared corpus replicated 1x, 4x, 16x: 16x / 1x <= 1.25;
- knowledge masking vs transformers' whole-word masking collator on the same documents: >= 1.0;
- IR relevance with the mapped index and token table vs the in-memory path (every touched
  document tokenized, BM25 built in RAM: the path before this change): >= 5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _results import record
from _timing import precision_header
from example_throughput import prepared_corpus

from ernie_style.corpus.document import DocumentSequence
from ernie_style.corpus.index import index_root
from ernie_style.corpus.prepared import load_corpus
from ernie_style.pretrain.examples import CorpusContext
from ernie_style.pretrain.loader import DataStreams, StepLayout
from ernie_style.pretrain.registry import registered_tasks
from ernie_style.pretrain.schedule import ContinualSchedule
from ernie_style.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SEQ = 512
warnings.filterwarnings("ignore", message=".*has no phrase or entity annotation.*")
warnings.filterwarnings("ignore", message=".*Random token replacement is not supported.*")


def line(figure: str, value: float, op: str, target: float, unit: str = "") -> None:
    met = value <= target if op == "<=" else value >= target
    print(f"{figure}: {value:.2f}{unit} (target {op} {target})", flush=True)
    record(figure, round(value, 3), f"{op} {target}", met)


def context(corpus_dir: Path) -> CorpusContext:
    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    docs = DocumentSequence(load_corpus(corpus_dir))
    return CorpusContext(docs, tokenizer, index_root=index_root(corpus_dir))


def seven_tasks(corpus: CorpusContext) -> dict:
    tasks = {n: c(corpus.tokenizer, max_seq_len=SEQ) for n, c in registered_tasks().items()}
    corpus.token_table()
    for task in tasks.values():
        task.prepare(corpus)
    return tasks


def per_rank_step(corpus_dir: Path, batch: int, steps: int) -> dict[int, float]:
    """Seconds per step for rank 0 of each world size (steps cycle through the seven tasks)."""
    corpus = context(corpus_dir)
    tasks = seven_tasks(corpus)
    names = list(tasks)
    seconds = {}
    for world in (1, 2, 4, 8):
        layout = StepLayout(batch_size=batch, rank=0, world=world)
        streams = DataStreams(tasks, corpus, seed=0, layout=layout)
        dataset = streams.loader(ContinualSchedule([{n: 1 for n in names}]), 0).dataset
        tokens, start = 0, time.perf_counter()
        for step in range(steps):
            built = dataset.build(step, [names[step % len(names)]], 0.0)
            tokens += sum(
                int(m["attention_mask"].sum()) for b in built["batches"].values() for m in b
            )
        seconds[world] = (time.perf_counter() - start) / steps
        print(
            f"  world {world}: {seconds[world]:.3f} s per step per rank, "
            f"{tokens / steps / seconds[world]:,.0f} tokens/s per rank",
            flush=True,
        )
    return seconds


def loader_rate(corpus_dir: Path, batch: int, workers: int, steps: int) -> float:
    """Steps/s through the DataLoader (world 1: the whole step), after the workers' first
    batch."""
    corpus = context(corpus_dir)
    tasks = seven_tasks(corpus)
    layout = StepLayout(batch_size=batch, rank=0, world=1, num_workers=workers)
    streams = DataStreams(tasks, corpus, seed=0, layout=layout)
    schedule = ContinualSchedule([{n: steps + 2 * workers for n in tasks}])
    iterator = iter(streams.loader(schedule, 0, prefetch_factor=1))  # no head start
    for _ in range(workers):  # every worker has started and built its first step
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    rate = steps / (time.perf_counter() - start)
    del iterator
    return rate


def replicate(corpus_dir: Path, times: int, out: Path) -> Path:
    """The prepared corpus repeated `times` times (ids made unique), with its own indexes."""
    if (out / "fingerprint.json").is_file():
        return out
    import datasets

    datasets.disable_progress_bars()
    shutil.rmtree(out, ignore_errors=True)
    base = load_corpus(corpus_dir)
    copies = [
        base.map(lambda row, k=k: {"id": f"{row['id']}#{k}"}, desc=None) for k in range(times)
    ]
    datasets.concatenate_datasets(copies).save_to_disk(str(out / "documents"))
    shutil.copytree(corpus_dir / "tokenizer", out / "tokenizer")
    record_ = json.loads((corpus_dir / "fingerprint.json").read_text())
    record_["fingerprint"] = f"x{times}-" + record_["fingerprint"]
    (out / "prepare_summary.json").write_text((corpus_dir / "prepare_summary.json").read_text())
    (out / "fingerprint.json").write_text(json.dumps(record_))
    start = time.perf_counter()
    seven_tasks(context(out))
    print(
        f"  {times}x: {len(base) * times} documents, indexes built once in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    return out


STARTUP = """
import resource, sys, time, warnings
warnings.filterwarnings("ignore")
start = time.perf_counter()
from pathlib import Path
from data_throughput import context, seven_tasks
from ernie_style.pretrain.loader import DataStreams, StepLayout
from ernie_style.pretrain.schedule import ContinualSchedule
imported = time.perf_counter()
corpus = context(Path(sys.argv[1]))
tasks = seven_tasks(corpus)
streams = DataStreams(tasks, corpus, 0, StepLayout(batch_size=768, world=8))
dataset = streams.loader(ContinualSchedule([{n: 1 for n in tasks}]), 0).dataset
for step, name in enumerate(tasks):
    dataset.build(step, [name], 0.0)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Rss"))
private = int(status["RssAnon"].split()[0]) / 1024
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(time.perf_counter() - imported, private, peak)
"""


def startup(corpus_dir: Path) -> tuple[float, float, float]:
    """(seconds, private RSS MiB, peak RSS MiB) of a fresh process mapping the corpus and
    building one step of every task (imports excluded; medians of three runs). Private =
    anonymous memory; the peak also counts pages of the mapped files the process touched
    (page cache, shared by every process on the machine and reclaimable)."""
    runs = []
    for _ in range(3):  # a start-up is half a second: the median of three fresh processes
        out = subprocess.run(
            [sys.executable, "-c", STARTUP, str(corpus_dir.resolve())],
            cwd=Path(__file__).parent,  # `-c` imports from the working directory
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        runs.append(tuple(float(v) for v in out))
    seconds, private, peak = (sorted(column)[1] for column in zip(*runs, strict=True))
    return seconds, private, peak


def masking_rates(corpus_dir: Path) -> tuple[float, float]:
    """Tokens/s: knowledge masking from the token table; whole-word masking collator."""
    from transformers import DataCollatorForLanguageModeling

    corpus = context(corpus_dir)
    task = registered_tasks()["knowledge_masking"](corpus.tokenizer, max_seq_len=SEQ)
    corpus.token_table()
    rng = np.random.default_rng(0)
    tokens, start = 0, time.perf_counter()
    for d in range(len(corpus)):
        tokens += sum(len(e) for e in task.examples(corpus.tokenized(d), rng, corpus))
    ours = tokens / (time.perf_counter() - start)
    tok = corpus.tokenizer
    texts = [corpus.documents[d].text for d in range(len(corpus))]
    enc = tok(
        texts,
        return_offsets_mapping=True,
        truncation=True,
        max_length=SEQ,
        return_overflowing_tokens=True,
    )
    # Full-length rows only: the collator cannot pad offset mappings.
    features = [
        {"input_ids": ids, "offset_mapping": offsets}
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        if len(ids) == SEQ
    ]
    collator = DataCollatorForLanguageModeling(
        tok, mlm=True, whole_word_mask=True, mlm_probability=0.15, return_tensors="pt"
    )
    tokens, start = 0, time.perf_counter()
    for k in range(0, len(features), 32):
        collator(features[k : k + 32])
        tokens += SEQ * len(features[k : k + 32])
    return ours, tokens / (time.perf_counter() - start)


def ir_rates(corpus_dir: Path) -> tuple[float, float]:
    """Tokens/s of IR relevance: mapped index + token table; in-memory corpus."""
    rates = []
    for mapped in (True, False):
        corpus = context(corpus_dir)
        if not mapped:
            corpus = CorpusContext(corpus.documents, corpus.tokenizer)
        task = registered_tasks()["ir_relevance"](corpus.tokenizer, max_seq_len=SEQ)
        start = time.perf_counter()
        task.prepare(corpus)  # in memory: the BM25 build is part of the cost, as it was
        corpus.token_table()
        if mapped:
            start = time.perf_counter()
        rng, tokens = np.random.default_rng(0), 0
        for d in range(len(corpus)):
            tokens += sum(len(e) for e in task.examples(corpus.tokenized(d), rng, corpus))
        rates.append(tokens / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--steps", type=int, default=14, help="steps per world size")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "data")
    args = parser.parse_args()
    _, header = precision_header()
    print(header)
    corpus_dir = prepared_corpus(args.work / "corpus")
    print(f"per-rank example building, seven tasks, seq {SEQ}, batch {args.batch}:")
    seconds = per_rank_step(corpus_dir, args.batch, args.steps)
    line("per-rank step time, world 8 / world 1", seconds[8] / seconds[1], "<=", 0.2)
    one = loader_rate(corpus_dir, args.batch, 1, args.steps)
    two = loader_rate(corpus_dir, args.batch, 2, args.steps)
    print(f"  loader: 1 worker {one:.2f} steps/s, 2 workers {two:.2f} steps/s")
    line("loader throughput, 2 workers / 1 worker", two / one, ">=", 1.7)
    print("start-up of the data side, prepared corpus replicated:")
    figures = {}
    for times in (1, 4, 16):
        path = corpus_dir if times == 1 else replicate(corpus_dir, times, args.work / f"x{times}")
        figures[times] = startup(path)
        seconds_, private, peak = figures[times]
        print(
            f"  {times}x: {seconds_:.2f} s, private RSS {private:.0f} MiB (peak RSS with "
            f"touched pages of the mapped files: {peak:.0f} MiB)"
        )
    line("start-up time, 16x corpus / 1x", figures[16][0] / figures[1][0], "<=", 1.25)
    line("private RSS, 16x corpus / 1x", figures[16][1] / figures[1][1], "<=", 1.25)
    ours, stock = masking_rates(corpus_dir)
    print(f"  knowledge masking {ours:,.0f} tokens/s; whole-word masking collator {stock:,.0f}")
    line(
        "knowledge masking / whole-word masking collator, tokens/s per core",
        ours / stock,
        ">=",
        1.0,
    )
    mapped, in_memory = ir_rates(corpus_dir)
    print(f"  IR relevance: mapped {mapped:,.0f} tokens/s; in-memory {in_memory:,.0f} tokens/s")
    line("IR relevance, mapped index / in-memory path", mapped / in_memory, ">=", 5.0)


if __name__ == "__main__":
    main()
