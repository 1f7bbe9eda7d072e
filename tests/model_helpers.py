"""A tiny ERNIE backbone for head/loss checks in the task tests."""

from __future__ import annotations

import torch
from transformers import ErnieConfig, ErnieModel


def tiny_backbone(vocab_size: int, seed: int = 0) -> ErnieModel:
    """One layer, hidden 32, 4 segment types, task embeddings (seeded)."""
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
