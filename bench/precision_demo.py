"""`make demo`'s pretraining with the shipped config (precision: auto) vs the same run in fp32.

Prepares the bundled Wikipedia sample exactly as `make demo` does (spaCy, 8000-token WordPiece,
cached under runs/bench/), then runs `ernie-style pretrain --config configs/pretrain/demo_cpu.yaml`
as shipped and again with `precision=fp32`, alternating `--repeats` times, each in its own
process. Each run prints the tokens it trained and the seconds its training loop took
(evaluation and checkpoints included); the ratio auto / fp32 is the headline (target >= 0.9:
`auto` must never be the slow choice). On an AVX2-only CPU `auto` resolves to fp32; on a CPU
with native bf16 it resolves to bf16 and should be faster.

`--emulate-avx2` runs both in an AVX2-only setting on any x86 CPU
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`: torch's kernels and oneDNN stop using
AVX-512, so bf16 is emulated, as on CPUs without AVX512_BF16/AMX).

    .venv/bin/python bench/precision_demo.py [--emulate-avx2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import record

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
CONFIG = ROOT / "configs" / "pretrain" / "demo_cpu.yaml"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
TRAINED = re.compile(r"trained ([\d,]+) tokens in ([\d.]+) s: ([\d,]+) tokens/s \((\w+)")


def cli(*args: str, env: dict[str, str]) -> str:
    """Run `python -m ernie_style ARGS`; its output (exits with the output on failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "ernie_style", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"ernie-style {args[0]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def demo_corpus(out: Path, env: dict[str, str]) -> Path:
    """The corpus `make demo` prepares (reused when its inputs and settings are unchanged)."""
    cli(
        "prepare",
        *("--input", str(SAMPLE), "--output", str(out)),
        *("--train-tokenizer", "8000", "--num-proc", "2"),
        env=env,
    )
    return out


def pretrain(corpus: Path, precision: str | None, env: dict[str, str]) -> dict[str, object]:
    """One demo pretraining run in a fresh process: tokens, seconds, tokens/s, its precision
    line."""
    with tempfile.TemporaryDirectory(prefix="precision-demo-") as tmp:
        overrides = [f"data.corpus={corpus}", f"output_dir={tmp}/run"]
        if precision is not None:
            overrides.append(f"precision={precision}")
        output = cli("pretrain", "--config", str(CONFIG), *overrides, env=env)
    match = TRAINED.search(output)
    if match is None:
        sys.exit(f"no 'trained ... tokens' line in the run's output:\n{output[-3000:]}")
    chosen = next(line for line in output.splitlines() if line.startswith("precision: "))
    tokens, seconds = int(match[1].replace(",", "")), float(match[2])
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "line": chosen}


def main() -> None:
    """Alternate shipped (auto) and fp32 demo runs; print and record the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulate-avx2", action="store_true", help="run as an AVX2-only CPU")
    parser.add_argument("--repeats", type=int, default=1, help="alternating pairs of runs")
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "bench" / "demo_corpus")
    args = parser.parse_args()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if args.emulate_avx2:
        env |= AVX2_ENV
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    capability = probe.stdout.strip()
    setting = "emulated AVX2-only" if args.emulate_avx2 else "this CPU as it is"
    print(f"CPU capability: {capability} ({setting}); {os.cpu_count()} cores")
    corpus = demo_corpus(args.corpus, env)
    runs: dict[str, list[dict[str, object]]] = {"auto": [], "fp32": []}
    for repeat in range(args.repeats):
        for name, precision in (("auto", None), ("fp32", "fp32")):
            result = pretrain(corpus, precision, env)
            runs[name].append(result)
            print(
                f"repeat {repeat + 1}: {name:5s} {result['line']:70s} "
                f"{result['tokens']:>9,} tokens in {result['seconds']:6.1f} s = "
                f"{result['tokens_per_s']:>8,.0f} tokens/s",
                flush=True,
            )
    auto = statistics.median(float(r["tokens_per_s"]) for r in runs["auto"])
    fp32 = statistics.median(float(r["tokens_per_s"]) for r in runs["fp32"])
    ratio = auto / fp32
    chosen = str(runs["auto"][0]["line"])
    print(f"\nshipped config: {chosen}")
    print(f"demo pretraining, shipped (auto) / fp32: {auto:,.0f} / {fp32:,.0f} = {ratio:.2f}x")
    record(
        f"demo pretraining tokens/s, shipped auto / fp32 ({capability})",
        round(ratio, 3),
        ">= 0.9",
        ratio >= 0.9,
        f"{chosen}; {auto:,.0f} vs {fp32:,.0f} tokens/s, median of {args.repeats}",
    )


if __name__ == "__main__":
    main()
