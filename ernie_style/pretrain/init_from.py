"""Start pretraining from an existing encoder (`model.init_from`): an ERNIE encoder or release, or
a BERT-family checkpoint (`BertModel`, `BertForMaskedLM`, `BertForPreTraining`, ...).

The backbone's architecture (sizes, vocabulary, positions, activation) is taken from the
checkpoint, not from `model.preset`. A BERT checkpoint is mapped into an `ErnieModel` weight for
weight (the layouts are the same): its two token-type rows fill the first two of ERNIE's four
segment rows. What ERNIE adds starts so that the encoder computes exactly what the checkpoint
computes: the task embeddings start at zero (added to every token, they change nothing until
trained) and the extra segment rows start as copies of segment 0. Only the pooler, when the
checkpoint has none, starts from the usual random initialisation. An MLM head in the
checkpoint (`cls.predictions.*`) is returned for the knowledge-masking head; without one that
head starts fresh. Weights are read from safetensors only; anything that does not map exactly is
one clear error naming the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import ErnieConfig, ErnieModel

from ernie_style.pretrain.examples import MAX_SEGMENTS
from ernie_style.pretrain.model import TASK_TYPE_VOCAB_SIZE
from ernie_style.untrusted import refuse_pickle_weights

#: BERT config fields an `ErnieConfig` takes over unchanged.
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)
#: Prefixes of the encoder's weights in BERT checkpoints with heads (`BertForMaskedLM`: `bert.`).
_ENCODER_PREFIXES = ("bert.", "ernie.")
#: The masked-LM head of a BERT/ERNIE checkpoint -> our knowledge-masking head's names.
_MLM_HEAD = {
    "cls.predictions.transform.dense.weight": "transform.dense.weight",
    "cls.predictions.transform.dense.bias": "transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias": "transform.LayerNorm.bias",
    "cls.predictions.bias": "bias",
}


def load_encoder_checkpoint(path: str | Path) -> tuple[ErnieModel, dict[str, torch.Tensor]]:
    """An `ErnieModel` with task embeddings (`TASK_TYPE_VOCAB_SIZE` rows) and `MAX_SEGMENTS`
    segment types from a local ERNIE or BERT-family directory, and the checkpoint's masked-LM
    head weights (named as our masked-LM head's; empty if it has none)."""
    path = Path(path)
    key = "model.init_from"
    raw = _read_config_json(path, key)
    refuse_pickle_weights(path, key)
    config = _mapped_config(raw, path, key)
    if _has_task_embeddings(raw):
        model = ErnieModel.from_pretrained(
            str(path), config=config, local_files_only=True, use_safetensors=True
        )
        return model, _mlm_head(_read_weights(path, key, only=set(_MLM_HEAD)))
    model = ErnieModel(config)
    weights = _read_weights(path, key)
    _load_bert_encoder(model, weights, path, key)
    return model, _mlm_head(weights)


def load_backbone(path: str | Path) -> ErnieModel:
    """Load an `ErnieModel` with task embeddings from a local ERNIE or BERT-family directory
    (never from a hub): `load_encoder_checkpoint` without the masked-LM head."""
    return load_encoder_checkpoint(path)[0]


def encoder_config(path: str | Path, key: str = "model.init_from") -> ErnieConfig:
    """The `ErnieConfig` `load_encoder_checkpoint` gives the checkpoint at `path`, from its
    config.json alone (no weights read); anything that does not map is an error naming `key`."""
    path = Path(path)
    return _mapped_config(_read_config_json(path, key), path, key)


def _read_config_json(path: Path, key: str) -> dict[str, Any]:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{key}: {path} is not a model directory (no config.json)")
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def _has_task_embeddings(raw: dict[str, Any]) -> bool:
    """An ERNIE checkpoint with task embeddings: it loads as it is, no mapping needed."""
    return raw.get("model_type") == "ernie" and bool(raw.get("use_task_id"))


def _mapped_config(raw: dict[str, Any], path: Path, key: str) -> ErnieConfig:
    """The checkpoint's architecture as an ERNIE config with task embeddings."""
    if _has_task_embeddings(raw):
        return ErnieConfig.from_pretrained(str(path), local_files_only=True)
    kind = raw.get("model_type")
    if kind not in ("bert", "ernie"):
        raise ValueError(
            f"{key}: {path} has model_type {kind!r}; supported: ernie (with or without task "
            "embeddings) and bert (BERT-family checkpoints with the BERT weight layout)"
        )
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{key}: {path}: only absolute position embeddings map onto ERNIE")
    if raw.get("type_vocab_size", 2) > MAX_SEGMENTS:
        raise ValueError(
            f"{key}: {path} has {raw['type_vocab_size']} token types; ERNIE here has {MAX_SEGMENTS}"
        )
    return ErnieConfig(
        **{field: raw[field] for field in _SHARED_FIELDS if field in raw},
        type_vocab_size=MAX_SEGMENTS,
        use_task_id=True,
        task_type_vocab_size=TASK_TYPE_VOCAB_SIZE,
    )


def _read_weights(path: Path, key: str, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (only those named in `only`, read lazily, when given)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{key}: {path} has no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        if only is None:
            weights |= load_file(str(file))
            continue
        with safe_open(str(file), framework="pt") as handle:
            names = only & set(handle.keys())
            weights |= {name: handle.get_tensor(name) for name in names}
    return weights


def _load_bert_encoder(
    model: ErnieModel, weights: dict[str, torch.Tensor], path: Path, key: str
) -> None:
    """Copy the encoder's weights into `model`: every BERT encoder weight must find its place
    with the same shape; only ERNIE's additions (task embeddings) may be missing."""
    encoder = {}
    for name, tensor in weights.items():
        if name.startswith("cls."):
            continue
        for prefix in _ENCODER_PREFIXES:
            name = name.removeprefix(prefix)
        if name != "embeddings.position_ids":  # a buffer older checkpoints saved
            encoder[name] = tensor
    token_types = encoder.pop("embeddings.token_type_embeddings.weight", None)
    own = model.state_dict()
    unexpected = sorted(set(encoder) - set(own))
    wrong = sorted(n for n in encoder if n in own and own[n].shape != encoder[n].shape)
    # ERNIE's additions, and the pooler, which masked-LM checkpoints do not have, start fresh.
    allowed_missing = {"embeddings.token_type_embeddings.weight"} | {
        n for n in own if n.startswith(("embeddings.task_type_embeddings", "pooler."))
    }
    missing = sorted(set(own) - set(encoder) - allowed_missing)
    if unexpected or wrong or missing:
        raise ValueError(
            f"{key}: {path}: the weights do not map onto an ERNIE encoder (unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}, missing {missing[:5]})"
        )
    model.load_state_dict(encoder, strict=False)
    start_additions_at_the_checkpoint(model, token_types)


def start_additions_at_the_checkpoint(model: ErnieModel, token_types: torch.Tensor | None) -> None:
    """Make step 0 the checkpoint: zero task embeddings, the checkpoint's segment rows, and every
    segment row it lacks a copy of its first row (a checkpoint without any: all rows zero)."""
    embeddings = model.embeddings
    with torch.no_grad():
        embeddings.task_type_embeddings.weight.zero_()
        rows = embeddings.token_type_embeddings.weight
        if token_types is None:
            rows.zero_()
            return
        rows[: len(token_types)] = token_types
        rows[len(token_types) :] = token_types[0]


def _mlm_head(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's masked-LM head under our head's names (all of it or nothing)."""
    head = {ours: weights[theirs] for theirs, ours in _MLM_HEAD.items() if theirs in weights}
    return head if len(head) == len(_MLM_HEAD) else {}
