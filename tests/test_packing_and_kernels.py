"""Sequence packing and the CPU kernels give the padded/stock computation, only faster."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ernie_style.cpu_kernels import (
    CPU_ATTENTION,
    FastDropout,
    fast_dropout,
    keep_mask,
    resolve_attention,
    use_cpu_kernels,
)
from ernie_style.pretrain.model import ErniePretrainingModel
from ernie_style.pretrain.packing import MIN_SAVING, pack_batch, pack_rows, plan_packing
from ernie_style.testing.model import tiny_backbone


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=40), st.integers(64, 128))
def test_pack_rows_places_every_example_once_within_capacity(lengths, capacity):
    rows = pack_rows(lengths, capacity)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)
    # First fit: an example opens a row only when it fits in no earlier row, so any two rows
    # together exceed the capacity: at most one row is at most half full (and hence fewer than
    # 2 * total / capacity + 1 rows). 11/9 OPT bounds need OPT itself, which a lower bound such
    # as total / capacity does not give ([38, 50 x 6] at 87 needs 7 rows).
    sums = [sum(lengths[i] for i in row) for row in rows]
    assert sum(1 for total in sums if 2 * total <= capacity) <= 1
    assert len(rows) < 2 * sum(lengths) / capacity + 1


def test_pack_rows_rejects_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="exceeds capacity"):
        pack_rows([5, 9], 8)


def _random_batch(lengths: list[int], width: int, vocab: int = 50) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(len(lengths))
    batch_size = len(lengths)
    valid = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    ids = torch.randint(5, vocab, (batch_size, width), generator=generator) * valid
    segments = (torch.arange(width)[None] >= torch.tensor(lengths)[:, None] // 2).long() * valid
    return {
        "input_ids": ids,
        "attention_mask": valid.long(),
        "token_type_ids": segments,
        "task_type_ids": torch.full((batch_size, width), 3) * valid,
    }


@pytest.mark.parametrize("attention", ["sdpa", "eager", CPU_ATTENTION])
def test_packed_encoding_equals_the_padded_encoding(attention):
    backbone = tiny_backbone(vocab_size=50)
    if attention == CPU_ATTENTION:
        use_cpu_kernels(backbone)
    else:
        backbone.config._attn_implementation = attention
    padded = ErniePretrainingModel(backbone, {}, pack_sequences=False).eval()
    packed = ErniePretrainingModel(backbone, {}, pack_sequences=True).eval()
    lengths = [7, 30, 12, 3, 16, 9, 32, 5]
    batch = _random_batch(lengths, width=32)
    assert len(pack_rows(lengths, 32)) < len(lengths)
    with torch.no_grad():
        hidden, pooled = padded.encode(batch)
        hidden_packed, pooled_packed = packed.encode(batch)
    valid = batch["attention_mask"].bool()
    # Equal up to float rounding, not bit for bit: packed rows have other shapes, so the matmuls
    # and softmax reduce in another order (a full batch, which is not repacked, is bit-identical:
    # test_a_full_batch_skips_packing_and_equals_the_padded_encoding).
    torch.testing.assert_close(hidden_packed[valid], hidden[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_packed, pooled, atol=1e-5, rtol=1e-5)
    assert hidden_packed[~valid].abs().max() == 0


def test_packing_gradients_match_the_padded_ones():
    lengths = [10, 4, 6, 3]
    batch = _random_batch(lengths, width=16)
    grads = []
    for pack in (False, True):
        model = ErniePretrainingModel(tiny_backbone(vocab_size=50), {}, pack_sequences=pack).eval()
        hidden, pooled = model.encode(batch)
        (hidden[batch["attention_mask"].bool()].square().sum() + pooled.sum()).backward()
        grads.append(model.backbone.encoder.layer[0].attention.self.query.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_a_full_batch_keeps_one_example_per_row():
    packed = pack_batch(_random_batch([16, 15, 16], width=16))
    assert packed.inputs["input_ids"].shape == (3, 16)


def test_packing_is_planned_only_where_it_saves_work():
    assert not plan_packing(_random_batch([16, 15, 16], width=16)["attention_mask"]).worthwhile
    plan = plan_packing(_random_batch([10, 4, 6, 3], width=16)["attention_mask"])
    assert plan.worthwhile and plan.saving >= MIN_SAVING


def _module_order(model: ErniePretrainingModel, batch: dict) -> list[str]:
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda m, a, name=name: order.append(name))
        for name, module in model.named_modules()
        if name
    ]
    with torch.no_grad():
        model.encode(batch)
    for handle in handles:
        handle.remove()
    return order


def test_packed_and_padded_batches_run_the_same_modules_in_the_same_order():
    """ZeRO-3 gathers parameters in module order: ranks must agree whatever their data."""
    model = ErniePretrainingModel(tiny_backbone(vocab_size=50), {}, pack_sequences=True).eval()
    full, short = _random_batch([16, 15, 16], width=16), _random_batch([10, 4, 6, 3], width=16)
    assert _module_order(model, full) == _module_order(model, short)
    assert _module_order(model, full).count("backbone.pooler") == 2


def test_a_full_batch_skips_packing_and_equals_the_padded_encoding():
    backbone = tiny_backbone(vocab_size=50)
    batch = _random_batch([16, 15, 16], width=16)
    with torch.no_grad():
        packed = ErniePretrainingModel(backbone, {}, pack_sequences=True).eval().encode(batch)
        padded = ErniePretrainingModel(backbone, {}, pack_sequences=False).eval().encode(batch)
    torch.testing.assert_close(packed[0], padded[0], atol=0, rtol=0)
    torch.testing.assert_close(packed[1], padded[1], atol=0, rtol=0)


def test_cpu_attention_equals_stock_attention_in_eval():
    stock = tiny_backbone(vocab_size=50).eval()
    fast = tiny_backbone(vocab_size=50)
    use_cpu_kernels(fast)
    fast.eval()
    batch = _random_batch([12, 5, 9], width=12)
    with torch.no_grad():
        expected = stock(**batch).last_hidden_state
        got = fast(**batch).last_hidden_state
    # Different kernels (mask added in the scores' dtype, fused ops): equal up to float rounding.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    assert fast.state_dict().keys() == stock.state_dict().keys()


def test_fast_dropout_is_seeded_by_torch_and_unbiased():
    x = torch.ones(400, 500)
    torch.manual_seed(3)
    first = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    again = fast_dropout(x, 0.1)
    assert torch.equal(first, again)
    assert not torch.equal(first, fast_dropout(x, 0.1))
    kept = (first != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.005
    assert abs(first.mean().item() - 1.0) < 0.01
    assert first.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    assert keep_mask((3, 4), 0.0).all()


def test_fast_dropout_module_is_identity_in_eval_and_backpropagates():
    layer = FastDropout(0.5)
    x = torch.randn(8, 8, requires_grad=True)
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    out.sum().backward()
    assert torch.equal(x.grad != 0, out != 0)


def test_auto_attention_picks_the_cpu_kernel_on_cpu_only():
    assert resolve_attention("auto", "cpu") == CPU_ATTENTION
    assert resolve_attention("auto", "cuda") == "sdpa"
    assert resolve_attention("eager", "cpu") == "eager"
