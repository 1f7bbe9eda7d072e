"""A tiny seeded ERNIE backbone for head and loss checks (the pretraining task tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import ErnieModel


def tiny_backbone(vocab_size: int, seed: int = 0) -> ErnieModel:
    """A randomly initialised (seeded) ErnieModel: one layer, hidden 32, 2 heads, 4 segment
    types, task embeddings on."""
    import torch
    from transformers import ErnieConfig, ErnieModel

    torch.manual_seed(seed)
    config = ErnieConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        type_vocab_size=4,
        use_task_id=True,
        task_type_vocab_size=16,
    )
    return ErnieModel(config)
