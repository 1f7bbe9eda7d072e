"""The kernel fingerprint that decides when stored float results may be compared bit for bit."""

from __future__ import annotations

import pytest

from ernie_style.testing import machine
from ernie_style.testing.machine import kernel_fingerprint, onednn_isa, same_kernels

AVX512 = {"sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
EPYC_BF16 = AVX512 | {"avx512_bf16"}
XEON_AMX = EPYC_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


def test_onednn_level_follows_the_flags_and_only_a_lower_cap_changes_it():
    assert onednn_isa({"sse4_1", "avx", "avx2"}) == "AVX2"
    assert onednn_isa(EPYC_BF16) == "AVX512_CORE_BF16"
    assert onednn_isa(XEON_AMX) == "AVX512_CORE_AMX"
    assert onednn_isa(XEON_AMX, "AVX512_CORE_BF16") == "AVX512_CORE_BF16"
    assert onednn_isa(XEON_AMX, "avx2") == "AVX2"
    assert onednn_isa({"sse4_1", "avx", "avx2"}, "AVX512_CORE_BF16") == "AVX2"  # cap above: none
    assert onednn_isa(set()) == "DEFAULT"


def _fake_cpu(monkeypatch, tmp_path, vendor: str, model: str, flags: set[str]) -> None:
    cpuinfo = tmp_path / f"{vendor}.txt"
    text = f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: {model}\n"
    text += f"flags\t\t: fpu {' '.join(sorted(flags))}\n\nprocessor\t: 1\nvendor_id\t: other\n"
    cpuinfo.write_text(text)
    monkeypatch.setattr(machine, "_cpuinfo", lambda: machine._read_cpuinfo(cpuinfo))


def test_an_amx_xeon_and_an_epyc_that_both_say_avx512_have_different_fingerprints(
    monkeypatch, tmp_path
):
    """The failure of issue 25: same capability string and torch, other kernels."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    _fake_cpu(monkeypatch, tmp_path, "GenuineIntel", "Intel(R) Xeon(R) Platinum", XEON_AMX)
    xeon = kernel_fingerprint()
    _fake_cpu(monkeypatch, tmp_path, "AuthenticAMD", "AMD EPYC 9R14", EPYC_BF16)
    epyc = kernel_fingerprint()
    assert xeon["vendor"] == "GenuineIntel" and epyc["vendor"] == "AuthenticAMD"
    assert "amx_bf16" in xeon["flags"] and "amx_bf16" not in epyc["flags"]
    assert xeon != epyc
    assert same_kernels({"kernels": epyc}) and not same_kernels({"kernels": xeon})
    assert not same_kernels({"cpu_capability": "AVX512"})  # an old record without a fingerprint


@pytest.mark.parametrize(
    ("cap", "same"), [("AVX2", True), ("AVX512_CORE_BF16", True), ("AVX", False)]
)
def test_a_cap_counts_only_where_it_changes_the_kernels(monkeypatch, tmp_path, cap, same):
    _fake_cpu(monkeypatch, tmp_path, "AuthenticAMD", "AMD EPYC", {"sse4_1", "avx", "avx2", "fma"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    made_on = {"kernels": kernel_fingerprint()}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert same_kernels(made_on) is same


def test_this_machine_reads_its_own_cpu():
    fingerprint = kernel_fingerprint()
    assert fingerprint["torch"] and fingerprint["onednn"] != "unknown"
    assert same_kernels({"kernels": fingerprint})
