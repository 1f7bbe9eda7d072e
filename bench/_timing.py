"""Shared timing helpers for the benchmarks: CPU contention from other processes, waiting for a
quiet machine, the machine/precision header every benchmark prints, and the measured matmul
peak of the precision a run uses.

The benchmark machines are shared: another process busy on one of two cores slows a 2-thread
torch step several times over (OpenMP threads wait for each other), so every timed section
should report how much CPU other processes used while it ran.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_ticks() -> tuple[int, int] | None:
    """(busy, idle) jiffies of the whole machine from /proc/stat, or None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq = values[:7]
    return user + nice + system + irq + softirq, idle + iowait


def _own_ticks() -> int:
    """CPU jiffies used by this process (all threads), from /proc/self/stat."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


class ForeignLoad:
    """Context manager: CPU cores used on average by *other* processes while it was open.

    `cores` is None where /proc is not available (non-Linux).
    """

    def __init__(self) -> None:
        self.cores: float | None = None

    def __enter__(self) -> ForeignLoad:
        self._system = _system_ticks()
        self._own = _own_ticks()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        system, own = _system_ticks(), _own_ticks()
        elapsed = time.perf_counter() - self._start
        if system is None or self._system is None or elapsed <= 0:
            return
        busy = (system[0] - self._system[0]) - (own - self._own)
        self.cores = max(busy, 0) / _CLOCK_TICKS / elapsed


def wait_for_quiet(
    max_wait_s: float, threshold_cores: float = 0.1, window_s: float = 1.0, windows: int = 3
) -> float | None:
    """Wait until other processes use < `threshold_cores` for `windows` windows in a row.

    Returns the seconds waited, or None if the machine did not become quiet in `max_wait_s`.
    """
    start = time.perf_counter()
    quiet = 0
    while time.perf_counter() - start < max_wait_s:
        with ForeignLoad() as load:
            time.sleep(window_s)
        if load.cores is None:
            return 0.0
        quiet = quiet + 1 if load.cores < threshold_cores else 0
        if quiet >= windows:
            return time.perf_counter() - start
    return None


def precision_header(requested: str = "auto") -> tuple[Any, str]:
    """(choice, line): what `requested` resolves to on this CPU, and the line every benchmark
    prints at its top (CPU capability, cores, threads, chosen precision and why)."""
    from ernie_style.precision import resolve_precision

    choice = resolve_precision(requested, "cpu")
    line = (
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads; {choice.describe()}"
    )
    return choice, line


def matmul_peak(
    dtype: torch.dtype, sizes: tuple[int, ...] = (512, 2048, 4096), repeats: int = 5
) -> float:
    """Best measured FLOP/s of a square matmul in `dtype` (2 n^3 FLOPs each) at the given sizes.

    A larger size is skipped when the smaller one predicts over 5 s per multiplication (an
    emulated dtype, e.g. bf16 on an AVX2-only CPU, would otherwise take many minutes).
    """
    best = 0.0
    for i, n in enumerate(sizes):
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up: oneDNN/AMX kernel selection, page faults
        slowest = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - start
            best, slowest = max(best, 2 * n**3 / elapsed), max(slowest, elapsed)
        if i + 1 < len(sizes) and slowest * (sizes[i + 1] / n) ** 3 > 5.0:
            break
    return best
