"""Cross-entropy for wide (vocabulary-sized) logits that never materialises fp32 copies.

`nn.functional.cross_entropy(logits.float(), targets)` over masked-LM logits `[N, V]` in bf16
writes an fp32 copy, a log-softmax, a zero-filled gradient and the log-softmax backward: four
passes over N x V floats. `cross_entropy` walks the rows in cache-sized chunks instead, computing
each chunk's loss and its gradient (softmax - one-hot) in fp32 in the forward pass and keeping the
gradient in the logits' dtype; backward only scales it. Results equal the stock loss up to the
rounding of the stored gradient to the logits' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Rows per chunk: a chunk of fp32 logits (rows x V) stays in the CPU's L2 cache.
CHUNK_ROWS = 32
#: Below this width the stock loss is as fast; the chunked path is for vocabulary logits.
MIN_CHUNKED_WIDTH = 1024


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0]
        grad = torch.empty_like(logits)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, rows, CHUNK_ROWS):
            chunk = logits[start : start + CHUNK_ROWS].float()
            target = targets[start : start + CHUNK_ROWS, None]
            log_norm = torch.logsumexp(chunk, dim=-1, keepdim=True)
            total += (log_norm - chunk.gather(1, target)).sum()
            probs = chunk.sub_(log_norm).exp_()
            probs.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=probs.dtype))
            grad[start : start + CHUNK_ROWS] = probs
        ctx.save_for_backward(grad)
        ctx.rows = rows
        return total / rows

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad * (grad_output / ctx.rows).to(grad.dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `[N, C]` logits against `[N]` class indices (fp32 result).

    Wide low-precision logits that need a gradient take the chunked path; everything else (and
    evaluation) uses `nn.functional.cross_entropy` in fp32.
    """
    chunked = (
        logits.requires_grad
        and torch.is_grad_enabled()
        and logits.dim() == 2
        and logits.shape[-1] >= MIN_CHUNKED_WIDTH
        and logits.dtype in (torch.bfloat16, torch.float16)
        and targets.numel() > 0
    )
    if chunked:
        return _ChunkedCrossEntropy.apply(logits, targets)
    return nn.functional.cross_entropy(logits.float(), targets)
