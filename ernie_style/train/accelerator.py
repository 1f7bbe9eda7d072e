"""The accelerate `Accelerator` a run trains on, and the per-step seed that makes resume exact."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DynamoBackend, TorchDynamoPlugin

from ernie_style.precision import PrecisionChoice


def make_accelerator(precision: PrecisionChoice) -> Accelerator:
    """An Accelerator on CPU when there is no GPU, in the resolved precision; unused task heads
    are allowed under DDP."""
    mixed = precision.mixed_precision
    no_gpu = not torch.cuda.is_available()
    if no_gpu and mixed == "fp16":
        raise ValueError("precision=fp16 needs a GPU; use auto, bf16 or fp32 on CPU")
    # `cpu=True` would silently turn a DeepSpeed launch into plain multi-CPU; DeepSpeed picks
    # its own CPU accelerator when there is no GPU.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    state = AcceleratorState._shared_state
    compiling = getattr(state.get("dynamo_plugin"), "backend", DynamoBackend.NO)
    if state and (state.get("_mixed_precision", mixed) != mixed or compiling != DynamoBackend.NO):
        # Another run in this process (active-learning rounds, tests, a transformers Trainer
        # with torch_compile) chose another precision or a compiler: accelerate keeps one
        # global state, so start it afresh (the process group is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=no_gpu and not deepspeed,
        mixed_precision=mixed,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # Never torch.compile the model (not even when ACCELERATE_DYNAMO_BACKEND is set): the
        # CPU dropout kernel draws its masks with numpy, which dynamo cannot trace.
        dynamo_plugin=TorchDynamoPlugin(backend=DynamoBackend.NO),
    )


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one process (dropout masks; exact resume)."""
    return (seed * 1_000_003 + step * 7_919 + rank) % (2**63 - 1)
