"""The trainers' Accelerator: never compiles the model, whatever the process has set before."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DynamoBackend, TorchDynamoPlugin

from ernie_style.precision import PrecisionChoice
from ernie_style.train.accelerator import make_accelerator

BF16 = PrecisionChoice("bf16", "bf16", "asked")


@pytest.fixture(autouse=True)
def no_accelerate_state_from_earlier_tests():
    """accelerate keeps one state per process: a run an earlier test made (an fp32 fine-tuning,
    say) would refuse the stock bf16 `Accelerator` these tests build themselves. Start from
    none, as a fresh process does (the suite runs in random order)."""
    AcceleratorState._reset_state(reset_partial_state=False)


def test_a_dynamo_backend_in_the_environment_is_ignored(monkeypatch):
    # transformers' TrainingArguments(torch_compile=True) exports this for the whole process.
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "inductor")
    accelerator = make_accelerator(BF16)
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    assert type(accelerator.prepare(torch.nn.Linear(2, 2))) is torch.nn.Linear


def test_a_compiling_accelerator_made_earlier_in_the_process_is_not_inherited():
    Accelerator(cpu=True, mixed_precision="bf16", dynamo_plugin=TorchDynamoPlugin("inductor"))
    accelerator = make_accelerator(BF16)
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO


def test_the_resolved_precision_reaches_accelerate():
    fp32 = make_accelerator(PrecisionChoice("auto", "fp32", "no native bf16"))
    assert fp32.mixed_precision == "no"
    with fp32.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    bf16 = make_accelerator(BF16)
    assert bf16.mixed_precision == "bf16"
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
