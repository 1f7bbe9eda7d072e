"""Faster CPU training kernels for the encoder: dropout and attention.

On CPU, `torch.nn.functional.dropout` draws its mask with a per-element Bernoulli sampler that
costs more than the matmuls it follows in a small encoder, and SDPA with dropout falls back to
an unfused path. Here the keep-mask is built from random bytes drawn in bulk by numpy's PCG64,
seeded from torch's generator, so `torch.manual_seed` still fixes every mask (runs stay exactly
reproducible and resumable). The keep probability is quantised to 1/65536.

`use_cpu_kernels(backbone)` swaps the backbone's hidden dropouts for `FastDropout` and selects
the `ernie_cpu` attention (eager attention with the same dropout). Parameters and saved weights
are untouched; a release loads in stock transformers as before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

#: Name of the attention implementation registered with transformers.
CPU_ATTENTION = "ernie_cpu"


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """Boolean mask, True with probability 1 - p, drawn from a seed taken from torch's RNG."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    count = int(np.prod(shape))
    raw = np.random.default_rng(seed).bytes(2 * count)
    bits = np.frombuffer(raw, dtype=np.uint16)
    return torch.from_numpy(bits >= round(p * 65536)).view(shape)


def dropout_scale(p: float, dtype: torch.dtype) -> tuple[float, float]:
    """(keep scale, drop probability) for inverted dropout in `dtype`.

    The scale 1 / (1 - p) is rounded to `dtype` (bf16 keeps 8 bits) and the drop probability
    adjusted to 1 - 1 / scale, so a kept-and-scaled element has expectation exactly 1 (the
    multiplication is then one pass over the data, and unbiased). For p = 0.1 in bf16 the
    effective drop rate is 0.0986.
    """
    scale = float(torch.tensor(1.0 / (1.0 - p), dtype=dtype))
    return scale, 1.0 - 1.0 / scale


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of `x` with a `keep_mask` (training only; callers check)."""
    if p <= 0.0:
        return x
    scale, drop = dropout_scale(p, x.dtype)
    keep = keep_mask(x.shape, drop).to(x.device)
    mask = torch.where(keep, torch.tensor(scale, dtype=x.dtype), torch.tensor(0, dtype=x.dtype))
    return x * mask


class FastDropout(nn.Module):
    """Drop-in for `nn.Dropout` using `fast_dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity in eval mode or at p = 0."""
        if not self.training or self.p == 0.0:
            return x
        return fast_dropout(x, self.p)

    def extra_repr(self) -> str:
        """Shown by `print(model)`."""
        return f"p={self.p}"


def cpu_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Eager attention (`[B, heads, T, d]` inputs, additive mask) with `fast_dropout`; without
    dropout (evaluation, inference, p = 0) PyTorch's fused SDPA, which is faster there."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if not (dropout and module.training):
        mask = None if attention_mask is None else attention_mask.to(query.dtype)
        output = nn.functional.scaled_dot_product_attention(
            query, key, value.to(query.dtype), attn_mask=mask, scale=scaling
        )
        return output.transpose(1, 2).contiguous(), None
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        # In the scores' dtype: an fp32 mask would promote the [B, heads, T, T] scores to fp32
        # under autocast, and cast them back after softmax (which accumulates in fp32 anyway).
        weights = weights + attention_mask.to(weights.dtype)
    weights = nn.functional.softmax(weights, dim=-1)
    if dropout and module.training:
        weights = fast_dropout(weights, dropout)
    output = torch.matmul(weights.to(value.dtype), value)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(CPU_ATTENTION, cpu_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_ATTENTION, eager_mask)


def uses_additive_mask(backbone: nn.Module) -> bool:
    """Whether the backbone's attention takes an additive float mask (eager kinds)."""
    return backbone.config._attn_implementation in ("eager", CPU_ATTENTION)


def use_fast_dropout(module: nn.Module) -> None:
    """Replace every `nn.Dropout` inside `module` by a `FastDropout` of the same rate."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))


def uses_fast_dropout(module: nn.Module) -> bool:
    """Whether `module` holds `FastDropout` layers (heads added later should too)."""
    return any(isinstance(m, FastDropout) for m in module.modules())


def use_cpu_kernels(backbone: nn.Module) -> None:
    """Switch a backbone to `FastDropout` and the `ernie_cpu` attention, in place."""
    use_fast_dropout(backbone)
    backbone.config._attn_implementation = CPU_ATTENTION


def resolve_attention(requested: str, device_type: str) -> str:
    """`auto` -> `ernie_cpu` on CPU, `sdpa` elsewhere; other names are kept."""
    if requested != "auto":
        return requested
    return CPU_ATTENTION if device_type == "cpu" else "sdpa"
