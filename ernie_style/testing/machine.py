"""What decides the float kernels torch runs on this CPU, so that stored results are compared bit
for bit only on a machine that runs the same kernels.

`torch.backends.cpu.get_cpu_capability()` alone does not decide it: an Intel Xeon with AMX and an
AMD EPYC with AVX512_BF16 both report `AVX512`, but oneDNN and MKL pick other kernels on them,
so fp32 reductions differ in the last bits. The fingerprint names the CPU vendor and model, the
instruction-set flags oneDNN dispatches on, the kernel levels in force (after any
`ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` cap), and the torch, oneDNN and MKL versions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: CPU flags (as /proc/cpuinfo spells them) that oneDNN/MKL choose kernels by.
KERNEL_FLAGS = (
    "sse4_1",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)
#: oneDNN's x86 ISA levels, lowest first, each with the CPU flags it needs.
ONEDNN_ISAS = (
    ("SSE41", ("sse4_1",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx2",)),
    ("AVX2_VNNI", ("avx2", "avx_vnni")),
    ("AVX512_CORE", ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    ("AVX512_CORE_VNNI", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")),
    (
        "AVX512_CORE_BF16",
        ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"),
    ),
    ("AVX512_CORE_AMX", ("avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")),
)


def _cpuinfo() -> dict[str, str]:
    """The fields of the local /proc/cpuinfo's first processor (empty where there is none)."""
    return _read_cpuinfo(Path("/proc/cpuinfo"))


def _read_cpuinfo(path: Path) -> dict[str, str]:
    """The first processor's fields of a /proc/cpuinfo file (empty where there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def onednn_isa(flags: set[str], cap: str | None = None) -> str:
    """The ISA level oneDNN dispatches on: the highest the CPU has, lowered to `cap`
    (`ONEDNN_MAX_CPU_ISA`) when one is set. A cap above the CPU changes nothing."""
    names = [name for name, _ in ONEDNN_ISAS]
    best = "DEFAULT"
    for name, needs in ONEDNN_ISAS:
        if all(flag in flags for flag in needs):
            best = name
    cap = (cap or "").upper()
    if cap in names and (best == "DEFAULT" or names.index(cap) < names.index(best)):
        return cap
    return best


def _library_version(pattern: str, config: str) -> str:
    found = re.search(pattern, config)
    return found.group(1) if found else "unknown"


def kernel_fingerprint() -> dict[str, Any]:
    """The CPU, its kernel-relevant flags, the kernel caps in force and the library versions.

    Two machines with equal fingerprints run the same CPU kernels; anything else may round
    differently. Bit-for-bit comparisons against results made elsewhere require equality.
    """
    import platform

    import torch

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    config = torch.__config__.show()
    return {
        "vendor": info.get("vendor_id", platform.processor() or platform.machine()),
        "model": info.get("model name", platform.machine()),
        "flags": [flag for flag in KERNEL_FLAGS if flag in flags],
        # What runs, not what is asked: ATEN_CPU_CAPABILITY shows in torch's capability,
        # ONEDNN_MAX_CPU_ISA in the level oneDNN dispatches on.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": onednn_isa(
            flags, os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        ),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "torch": torch.__version__,
        "onednn": _library_version(r"MKL-DNN v([\w.]+)", config),
        "mkl": _library_version(r"Math Kernel Library Version ([\w.]+)", config),
    }


def same_kernels(made_on: dict[str, Any]) -> bool:
    """True when `made_on["kernels"]` (a stored `kernel_fingerprint()`) is this machine's."""
    return made_on.get("kernels") == kernel_fingerprint()
