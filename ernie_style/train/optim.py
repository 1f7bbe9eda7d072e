"""The optimizer section both run configs share (`optim:`), and AdamW built from it.

Pretraining and fine-tuning read the same keys with the same meaning; only the defaults differ
(`PretrainOptim`, `FinetuneOptim`). Fine-tuning configs written before the section existed put
these keys at the top level: `migrate_flat_keys` moves them into `optim` with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ernie_style.config import Override, option

#: The keys of the section (fine-tuning configs once had them at the top level).
OPTIM_KEYS = (
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "warmup_steps",
    "warmup_ratio",
    "lr_schedule",
    "grad_accum_steps",
    "max_grad_norm",
)


@dataclass
class OptimSection:
    """AdamW and the learning-rate schedule."""

    lr: float = option(5e-4, "peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    betas: list[float] = option([0.9, 0.98], "AdamW betas")
    eps: float = option(1e-6, "AdamW epsilon")
    warmup_steps: int | None = option(
        100, "linear warm-up steps (pretraining: per stage when restarted); overrides warmup_ratio"
    )
    warmup_ratio: float = option(0.0, "warm-up as a share of the steps, when warmup_steps is unset")
    lr_schedule: Literal["linear", "cosine", "constant"] = option("linear", "decay after warm-up")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)")

    def validate(self) -> None:
        """Check ranges; errors name the dotted key (unset pretraining values are chosen later)."""
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        for key in ("weight_decay", "eps", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ValueError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.grad_accum_steps <= 0:
            raise ValueError(f"optim.grad_accum_steps must be > 0, got {self.grad_accum_steps}")

    def warmup(self, length: int) -> int:
        """Warm-up steps of a phase of `length` steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int((self.warmup_ratio or 0.0) * length)


@dataclass
class PretrainOptim(OptimSection):
    """AdamW and the learning-rate schedule (pretraining). The peak LR and the warm-up left unset
    are chosen by `PretrainConfig.validate`: from-scratch values (BERT/ERNIE recipes), or
    continued-pretraining values when `model.init_from` names a trained encoder."""

    lr: float | None = option(
        None, "peak learning rate (unset: 5e-4 from scratch, 1e-4 with model.init_from)"
    )
    warmup_steps: int | None = option(
        None,
        "linear warm-up steps (per stage when restarted); overrides warmup_ratio (unset with "
        "warmup_ratio unset: 100 from scratch; with model.init_from warmup_ratio 0.1)",
    )
    warmup_ratio: float | None = option(
        None, "warm-up as a share of the phase's steps, when warmup_steps is unset"
    )


@dataclass
class FinetuneOptim(OptimSection):
    """AdamW and the learning-rate schedule (fine-tuning defaults)."""

    lr: float = option(5e-5, "peak learning rate")
    betas: list[float] = option([0.9, 0.999], "AdamW betas")
    warmup_steps: int | None = option(None, "linear warm-up steps; overrides warmup_ratio")
    warmup_ratio: float = option(0.1, "share of the steps spent on linear warm-up")


def migrate_flat_keys(data: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Move top-level optimizer keys (the fine-tuning config shape before `optim:`) into the
    `optim` section, with a FutureWarning naming them; both places in the file is an error,
    while a top-level command-line override (`lr=3e-5`) replaces the file's `optim.lr`."""
    flat = [key for key in OPTIM_KEYS if key in data]
    if not flat:
        return dict(data)
    section = dict(data.get("optim") or {})
    # A command-line `lr=...` overrides the file's optim.lr; both in the file is an error.
    both = [key for key in flat if key in section and not isinstance(data[key], Override)]
    if both:
        raise ValueError(f"{both[0]}: given both at the top level and as optim.{both[0]}")
    moved = {k: v for k, v in data.items() if k not in flat}
    moved["optim"] = section | {key: data[key] for key in flat}
    warnings.warn(
        f"{source}: top-level {', '.join(flat)} are deprecated; write them under `optim:` "
        f"({', '.join('optim.' + k for k in flat)}); read as such this time",
        FutureWarning,
        stacklevel=2,
    )
    return moved


def decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weight matrices, none on biases and LayerNorm."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(
    model: Any, optim: OptimSection, extra: Iterable[Any] = (), fused: bool = False
) -> Any:
    """AdamW over the model (weight decay on weight matrices only) plus `extra` parameters (a loss
    balancer's, undecayed, in a group of their own); `fused` uses torch's single-kernel AdamW."""
    import torch

    groups = decay_groups(model, optim.weight_decay)
    extra = list(extra)
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused or None
    )
