"""Run every benchmark and rewrite docs/benchmarks.md from their outputs (`make bench`).

Each benchmark runs as its own process; its output is shown live and kept, and the headline
figures it `record`s (see `bench/_results.py`) go into a summary table. Results are stored per
benchmark in docs/benchmarks.json, so `--only train` reruns one benchmark and the page still
shows the others' latest results (each with the date and machine it was measured on).

    .venv/bin/python bench/run_all.py [--only prepare train ...] [--wait-quiet 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _render import render_page

from ernie_style.fileio import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Bench:
    """One benchmark script, its arguments and what it compares."""

    name: str
    script: str
    args: tuple[str, ...]
    title: str
    compares: str


BENCHES = (
    Bench(
        "prepare",
        "bench/prepare_throughput.py",
        (),
        "Corpus preparation",
        "`ernie-style prepare` (spaCy annotation, Arrow output) vs plain spaCy `nlp.pipe` on "
        "the bundled 100-article Wikipedia sample; 1 vs 2 processes.",
    ),
    Bench(
        "prepare_zh",
        "bench/chinese_prepare.py",
        (),
        "Chinese annotation",
        "LAC and jieba on the MSRA NER test text (one core): our annotation vs the plain "
        "segmenter + tagger, entity F1 against MSRA's labels; Chinese `prepare` 1 vs 2 "
        "processes; knowledge masking tokens/s on Chinese vs English.",
    ),
    Bench(
        "examples",
        "bench/example_throughput.py",
        (),
        "Example construction vs training",
        "Building all seven tasks' examples vs the tiny model training on them (construction "
        "must outrun training so the trainer never waits).",
    ),
    Bench(
        "data",
        "bench/data_throughput.py",
        (),
        "The multi-GPU data path",
        "Per-rank example building for the seven-task mix at sequence 512 and batch 768, rank 0 "
        "of world 1/2/4/8; 1 vs 2 loader workers; start-up and peak RSS for the corpus "
        "replicated 1x/4x/16x (mapped indexes); knowledge masking vs the transformers "
        "whole-word-masking collator; IR relevance mapped vs in-memory.",
    ),
    Bench(
        "train",
        "bench/train_throughput.py",
        ("--repeats", "3"),
        "Training throughput",
        "Our seven-task step through the real trainer path vs stock `BertForMaskedLM` + "
        "`DataCollatorForLanguageModeling` trained by the transformers `Trainer` (bf16 where "
        "native, else fp32, on both sides; fused AdamW; eager and torch_compile, then the "
        "faster), hidden 512, 4 layers, vocabulary 30522, sequence 128, batch 32; (a) and (b) "
        "alternate three times, the ratio is the median.",
    ),
    Bench(
        "finetune",
        "bench/finetune_throughput.py",
        (),
        "Fine-tuning throughput",
        "Our multi-task fine-tuning step vs the transformers `Trainer` on "
        "`ErnieForSequenceClassification` (both in the precision `auto` picks; stock eager and "
        "torch_compile, the faster); GradNorm vs equal loss weights.",
    ),
    Bench(
        "al_select",
        "bench/al_select.py",
        (),
        "Active-learning selection",
        "Every selection strategy picking 10,000 of 1,000,000 examples x 3 tasks, against a "
        "naive reference implementation on 10,000 rows (same picks required).",
    ),
    Bench(
        "al_scoring",
        "bench/al_scoring.py",
        (),
        "Active-learning scoring",
        "`score_pool` (precision auto, batched) vs plain transformers inference producing the "
        "same logits.",
    ),
    Bench(
        "kernels",
        "bench/precision_kernels.py",
        (),
        "CPU kernels by precision",
        "The CPU dropout/attention kernels, chunked cross-entropy and packing vs the stock "
        "PyTorch paths, in fp32 (and bf16 where native): what `auto` keeps on this CPU.",
    ),
    Bench(
        "kernels_avx2",
        "bench/precision_kernels.py",
        ("--emulate-avx2",),
        "CPU kernels by precision, emulated AVX2-only CPU",
        "As above, with torch and oneDNN capped at AVX2 (bf16 emulated, `auto` = fp32).",
    ),
    Bench(
        "precision_demo",
        "bench/precision_demo.py",
        (),
        "`make demo` pretraining: shipped precision (auto) vs fp32",
        "The demo's pretraining with `configs/pretrain/demo_cpu.yaml` as shipped vs the same "
        "run with `precision=fp32`, each in its own process (target >= 0.9x).",
    ),
    Bench(
        "precision_demo_avx2",
        "bench/precision_demo.py",
        ("--emulate-avx2",),
        "`make demo` pretraining on an emulated AVX2-only CPU: auto vs fp32",
        "As above on an AVX2-only CPU (torch and oneDNN capped at AVX2): before `auto`, the "
        "shipped bf16 made this 25-30x slower than fp32 (issue 12).",
    ),
    Bench(
        "index_build",
        "bench/index_build.py",
        (),
        "Index builds before training: 16x vs 1x the sample, 2 processes vs 1",
        "`ernie-style index` (token tables and the BM25 passage index, built in parts and "
        "merged on disk) on the sample corpus replicated 1x and 16x, each in a fresh process; "
        "the one-pass in-RAM build that training ran before is printed for reference.",
    ),
    Bench(
        "family_mlm",
        "bench/family_mlm_step.py",
        (),
        "Continued pretraining per encoder family: masked-LM step vs the stock Trainer",
        "Our masked-LM step (the family's stock *ForMaskedLM with ERNIE's zero additions, its "
        "own head at the masked positions only) vs `transformers.Trainer` + "
        "`AutoModelForMaskedLM` + `DataCollatorForLanguageModeling` on the same model (SDPA; "
        "ModernBERT with its sparse prediction), tiny size, fp32 (target >= 1.0x each).",
    ),
)


def machine() -> dict[str, Any]:
    """CPU, memory, GPU and library versions of this machine."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu"] = names[0] if names else platform.processor()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        info["memory_gib"] = round(kib / 2**20, 1)
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    from ernie_style.precision import resolve_precision

    info["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    info["precision_auto"] = resolve_precision("auto", "cpu").describe()
    for package in ("torch", "transformers", "accelerate", "deepspeed", "spacy"):
        try:
            info[package] = __import__(package).__version__
        except (ImportError, AttributeError):  # not installed: not listed
            continue
    return info


def run_bench(bench: Bench, extra: list[str]) -> dict[str, Any]:
    """Run one benchmark, echoing its output; its results, output and wall time."""
    command = [sys.executable, bench.script, *bench.args, *extra]
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as results_file:
        results_path = Path(results_file.name)
    env = os.environ | {"ERNIE_BENCH_RESULTS": str(results_path), "PYTHONUNBUFFERED": "1"}
    print(f"\n=== {bench.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    wall = time.perf_counter() - started
    results = [json.loads(x) for x in results_path.read_text().splitlines() if x.strip()]
    results_path.unlink(missing_ok=True)
    return {
        "command": ".venv/bin/python " + " ".join([bench.script, *bench.args, *extra]),
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "results": results,
        "output": [ln for ln in lines if "\r" not in ln][-120:],
    }


def main() -> int:
    """Run the chosen benchmarks, update docs/benchmarks.json and rewrite the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES])
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        metavar="S",
        help="passed to the training benchmark: wait for a quiet machine",
    )
    parser.add_argument("--json", type=Path, default=DOCS / "benchmarks.json")
    parser.add_argument("--output", type=Path, default=DOCS / "benchmarks.md")
    args = parser.parse_args()
    stored = json.loads(args.json.read_text()) if args.json.is_file() else {}
    this_machine = machine()
    failed = []
    for bench in BENCHES:
        if args.only and bench.name not in args.only:
            continue
        extra = ["--wait-quiet", f"{args.wait_quiet:g}"] if bench.name == "train" else []
        entry = run_bench(bench, extra) | {"machine": this_machine}
        stored[bench.name] = entry
        atomic_write(args.json, json.dumps(stored, indent=1) + "\n")
        if entry["returncode"] != 0:
            failed.append(bench.name)
    atomic_write(args.output, render_page(BENCHES, stored))
    print(f"\nwrote {args.output} and {args.json}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
