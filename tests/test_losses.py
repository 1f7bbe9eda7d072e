"""The chunked cross-entropy equals the stock loss in value and gradient."""

from __future__ import annotations

import pytest
import torch

from ernie_style.pretrain.losses import CHUNK_ROWS, cross_entropy


@pytest.mark.parametrize("rows", [1, CHUNK_ROWS, 3 * CHUNK_ROWS + 5])
def test_chunked_cross_entropy_matches_the_stock_loss(rows):
    torch.manual_seed(rows)
    logits = (torch.randn(rows, 2048) * 4).bfloat16().requires_grad_()
    targets = torch.randint(0, 2048, (rows,))
    expected = torch.nn.functional.cross_entropy(logits.float(), targets)
    (expected_grad,) = torch.autograd.grad(expected * 3.0, logits)
    got = cross_entropy(logits, targets)
    (got_grad,) = torch.autograd.grad(got * 3.0, logits)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-5)


def test_narrow_or_fp32_or_no_grad_logits_use_the_stock_loss():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1])
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert cross_entropy(logits, targets).grad_fn.name() == expected.grad_fn.name()
    wide = torch.randn(4, 4096).bfloat16()
    with torch.no_grad():
        value = cross_entropy(wide, torch.tensor([1, 2, 3, 4]))
    torch.testing.assert_close(
        value, torch.nn.functional.cross_entropy(wide.float(), torch.tensor([1, 2, 3, 4]))
    )
