"""Sequence packing: several short examples share one row of the encoder batch.

Pretraining examples vary in length (sentence-pair tasks are often half the width of the
batch), so a padded batch spends much of its compute on padding. `pack_batch` places the
examples of a batch into as few rows as possible (first-fit decreasing), gives each example its
own position ids (0, 1, ...) and a block-diagonal attention mask so no token attends across
examples, and `PackedBatch.unpack` scatters the encoder output back to the `[batch, width,
hidden]` layout the heads expect. The result equals the padded computation up to float
rounding; only the padding work is gone.

`plan_packing` decides first: a batch whose packed rows would not save at least
`MIN_SAVING` of the padded positions (e.g. full-width document batches) is left padded, so it
skips the gather/scatter and the block mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: Packed rows are padded to a multiple of this (tensor-core / SIMD friendly widths).
WIDTH_MULTIPLE = 8
#: Pack only when it removes at least this fraction of the padded batch's positions.
MIN_SAVING = 0.10


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing: rows of example indices whose lengths fit `capacity`.

    Ties keep the original order, so the plan is deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        if lengths[index] > capacity:
            raise ValueError(f"example of length {lengths[index]} exceeds capacity {capacity}")
        for row, room in enumerate(free):
            if lengths[index] <= room:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(capacity - lengths[index])
    return rows


@dataclass
class PackingPlan:
    """Which examples share which row, and the packed row width."""

    rows: list[list[int]]
    lengths: list[int]
    width: int
    packed_width: int

    @property
    def saving(self) -> float:
        """Fraction of the padded batch's positions that packing removes."""
        padded = len(self.lengths) * self.width
        return 1.0 - len(self.rows) * self.packed_width / padded

    @property
    def worthwhile(self) -> bool:
        """True when packing saves at least `MIN_SAVING` of the positions."""
        return self.saving >= MIN_SAVING


def plan_packing(attention_mask: torch.Tensor) -> PackingPlan:
    """First-fit-decreasing rows for a `[batch, width]` padding mask."""
    width = attention_mask.shape[1]
    lengths = attention_mask.sum(1).tolist()
    rows = pack_rows(lengths, width)
    used = max(sum(lengths[i] for i in row) for row in rows)
    packed_width = -(-used // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    return PackingPlan(rows, lengths, width, packed_width)


@dataclass
class PackedBatch:
    """Backbone inputs for the packed rows plus the map back to the padded layout."""

    inputs: dict[str, torch.Tensor]
    source: torch.Tensor  # [B, W] flat index into the packed output; padding -> dummy zero row
    batch_size: int
    width: int

    def unpack(self, packed_hidden: torch.Tensor) -> torch.Tensor:
        """`[rows, packed_width, H]` encoder output -> `[batch, width, H]` (zeros at padding)."""
        hidden = packed_hidden.reshape(-1, packed_hidden.shape[-1])
        hidden = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[-1])])
        return hidden[self.source.reshape(-1)].view(self.batch_size, self.width, -1)


def pack_batch(
    batch: Mapping[str, Any],
    additive_mask_dtype: torch.dtype | None = None,
    plan: PackingPlan | None = None,
) -> PackedBatch:
    """Pack a padded batch (`input_ids`, `attention_mask`, `token_type_ids`, `task_type_ids`).

    The 4D mask is boolean (True = attend) for SDPA, or additive (0 / dtype min) in
    `additive_mask_dtype` for eager attention. A full batch packs into as many rows as it had
    (callers usually skip packing then; see `PackingPlan.worthwhile`).
    """
    attention_mask = batch["attention_mask"]
    batch_size, width = attention_mask.shape
    plan = plan if plan is not None else plan_packing(attention_mask)
    rows, lengths, packed_width = plan.rows, plan.lengths, plan.packed_width
    row_of = torch.empty(batch_size, dtype=torch.long)
    offset_of = torch.empty(batch_size, dtype=torch.long)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            row_of[index], offset_of[index] = row, offset
            offset += lengths[index]
    positions = torch.arange(width)
    valid = attention_mask.bool().cpu()
    target = (row_of * packed_width + offset_of)[:, None] + positions[None]
    dummy = len(rows) * packed_width
    source = torch.where(valid, target, torch.full_like(target, dummy))
    flat_target = target[valid]

    device = batch["input_ids"].device
    inputs: dict[str, torch.Tensor] = {}
    for key in ("input_ids", "token_type_ids", "task_type_ids"):
        packed = torch.zeros(dummy, dtype=batch[key].dtype, device=device)
        packed[flat_target.to(device)] = batch[key][valid.to(device)]
        inputs[key] = packed.view(len(rows), packed_width)
    packed_positions = torch.zeros(dummy, dtype=torch.long)
    packed_positions[flat_target] = positions.expand(batch_size, width)[valid]
    inputs["position_ids"] = packed_positions.view(len(rows), packed_width).to(device)
    segment = torch.full((dummy,), -1, dtype=torch.long)
    segment[flat_target] = torch.arange(batch_size)[:, None].expand(batch_size, width)[valid]
    inputs["attention_mask"] = _block_mask(
        segment.view(len(rows), packed_width), additive_mask_dtype
    ).to(device)
    return PackedBatch(inputs, source.to(device), batch_size, width)


def _block_mask(segment: torch.Tensor, additive_dtype: torch.dtype | None) -> torch.Tensor:
    """[rows, 1, W, W] mask: a token attends to tokens of its own example; padding positions
    attend to themselves only (so no softmax row is empty)."""
    same = segment[:, :, None] == segment[:, None, :]
    real = segment[:, :, None] >= 0
    eye = torch.eye(segment.shape[1], dtype=torch.bool)[None]
    allowed = ((same & real) | (eye & ~real))[:, None]
    if additive_dtype is None:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=additive_dtype)
    return mask.masked_fill_(~allowed, torch.finfo(additive_dtype).min)
