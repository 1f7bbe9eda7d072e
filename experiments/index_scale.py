"""Corpora of many GB (issue 28): prepare, index and start training on the sample corpus
replicated 1x, 16x, 64x and 400x (~1 GB of text), each step in a fresh process, and write the
table, a plot and the extrapolation to 20 GB and 200 GB.

    nohup .venv/bin/python experiments/index_scale.py --work runs/index_scale \\
        > runs/index_scale.log 2>&1 &

Per size: `prepare --annotator none` (one process) throughput; `ernie-style index --num-proc 2`
wall time and peak RSS; a pretraining run's start-up (corpus, mapped indexes, model, first
steps; all seven tasks, tiny preset) and peak RSS, twice (the second with a warm page cache).
spaCy's `prepare` throughput is measured once, on the 1x corpus. Every result is kept in
`WORK/results.json` as it comes, so a rerun skips what is done. Writes
docs/results/index_scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

from ernie_style.fileio import atomic_write
from ernie_style.testing.scale import SAMPLE, measured_run, write_scaled_jsonl

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"
SEVEN = (
    "knowledge_masking", "capitalization", "token_document_relation", "sentence_reordering",
    "sentence_distance", "discourse_relation", "ir_relevance",
)  # fmt: skip


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, results: dict) -> None:
    atomic_write(path, json.dumps(results, indent=1, sort_keys=True) + "\n")


def _prepare(work: Path, times: int, annotator: str, tokenizer: Path | None) -> dict:
    corpus = work / f"x{times}-{annotator}"
    shutil.rmtree(corpus, ignore_errors=True)
    source = work / f"x{times}.jsonl"
    text_bytes = write_scaled_jsonl(source, times)
    command = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(source)]
    command += ["--output", str(corpus), "--annotator", annotator, "--no-index", "--no-progress"]
    seconds, peak = measured_run(command, work / f"prepare-x{times}-{annotator}.log")
    source.unlink()
    if tokenizer is not None and not (corpus / "tokenizer").exists():
        shutil.copytree(tokenizer, corpus / "tokenizer")
    return {
        "corpus": str(corpus),
        "text_mb": text_bytes / 1e6,
        "prepare_s": seconds,
        "prepare_mb_per_s": text_bytes / 1e6 / seconds,
        "prepare_peak_mb": peak,
    }


def _train_config(work: Path, corpus: str, name: str) -> Path:
    config = {
        "output_dir": str(work / f"run-{name}"),
        "seed": 1,
        "batch_size": 8,
        "precision": "fp32",
        "model": {"preset": "tiny"},
        "data": {"corpus": corpus, "max_seq_len": 128, "heldout_documents": 8},
        "tasks": {task: {"budget": 1} for task in SEVEN},
        "checkpoint_every": 1000,
        "eval_every": 1000,
        "log_every": 1000,
    }
    path = work / f"run-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measure_size(work: Path, times: int, tokenizer: Path, results: dict) -> dict:
    """Prepare, index and two training start-ups at `times` x the sample."""
    row = results.get(str(times), {})
    if "prepare_s" not in row:
        row |= _prepare(work, times, "none", tokenizer)
    corpus = row["corpus"]
    if "index_s" not in row:
        shutil.rmtree(Path(corpus) / "indexes", ignore_errors=True)
        command = [sys.executable, "-m", "ernie_style", "index", "--corpus", corpus]
        command += ["--num-proc", "2"]
        row["index_s"], row["index_peak_mb"] = measured_run(command, work / f"index-x{times}.log")
    for attempt in ("first_run", "second_run"):
        if f"{attempt}_s" in row:
            continue
        config = _train_config(work, corpus, f"x{times}")
        shutil.rmtree(work / f"run-x{times}", ignore_errors=True)
        command = [sys.executable, "-m", "ernie_style", "pretrain", "--config", str(config)]
        log = work / f"{attempt}-x{times}.log"
        row[f"{attempt}_s"], row[f"{attempt}_peak_mb"] = measured_run(command, log)
    return row


def extrapolate(results: dict, sizes: list[int]) -> dict:
    """Least-squares power laws (seconds, peak MB) vs text MB, evaluated at 20 and 200 GB."""
    points = [results[str(s)] for s in sizes if str(s) in results and "index_s" in results[str(s)]]
    out = {}
    for key in ("index_s", "index_peak_mb", "prepare_s", "first_run_s", "first_run_peak_mb"):
        xs = [math.log(p["text_mb"]) for p in points if key in p]
        ys = [math.log(p[key]) for p in points if key in p]
        if len(xs) < 2:
            continue
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        slope /= sum((x - mx) ** 2 for x in xs)
        # Fit on the two largest sizes (the asymptote), reported with the fitted exponent.
        (x1, y1), (x2, y2) = sorted(zip(xs, ys, strict=True))[-2:]
        tail = (y2 - y1) / (x2 - x1)
        out[key] = {
            "exponent": slope,
            "tail_exponent": tail,
            "at_20gb": math.exp(y2 + tail * (math.log(20_000) - x2)),
            "at_200gb": math.exp(y2 + tail * (math.log(200_000) - x2)),
        }
    return out


def table(results: dict, sizes: list[int]) -> str:
    """The markdown table of the measured sizes."""
    rows = [
        "| size | text | prepare (none, 1 proc) | index (2 procs) | index peak RSS | "
        "1st run start-up | 1st run peak RSS | 2nd run start-up | 2nd run peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        r = results.get(str(size))
        if not r or "second_run_s" not in r:
            continue
        rows.append(
            f"| {size}x | {r['text_mb']:.0f} MB | {r['prepare_s']:.0f} s "
            f"({r['prepare_mb_per_s']:.1f} MB/s) | {r['index_s']:.1f} s | "
            f"{r['index_peak_mb']:.0f} MB | {r['first_run_s']:.1f} s | "
            f"{r['first_run_peak_mb']:.0f} MB | {r['second_run_s']:.1f} s | "
            f"{r['second_run_peak_mb']:.0f} MB |"
        )
    return "\n".join(rows) + "\n"


def plot(results: dict, sizes: list[int], path: Path) -> None:
    """Time and peak memory against corpus size, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s for s in sizes if "second_run_s" in results.get(str(s), {})]
    mb = [results[str(s)]["text_mb"] for s in done]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("index_s", "index build"), ("first_run_s", "run start-up"),
                       ("prepare_s", "prepare (none)")):  # fmt: skip
        left.loglog(mb, [results[str(s)][key] for s in done], "o-", label=label)
    left.set(xlabel="corpus text (MB)", ylabel="seconds", title="time")
    for key, label in (("index_peak_mb", "index build"), ("first_run_peak_mb", "run")):
        right.semilogx(mb, [results[str(s)][key] for s in done], "o-", label=label)
    right.set(xlabel="corpus text (MB)", ylabel="peak RSS (MB)", title="memory")
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Measure every size (resuming from WORK/results.json) and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "index_scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 400])
    args = parser.parse_args()
    import torch

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = _load(store)
    results["machine"] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": __import__("os").cpu_count(),
    }
    tokenizer = work / "tokenizer"
    if not tokenizer.is_dir():
        from ernie_style.tokenizer import train_wordpiece

        texts = [json.loads(row)["text"] for row in SAMPLE.read_text().splitlines()]
        train_wordpiece(texts, vocab_size=8000).save_pretrained(str(tokenizer))
    if "spacy_1x" not in results:
        results["spacy_1x"] = _prepare(work, 1, "spacy", None)
        shutil.rmtree(results["spacy_1x"]["corpus"], ignore_errors=True)
        _save(store, results)
    for size in args.sizes:
        start = time.perf_counter()
        results[str(size)] = measure_size(work, size, tokenizer, results)
        _save(store, results)
        print(
            f"{size}x done in {time.perf_counter() - start:.0f} s: {results[str(size)]}", flush=True
        )
    results["extrapolation"] = extrapolate(results, args.sizes)
    _save(store, results)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / "index_scale.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    atomic_write(OUT / "index_scale.md", table(results, args.sizes))
    plot(results, args.sizes, OUT / "index_scale.png")
    print(table(results, args.sizes))
    print(json.dumps(results["extrapolation"], indent=1))


if __name__ == "__main__":
    main()
