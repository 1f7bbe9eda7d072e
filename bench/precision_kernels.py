"""The CPU training kernels in fp32 (and bf16 where native) vs the stock PyTorch paths they
replace, measured in one run: do they keep paying when `precision: auto` picks fp32?

- dropout: `FastDropout` (bulk numpy keep-mask) vs `nn.functional.dropout`, [32, 128, 128],
  forward + backward;
- attention: the `ernie_cpu` eager attention with fast dropout vs SDPA with dropout,
  [32, 2 heads, 128, 64], additive mask, forward + backward;
- cross-entropy over 600 x 8000 vocabulary logits: the chunked loss vs the stock one (it only
  pays on bf16/fp16 logits, so `ernie_style.pretrain.losses.cross_entropy` gives fp32 logits
  the stock loss);
- a whole tiny-encoder forward + backward (hidden 128, 2 layers, batch 32 of 20..128 tokens):
  ernie-style's kernels + packing vs stock SDPA + `nn.Dropout` without packing.

Each figure is the median of `--repeats` timings; the ratio is stock time / ours (> 1: ours is
faster). `--emulate-avx2` re-runs the script as an AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`), where `auto` resolves to fp32.

    .venv/bin/python bench/precision_kernels.py [--emulate-avx2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulate-avx2", action="store_true", help="run as an AVX2-only CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


ARGS = parse_args()
if ARGS.emulate_avx2 and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
    # The capability is read when torch loads: start again with it set.
    os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ) | AVX2_ENV)

import torch  # noqa: E402
from _results import record  # noqa: E402
from _timing import precision_header  # noqa: E402
from torch import nn  # noqa: E402

from ernie_style.cpu_kernels import cpu_attention, fast_dropout, use_cpu_kernels  # noqa: E402
from ernie_style.pretrain.losses import _ChunkedCrossEntropy  # noqa: E402
from ernie_style.pretrain.model import ErniePretrainingModel, build_backbone_config  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `fn` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernels(dtype: torch.dtype, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (stock seconds, ours seconds) for dropout, attention and cross-entropy."""
    torch.manual_seed(0)
    x = torch.randn(32, 128, 128, dtype=dtype, requires_grad=True)
    results = {
        "dropout": (
            timed(lambda: nn.functional.dropout(x, 0.1, True).sum().backward(), repeats),
            timed(lambda: fast_dropout(x, 0.1).sum().backward(), repeats),
        )
    }
    q, k, v = (torch.randn(32, 2, 128, 64, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.zeros(32, 1, 128, 128, dtype=dtype)
    module = nn.Module()  # cpu_attention reads `.training`
    sdpa = nn.functional.scaled_dot_product_attention
    results["attention"] = (
        timed(lambda: sdpa(q, k, v, attn_mask=mask, dropout_p=0.1).sum().backward(), repeats),
        timed(
            lambda: cpu_attention(module, q, k, v, mask, dropout=0.1)[0].sum().backward(), repeats
        ),
    )
    logits = torch.randn(600, 8000, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 8000, (600,))
    results["chunked cross-entropy (8000 classes)"] = (
        timed(lambda: nn.functional.cross_entropy(logits.float(), targets).backward(), repeats),
        timed(lambda: _ChunkedCrossEntropy.apply(logits, targets).backward(), repeats),
    )
    return results


def encoder_step(autocast_dtype: torch.dtype | None, repeats: int) -> tuple[float, float]:
    """(stock seconds, ours seconds) of six tiny-encoder forward + backward passes."""
    from transformers import ErnieModel

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(6):
        lengths = torch.randint(20, 129, (32,), generator=generator)
        valid = torch.arange(128)[None] < lengths[:, None]
        ids = torch.randint(5, 8000, (32, 128), generator=generator) * valid
        zeros = torch.zeros_like(ids)
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": valid.long(),
                "token_type_ids": zeros,
                "task_type_ids": zeros,
            }
        )

    def model(ours: bool) -> ErniePretrainingModel:
        torch.manual_seed(0)
        backbone = ErnieModel(build_backbone_config("tiny", vocab_size=8000))
        if ours:
            use_cpu_kernels(backbone)
        else:
            backbone.config._attn_implementation = "sdpa"
        return ErniePretrainingModel(backbone, {}, pack_sequences=ours).train()

    def run(m: ErniePretrainingModel) -> None:
        for batch in batches:
            enabled = autocast_dtype is not None
            with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=enabled):
                sequence, pooled = m.encode(batch)
                loss = sequence.float().pow(2).mean() + pooled.float().mean()
            loss.backward()

    stock, ours = model(False), model(True)
    stock_times, ours_times = [], []
    for _ in range(repeats):  # alternate, so drift in machine load hits both alike
        stock_times.append(timed(lambda: run(stock), 1))
        ours_times.append(timed(lambda: run(ours), 1))
    return statistics.median(stock_times), statistics.median(ours_times)


def main() -> None:
    """Print and record the ratios for fp32 and, where native, bf16."""
    torch.set_num_threads(ARGS.threads)
    choice, header = precision_header("auto")
    print(header, flush=True)
    capability = torch.backends.cpu.get_cpu_capability()
    dtypes = {"fp32": torch.float32}
    if choice.dtype == "bf16":
        dtypes["bf16"] = torch.bfloat16
    for name, dtype in dtypes.items():
        print(f"\n{name}: stock ms / ours ms = speed-up of ours")
        rows = kernels(dtype, ARGS.repeats)
        rows["tiny encoder step (kernels + packing)"] = encoder_step(
            None if dtype == torch.float32 else dtype, ARGS.repeats
        )
        for kernel, (stock, ours) in rows.items():
            print(f"  {kernel:40s} {stock * 1e3:9.2f} / {ours * 1e3:9.2f} = {stock / ours:5.2f}x")
        stock, ours = rows["tiny encoder step (kernels + packing)"]
        active = "the stock loss" if name == "fp32" else "the chunked loss"
        print(f"  (`ernie_style.pretrain.losses.cross_entropy` on {name} logits runs {active})")
        record(
            f"tiny encoder step, stock / ernie-style kernels + packing ({name}, {capability})",
            round(stock / ours, 3),
            ">= 1.0",
            stock / ours >= 1.0,
            f"{stock * 1e3:.0f} vs {ours * 1e3:.0f} ms for 6 batches",
        )


if __name__ == "__main__":
    main()
