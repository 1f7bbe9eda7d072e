"""`precision: auto` picks bf16 only where the hardware runs it natively, fp32 elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from ernie_style import precision as precision_module
from ernie_style.precision import CpuFeatures, cpu_bf16_support, resolve_precision

AVX2_ONLY = CpuFeatures("AVX2", avx512_bf16=False, amx=False, onednn_bf16=False)
SAPPHIRE_RAPIDS = CpuFeatures("AVX512", avx512_bf16=True, amx=True, onednn_bf16=True)
ZEN4 = CpuFeatures("AVX512", avx512_bf16=True, amx=False, onednn_bf16=True)
SKYLAKE = CpuFeatures("AVX512", avx512_bf16=False, amx=False, onednn_bf16=True)
# A bf16-capable CPU running with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2.
CAPPED = CpuFeatures("AVX2", avx512_bf16=True, amx=False, onednn_bf16=False)


@pytest.mark.parametrize(
    ("cpu", "dtype", "reason"),
    [
        (AVX2_ONLY, "fp32", "this CPU has no native bf16; AVX2"),
        (SKYLAKE, "fp32", "this CPU has no native bf16; AVX512 without AVX512_BF16 or AMX"),
        (CAPPED, "fp32", "this CPU has no native bf16; AVX2"),
        (ZEN4, "bf16", "this CPU has native bf16; AVX512, AVX512_BF16"),
        (SAPPHIRE_RAPIDS, "bf16", "this CPU has native bf16; AVX512, AVX512_BF16 + AMX"),
    ],
)
def test_auto_on_cpu_picks_bf16_only_where_it_is_native(cpu, dtype, reason):
    choice = resolve_precision("auto", "cpu", cpu=cpu)
    assert (choice.dtype, choice.reason) == (dtype, reason)
    assert choice.mixed_precision == ("bf16" if dtype == "bf16" else "no")


def test_the_run_prints_its_choice_and_the_reason():
    choice = resolve_precision("auto", "cpu", cpu=AVX2_ONLY)
    assert choice.describe() == "precision: fp32 (auto: this CPU has no native bf16; AVX2)"
    assert choice.to_dict() == {
        "requested": "auto",
        "dtype": "fp32",
        "reason": "this CPU has no native bf16; AVX2",
    }


def test_onednn_without_bf16_is_not_native():
    cpu = CpuFeatures("AVX512", avx512_bf16=True, amx=False, onednn_bf16=False)
    assert cpu_bf16_support(cpu)[0] is False


def test_auto_on_cuda_follows_the_device():
    assert resolve_precision("auto", "cuda", cuda_bf16=True).dtype == "bf16"
    assert resolve_precision("auto", "cuda", cuda_bf16=False).dtype == "fp32"
    assert resolve_precision("fp16", "cuda", cuda_bf16=True).dtype == "fp16"
    assert resolve_precision("fp16", "cuda", cuda_bf16=True).mixed_precision == "fp16"


@pytest.mark.parametrize("name", ["fp32", "no"])
def test_fp32_and_its_alias_no_mean_full_precision(name):
    for cpu in (AVX2_ONLY, SAPPHIRE_RAPIDS):
        choice = resolve_precision(name, "cpu", cpu=cpu)
        assert (choice.dtype, choice.mixed_precision, choice.autocast_dtype) == (
            "fp32",
            "no",
            None,
        )


def test_fp16_on_cpu_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu", cpu=SAPPHIRE_RAPIDS)
    with pytest.raises(ValueError, match="'fp23' is not one of"):
        resolve_precision("fp23", "cpu", cpu=SAPPHIRE_RAPIDS)


def test_explicit_bf16_on_an_emulating_cpu_works_but_warns_with_the_measured_factor(
    monkeypatch,
):
    monkeypatch.setattr(precision_module, "emulated_bf16_slowdown", lambda: 63.4)
    with pytest.warns(RuntimeWarning, match=r"emulated and slow .* 63x slower than fp32"):
        choice = resolve_precision("bf16", "cpu", cpu=AVX2_ONLY)
    assert choice.dtype == "bf16" and "~63x slower" in choice.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: no warning
        assert resolve_precision("bf16", "cpu", cpu=ZEN4).dtype == "bf16"


def test_the_slowdown_measurement_is_a_ratio_of_two_timings():
    factor = precision_module.emulated_bf16_slowdown(size=64, repeats=1)
    assert factor > 0


def _probe_this_machine(env: dict[str, str]) -> dict:
    code = (
        "import json; from ernie_style.precision import cpu_features, resolve_precision;"
        "c = resolve_precision('auto', 'cpu');"
        "print(json.dumps([c.dtype, cpu_features().capability]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    dtype, capability = json.loads(out.stdout)
    return {"dtype": dtype, "capability": capability}


def test_a_cpu_capped_to_avx2_is_detected_as_having_no_native_bf16():
    # How an AVX2-only machine is emulated on a bf16-capable one (and what it reports).
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert _probe_this_machine(env) == {"dtype": "fp32", "capability": "AVX2"}


def test_autocast_follows_the_choice():
    fp32 = resolve_precision("fp32", "cpu")
    with precision_module.autocast(fp32, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    bf16 = precision_module.PrecisionChoice("bf16", "bf16", "asked")
    with precision_module.autocast(bf16, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
