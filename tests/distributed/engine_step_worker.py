"""Worker for tests/distributed/test_ddp_equivalence.py: a few pretraining optimizer steps
through the real engine (accelerate DDP over gloo, `StepRunner`, the uncertainty balancer,
gradient clipping, AdamW) on a global batch fixed in advance, then the weights and losses.

    torchrun --nproc_per_node N engine_step_worker.py CORPUS OUT.pt [ARCHITECTURE]

ARCHITECTURE is `model.architecture` (default ernie; e.g. deberta-v2 for another family).

Every process builds the same *global* batches from a one-process data layout (so the examples
do not depend on the number of processes), each task's batch as two halves collated (padded)
separately, or as one whole batch. Two task sets, each trained for STEPS steps:

* single (sentence_distance, one label per example): 2 processes train half r each (DDP
  all-reduces the gradients); the reference is 1 process training the whole batch at once;
* mixed (knowledge_masking + sentence_distance in every step): 2 processes train half r each;
  the reference is 1 process training both halves as two accumulated micro-batches (a
  token-level loss is a mean over each shard's tokens, so the global loss is the mean of the
  shards' means on both sides; the whole batch at once would weight tokens differently).

Rank 0 writes {"single"|"mixed": {"losses", "weights", "norms" (clipped gradient norms),
"tasks"}}.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

#: Steps per scenario; clipping threshold far below the micro model's gradient norms (so the
#: clip is active on every step and its all-reduced norm matters).
STEPS = 3
MAX_GRAD_NORM = 0.05


def config_for(corpus: str, tasks: dict, accum: int, architecture: str = "ernie") -> object:
    """A micro pretraining config without dropout (so ranks draw no different masks)."""
    from ernie_style.config import from_dict
    from ernie_style.pretrain.config import PretrainConfig

    data = {
        "output_dir": "unused",
        "seed": 5,
        "batch_size": 8,
        "precision": "fp32",
        "model": {"preset": "micro", "dropout": 0.0, "architecture": architecture},
        "data": {"corpus": corpus, "max_seq_len": 64, "heldout_documents": 3},
        "tasks": tasks,
        "schedule": {"mixed_batches": len(tasks) > 1, "tasks_per_step": len(tasks)},
        "optim": {"lr": 1.0e-3, "warmup_steps": 0, "grad_accum_steps": accum},
        "balancing": "uncertainty",
    }
    return from_dict(PretrainConfig, data)


def global_batches(config: object) -> tuple[object, list[dict[str, list[dict]]]]:
    """A fresh one-process run state and its first STEPS steps' batches."""
    from ernie_style.pretrain.state import build_run_state

    state = build_run_state(config, rank=0, world=1)
    for module in state.model.modules():  # task heads keep their own dropout (p=0.1)
        if hasattr(module, "p") and "Dropout" in type(module).__name__:
            module.p = 0.0
    schedule = state.schedule
    loader = iter(state.streams.loader(schedule, state.pad_id))
    steps = []
    for _ in range(STEPS):
        state.streams.layout.sample_tasks(schedule)
        steps.append(next(loader)["batches"])
    return state, steps


def train(
    accel: object, corpus: str, split: bool, mixed: bool, architecture: str = "ernie"
) -> dict | None:
    """STEPS steps on one task set: `split` (rank r trains half r), else one process trains
    the whole batch (`mixed=False`) or both halves accumulated (`mixed=True`)."""
    from ernie_style.train.balancing import build_balancer
    from ernie_style.train.step import StepRunner

    world, rank = accel.num_processes, accel.process_index
    tasks = {"sentence_distance": {"budget": STEPS}}
    if mixed:
        tasks = {"knowledge_masking": {"budget": STEPS}, "sentence_distance": {"budget": STEPS}}
    whole = not split and not mixed
    config = config_for(corpus, tasks, 1 if whole else 2, architecture)
    state, steps = global_batches(config)
    if split:  # rank r keeps half r of every task's batch
        steps = [{t: [micro[rank]] for t, micro in b.items()} for b in steps]
    reduce = functools.partial(accel.reduce, reduction="mean") if world > 1 else None
    balancer = build_balancer("uncertainty", list(tasks), {}, reduce)
    state.optimizer.add_param_group({"params": list(balancer.parameters()), "weight_decay": 0.0})
    model, optimizer = accel.prepare(state.model, state.optimizer)
    norms: list[float] = []
    clip = accel.clip_grad_norm_

    def recording_clip(*args: object, **kwargs: object) -> torch.Tensor:
        norm = clip(*args, **kwargs)
        norms.append(float(norm))
        return norm

    accel.clip_grad_norm_ = recording_clip
    runner = StepRunner(accel, model, optimizer, MAX_GRAD_NORM, balancer)
    losses = []
    for step, batches in enumerate(steps):
        torch.manual_seed(step)
        runner.set_lr(config.optim.lr)
        accum = 2 if (mixed and not split) else 1
        totals, applied = runner.run(batches, accum)
        assert applied
        losses.append(totals)
    accel.clip_grad_norm_ = clip
    if not accel.is_main_process:
        return None
    unwrapped = accel.unwrap_model(model)
    weights = {n: p.detach().clone() for n, p in unwrapped.named_parameters()}
    weights |= {f"balancer.{n}": p.detach().clone() for n, p in balancer.named_parameters()}
    tasks_seen = [sorted(b) for b in steps]
    return {"losses": losses, "weights": weights, "norms": norms, "tasks": tasks_seen}


def main(corpus: str, out: str, architecture: str = "ernie") -> None:
    """Both task sets on this launch's processes (2: split; 1: the references); rank 0 saves."""
    torch.set_num_threads(1)
    from ernie_style.precision import resolve_precision

    try:
        from ernie_style.train.accelerator import make_accelerator
    except ImportError:  # before the engine moved out of the pretraining trainer
        from ernie_style.pretrain.trainer import make_accelerator

    accel = make_accelerator(resolve_precision("fp32", "cpu"))
    split = accel.num_processes == 2
    results = {mixed: train(accel, corpus, split, mixed, architecture) for mixed in (False, True)}
    if accel.is_main_process:
        torch.save({"single": results[False], "mixed": results[True]}, out)
    accel.wait_for_everyone()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(*sys.argv[1:4])
