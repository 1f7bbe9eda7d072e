"""Which precision a run computes in: `auto` picks what the hardware runs natively.

bf16 halves memory traffic and, where the hardware has bf16 instructions (CUDA GPUs of compute
capability >= 8.0; CPUs with AVX512_BF16 or AMX), runs matmuls 2-4x faster than fp32. Where it
does not, PyTorch emulates bf16 on the CPU and a bf16 matmul is 50-80x *slower* than fp32 (e.g.
an AVX2-only AMD EPYC: ~1 vs ~80 GFLOP/s). So `auto` resolves to bf16 only where it is native:

    auto  -> bf16 on CUDA devices that support it and on CPUs with native bf16, else fp32
    bf16  -> bf16 autocast (warns, with the measured slowdown, on a CPU that only emulates it)
    fp16  -> fp16 autocast (GPU only)
    fp32  -> full precision (`no` is an alias, as in accelerate's `mixed_precision`)

A CPU counts as native when torch dispatches AVX-512 kernels or better, oneDNN accepts bf16 and
the CPU has AVX512_BF16 or AMX tiles. `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` makes a
native machine behave (and be detected) as an AVX2-only one.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import torch

from ernie_style.defaults import PRECISIONS as PRECISIONS  # re-exported
from ernie_style.defaults import Precision as Precision  # re-exported

#: Values of the `precision` config key (`no` means fp32).
#: torch CPU capabilities below AVX-512: bf16 there is emulated.
_SLOW_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX", "AVX2", "ZVECTOR", "VSX", "SVE256", "NEON")


def run_device_type() -> str:
    """`cuda` where a GPU is visible, else `cpu` (also for DeepSpeed on CPU)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_for_this_machine(requested: str) -> str:
    """The `describe()` line `requested` resolves to on this machine (for dry runs)."""
    return resolve_precision(requested, run_device_type()).describe()


@dataclass(frozen=True)
class CpuFeatures:
    """What decides whether this CPU runs bf16 natively (see `cpu_features`)."""

    capability: str
    avx512_bf16: bool
    amx: bool
    onednn_bf16: bool


def cpu_features() -> CpuFeatures:
    """The torch capability of this CPU, its, bf16 instruction sets and oneDNN's bf16 support."""

    def probe(name: str) -> bool:
        check = getattr(torch.cpu, name, None)
        return bool(check()) if callable(check) else False

    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    return CpuFeatures(
        capability=str(torch.backends.cpu.get_cpu_capability()),
        avx512_bf16=probe("_is_avx512_bf16_supported"),
        amx=probe("_is_amx_tile_supported"),
        onednn_bf16=onednn,
    )


def cpu_bf16_support(features: CpuFeatures | None = None) -> tuple[bool, str]:
    """(native, reason): whether bf16 runs natively on this CPU, and why (for the run's log)."""
    f = features or cpu_features()
    isa = " + ".join(n for n, has in (("AVX512_BF16", f.avx512_bf16), ("AMX", f.amx)) if has)
    if f.capability.upper() in _SLOW_CAPABILITIES:
        return False, f"this CPU has no native bf16; {f.capability}"
    if not isa:
        return False, f"this CPU has no native bf16; {f.capability} without AVX512_BF16 or AMX"
    if not f.onednn_bf16:
        return False, f"oneDNN runs no bf16 here; {f.capability}"
    return True, f"this CPU has native bf16; {f.capability}, {isa}"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses (`bf16`, `fp16` or `fp32`), what was asked and why."""

    requested: str
    dtype: str
    reason: str

    @property
    def mixed_precision(self) -> str:
        """The value of accelerate's `mixed_precision`."""
        return "no" if self.dtype == "fp32" else self.dtype

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for full precision."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)

    def describe(self) -> str:
        """One line for the run's log, e.g. `precision: fp32 (auto: this CPU has no native
        bf16; AVX2)`."""
        return f"precision: {self.dtype} ({self.requested}: {self.reason})"

    def to_dict(self) -> dict[str, str]:
        """What checkpoints and model cards record."""
        return {"requested": self.requested, "dtype": self.dtype, "reason": self.reason}


def resolve_precision(
    requested: str,
    device_type: str,
    cpu: CpuFeatures | None = None,
    cuda_bf16: bool | None = None,
) -> PrecisionChoice:
    """Resolve a `precision` value for a device type (`cpu` or `cuda`).

    `cpu` and `cuda_bf16` default to probing this machine (tests pass them to cover both kinds).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {PRECISIONS}")
    if requested in ("fp32", "no"):
        return PrecisionChoice(requested, "fp32", "full precision as asked")
    if device_type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        native, reason = (
            cuda_bf16,
            ("this GPU supports bf16" if cuda_bf16 else "this GPU has no bf16 support"),
        )
    else:
        if requested == "fp16":
            raise ValueError("precision fp16 needs a GPU; use auto, bf16 or fp32 on CPU")
        native, reason = cpu_bf16_support(cpu)
    if requested == "fp16":
        return PrecisionChoice(requested, "fp16", "fp16 autocast as asked")
    if requested == "auto":
        return PrecisionChoice(requested, "bf16" if native else "fp32", reason)
    if not native and device_type != "cuda":
        slowdown = emulated_bf16_slowdown()
        warnings.warn(
            f"precision bf16: {reason}, so bf16 is emulated and slow (a bf16 matmul measured "
            f"{slowdown:.0f}x slower than fp32 here); precision=auto picks fp32 on this CPU",
            RuntimeWarning,
            stacklevel=2,
        )
        reason = f"{reason}; emulated, ~{slowdown:.0f}x slower matmuls than fp32"
    return PrecisionChoice(requested, "bf16", reason)


def emulated_bf16_slowdown(size: int = 256, repeats: int = 3) -> float:
    """bf16 / fp32 time of a `size`^3 matmul on this CPU (a few ms where bf16 is emulated)."""
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        timings[dtype] = best
    return timings[torch.bfloat16] / max(timings[torch.float32], 1e-9)


def autocast(choice: PrecisionChoice, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to the choice's dtype on `device`, or nothing in fp32."""
    dtype = choice.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
