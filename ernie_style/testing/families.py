"""Tiny random checkpoints of every supported encoder family, built on the spot (no downloads):
a stock `*ForMaskedLM` model and a tokenizer of the family's kind, saved like a hub checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ernie_style.testing import ROOT

__all__ = ["FAMILY_TOKENIZERS", "make_family_checkpoint", "sample_texts", "train_family_tokenizer"]

#: model.architecture -> the tokenizer kind its checkpoints ship.
FAMILY_TOKENIZERS = {
    "bert": "wordpiece",
    "roberta": "byte_level_bpe",
    "xlm-roberta": "unigram",
    "deberta-v2": "unigram",
    "modernbert": "byte_level_bpe",
    "electra": "wordpiece",
}


def sample_texts(documents: int = 20) -> list[str]:
    """Texts of the first `documents` articles of the bundled sample corpus."""
    path = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for _, line in zip(range(documents), handle, strict=False)]


def train_family_tokenizer(kind: str, texts: list[str], vocab_size: int = 1200) -> Any:
    """A `wordpiece` (uncased BERT), `byte_level_bpe` (RoBERTa) or `unigram` (XLM-R)
    tokenizer trained on `texts`."""
    from ernie_style.testing import tokenizers
    from ernie_style.tokenizer import train_wordpiece

    if kind == "wordpiece":
        return train_wordpiece(texts, vocab_size=vocab_size)
    return getattr(tokenizers, f"train_{kind}")(texts, vocab_size=vocab_size)


def make_family_checkpoint(architecture: str, path: Path, seed: int = 0, **sizes: int) -> Path:
    """Save a randomly initialised `architecture` masked-LM checkpoint (hidden 32, 2 layers,
    2 heads unless `sizes` say otherwise) with its family's tokenizer to `path`."""
    import torch

    from ernie_style.pretrain.families import build_family_backbone, family_config

    tokenizer = train_family_tokenizer(FAMILY_TOKENIZERS[architecture], sample_texts())
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2} | sizes
    sizes.setdefault("intermediate_size", 4 * sizes["hidden_size"])
    torch.manual_seed(seed)
    config = family_config(architecture, sizes, tokenizer, max_position_embeddings=128, dropout=0.1)
    model = build_family_backbone(config).mlm
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path
