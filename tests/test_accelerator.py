"""The trainers' Accelerator: never compiles the model, whatever the process has set before."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from accelerate import Accelerator
from accelerate.utils import DynamoBackend, TorchDynamoPlugin

from ernie_style.trainer import make_accelerator


def test_a_dynamo_backend_in_the_environment_is_ignored(monkeypatch):
    # transformers' TrainingArguments(torch_compile=True) exports this for the whole process.
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "inductor")
    accelerator = make_accelerator(SimpleNamespace(precision="bf16"))
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    assert type(accelerator.prepare(torch.nn.Linear(2, 2))) is torch.nn.Linear


def test_a_compiling_accelerator_made_earlier_in_the_process_is_not_inherited():
    Accelerator(cpu=True, mixed_precision="bf16", dynamo_plugin=TorchDynamoPlugin("inductor"))
    accelerator = make_accelerator(SimpleNamespace(precision="bf16"))
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
