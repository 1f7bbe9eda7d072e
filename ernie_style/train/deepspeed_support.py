"""DeepSpeed (ZeRO 1/2/3) support: raw `deepspeed.initialize` for torchrun launches, and
checkpoint state gathered per parameter *name*.

ZeRO keeps fp32 master weights and Adam moments in flat, partitioned buffers. Gathering them
into full per-parameter tensors (DeepSpeed's `safe_get_full_*`) makes a DeepSpeed checkpoint
the same format as a plain one, so it resumes on another number of processes, without
DeepSpeed, or with newly added tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def is_deepspeed_engine(model: Any) -> bool:
    """Whether `model` is a DeepSpeedEngine (from accelerate or `deepspeed.initialize`)."""
    return type(model).__name__ == "DeepSpeedEngine"


def resolve_config(
    path: str | Path, micro_batch: int, accum: int, world: int, config: Any, precision: str
) -> dict:
    """A DeepSpeed JSON config with its "auto" values filled from the run config and the
    resolved precision (`bf16`, `fp16` or `fp32`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deepspeed config {path} does not exist")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from error
    fill_auto(ds, micro_batch, accum, world, config, precision)
    return ds


def fill_auto(
    ds: dict, micro_batch: int, accum: int, world: int, config: Any, precision: str
) -> None:
    """Fill DeepSpeed's "auto" batch, clipping and precision fields in place; `precision` is
    the run's resolved one (`bf16`, `fp16` or `fp32`)."""
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = accum
    ds["train_batch_size"] = micro_batch * accum * world
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = config.optim.max_grad_norm
    for key in ("bf16", "fp16"):
        wanted = precision == key
        section = ds.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = wanted
    zero = ds.get("zero_optimization", {})
    for key in list(zero):
        if zero[key] == "auto":
            del zero[key]  # DeepSpeed's own defaults (accelerate derives these from hidden size)


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict) -> Any:
    """`deepspeed.initialize` with our optimizer (torch AdamW: no op compilation needed)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def gather_full_state(engine: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """fp32 weights and AdamW state per parameter name (collective: every rank must call)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _link_optimizer_state(engine)
    weights, state = {}, {}
    step = _optimizer_step(engine)
    for name, param in engine.module.named_parameters():
        weights[name] = safe_get_full_fp32_param(param).detach().cpu().clone()
        moments = {
            key: safe_get_full_optimizer_state(param, key).detach().cpu().clone()
            for key in ("exp_avg", "exp_avg_sq")
        }
        state[name] = moments | {"step": torch.tensor(float(step))}
    # Tied weights appear once in named_parameters, as in a plain state_dict.
    persistent = set(engine.module.state_dict())
    buffers = {
        n: b.detach().cpu().clone() for n, b in engine.module.named_buffers() if n in persistent
    }
    return weights | buffers, {"state": state, "param_groups": []}


def restore_full_state(
    engine: Any, weights: dict[str, torch.Tensor], saved: dict[str, Any]
) -> bool:
    """Put fp32 master weights, AdamW moments and step back into a freshly initialized engine
    (collective under ZeRO-3: every rank must call). Returns True: the resume is exact.

    ZeRO-1/2 keep each parameter's low-precision copy in full on every rank: it is overwritten
    from the saved fp32 weights. ZeRO-3 partitioned the module's weights (loaded from the same
    checkpoint before `initialize`) into that copy already; its fp32 master partitions and Adam
    state are set per parameter through the same `safe_set_full_*` calls.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero3 = engine.zero_optimization_stage() == 3
    _drop_stale_state(engine)
    _materialize_adam_state(engine)
    _link_optimizer_state(engine)
    step = None
    for name, param in engine.module.named_parameters():
        if name in weights:
            safe_set_full_fp32_param(param, weights[name].to(torch.float32))
            if not zero3:
                with torch.no_grad():
                    param.data.copy_(weights[name].to(param.dtype))
        moments = saved["state"].get(name)
        if moments:
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(param, moments[key].to(torch.float32), key)
            step = moments.get("step", step)
    if step is not None:
        for state in _base_optimizer(engine).state.values():
            if "step" in state:
                state["step"] = (
                    step.clone() if isinstance(state["step"], torch.Tensor) else int(step.item())
                )
    return True


def _drop_stale_state(engine: Any) -> None:
    """Forget base-optimizer state keyed by tensors DeepSpeed does not optimize: a checkpoint
    loaded into the torch optimizer before `initialize` left per-parameter entries there,
    which no step updates (and whose `step` would otherwise be read back as the run's)."""
    base = _base_optimizer(engine)
    live = {id(flat) for flat in _stepped_tensors(engine)}
    for key in [k for k in base.state if id(k) not in live]:
        del base.state[key]


def _stepped_tensors(engine: Any) -> list[torch.Tensor]:
    """The flat fp32 partitions the base optimizer steps: its param groups' tensors (ZeRO-1/2),
    or ZeRO-3's `fp32_partitioned_groups_flat` (put into the groups only during a step)."""
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    if flats is not None:
        return list(flats)
    return [p for group in _base_optimizer(engine).param_groups for p in group["params"]]


def _materialize_adam_state(engine: Any) -> None:
    """Create AdamW's per-partition state as torch would on its first step (zeros), so it can
    be linked and filled before any step has run."""
    base = _base_optimizer(engine)
    for flat in _stepped_tensors(engine):
        if not base.state.get(flat):
            base.state[flat] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(flat, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(flat, memory_format=torch.preserve_format),
            }


def _link_optimizer_state(engine: Any) -> None:
    """(Re)link each parameter to its Adam-state fragments. ZeRO-1/2 does this lazily inside
    its first step, for the first parameter group only; linking again covers every group."""
    zero = engine.optimizer
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def _base_optimizer(engine: Any) -> torch.optim.Optimizer:
    optimizer = engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)


def _optimizer_step(engine: Any) -> int:
    """AdamW's step count, read from the state of a tensor the optimizer steps."""
    base = _base_optimizer(engine)
    for flat in _stepped_tensors(engine):
        value = base.state.get(flat, {}).get("step")
        if value is not None:
            return int(value.item() if isinstance(value, torch.Tensor) else value)
    return 0
