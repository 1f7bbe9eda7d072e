"""Encoder families other than ERNIE: pretrain or continue any masked-LM encoder transformers
knows (BERT, RoBERTa, XLM-R, DeBERTa-v2/v3, ModernBERT, ELECTRA, ...) without forking it.

`FamilyBackbone` holds the family's stock `*ForMaskedLM` model and adds what ERNIE's tasks need
on its input embeddings:

- task embeddings (`TASK_TYPE_VOCAB_SIZE` rows) and the segment rows the architecture lacks
  (BERT has 2 segment rows, RoBERTa and XLM-R 1, DeBERTa-v2 and ModernBERT none; ERNIE's tasks
  use up to `MAX_SEGMENTS`), as one additive embedding each, added to the word embeddings;
- a pooler (dense + tanh on the first token) for the sequence-level heads.

The rows of the default task (0) and of the segments the architecture has are pinned at zero
(masked in the forward pass, so they get no gradient and AdamW leaves them at zero): with the
default segment and task the backbone computes exactly what the stock model computes, at step 0
and after training. The other rows start at zero, so segment s >= the native rows starts as
segment 0 and every task starts as task 0. Export drops the additions and saves the stock
`*ForMaskedLM` model: a release of the original architecture whose outputs for the default
segment and task are the trained model's, bit for bit.

The masked-LM head is the model's own (BERT `cls`, RoBERTa/XLM-R `lm_head`, DeBERTa-v2 `cls` or
`lm_predictions` following `config.legacy`, ModernBERT `head` + `decoder`, ELECTRA's generator
head), applied at the masked positions only, with its decoder tied as the family ties it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ernie_style.pretrain.examples import MAX_SEGMENTS
from ernie_style.pretrain.model import TASK_TYPE_VOCAB_SIZE

#: `model.architecture` names of the families with a from-scratch config: each is the
#: transformers `model_type` of that family.
ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "electra")


def _cls_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.cls(hidden)


def _lm_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.lm_head(hidden)


def _deberta_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    if model.legacy:
        return model.cls(hidden)
    return model.lm_predictions(hidden, model.deberta.embeddings.word_embeddings)


def _modernbert_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.decoder(model.head(hidden))


def _electra_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.generator_lm_head(model.generator_predictions(hidden))


#: model_type -> masked-LM logits of the stock model's own head, from hidden states.
MASKED_LM_HEADS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "bert": _cls_head,
    "roberta": _lm_head,
    "xlm-roberta": _lm_head,
    "camembert": _lm_head,
    "deberta-v2": _deberta_head,
    "modernbert": _modernbert_head,
    "electra": _electra_head,
}


@dataclass(frozen=True)
class FamilySizes:
    """Config keys of a family's sizes and dropouts (names differ between families)."""

    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    #: Extra positions the family's table needs (RoBERTa counts from padding_idx + 1).
    position_offset: int = 0
    extra: tuple[tuple[str, Any], ...] = ()


_FAMILY_SIZES: dict[str, FamilySizes] = {
    "bert": FamilySizes(extra=(("type_vocab_size", 2),)),
    "roberta": FamilySizes(position_offset=2, extra=(("type_vocab_size", 1),)),
    "xlm-roberta": FamilySizes(position_offset=2, extra=(("type_vocab_size", 1),)),
    "deberta-v2": FamilySizes(
        extra=(
            ("type_vocab_size", 0),
            ("relative_attention", True),
            ("position_biased_input", False),
            ("pos_att_type", ["p2c", "c2p"]),
            ("position_buckets", 256),
            ("norm_rel_ebd", "layer_norm"),
            ("share_att_key", True),
            ("max_relative_positions", -1),
            ("legacy", False),
        )
    ),
    "modernbert": FamilySizes(
        dropout_keys=("embedding_dropout", "mlp_dropout", "attention_dropout"),
        extra=(("global_attn_every_n_layers", 2), ("local_attention", 64)),
    ),
    "electra": FamilySizes(extra=(("type_vocab_size", 2),)),
}


def family_config(
    architecture: str,
    sizes: dict[str, int],
    tokenizer: Any,
    max_position_embeddings: int,
    dropout: float,
) -> Any:
    """A from-scratch config of `architecture` (one of `ARCHITECTURES`) with `sizes`
    (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size), the tokenizer's
    vocabulary and special token ids."""
    from transformers import AutoConfig

    family = _FAMILY_SIZES[architecture]
    values: dict[str, Any] = dict(sizes) | dict(family.extra)
    values["vocab_size"] = len(tokenizer)
    values["max_position_embeddings"] = max_position_embeddings + family.position_offset
    for key in family.dropout_keys:
        values[key] = dropout
    for name in ("pad", "bos", "eos", "cls", "sep", "mask"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            values[f"{name}_token_id"] = token_id
    if architecture == "electra":
        values["embedding_size"] = sizes["hidden_size"]
    return AutoConfig.for_model(architecture, **values)


def resolve_architecture(architecture: str, init_from: str | None) -> str:
    """`model.architecture` as a `model_type` (`ernie` stays `ernie`); `auto` reads the
    checkpoint's config.json (an ERNIE checkpoint or release stays on the ERNIE path)."""
    import json

    if architecture != "auto":
        return architecture
    if not init_from:
        raise ValueError("model.architecture auto needs model.init_from (a checkpoint to read)")
    path = Path(init_from) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from {init_from}: no config.json")
    model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type", "")
    if model_type in ("ernie", "bert"):
        return "ernie"  # today's path: BERT and ERNIE weights map into an ErnieModel
    if model_type not in MASKED_LM_HEADS:
        raise ValueError(
            f"model.init_from {init_from}: model_type {model_type!r} is not supported; "
            f"supported: ernie, {', '.join(sorted(MASKED_LM_HEADS))}"
        )
    return model_type


class _AdditiveRows(nn.Module):
    """An embedding table added to the input embeddings, zero-initialised, with the first
    `pinned` rows held at zero (masked in forward: no gradient, no change)."""

    def __init__(self, rows: int, dim: int, pinned: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, dim))
        keep = torch.ones(rows, 1)
        keep[:pinned] = 0
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The (masked) rows of `ids`."""
        return nn.functional.embedding(ids, self.weight * self.keep)


class FamilyBackbone(nn.Module):
    """A stock `*ForMaskedLM` model plus additive task and segment rows and a pooler, called
    like `ErnieModel` (`input_ids`, `attention_mask`, `token_type_ids`, `task_type_ids`)."""

    def __init__(self, masked_lm: nn.Module) -> None:
        super().__init__()
        config = masked_lm.config
        if config.model_type not in MASKED_LM_HEADS:
            raise ValueError(f"model_type {config.model_type!r} has no masked-LM head adapter")
        self.mlm = masked_lm
        self.native_segments = int(getattr(config, "type_vocab_size", 0) or 0)
        dim = masked_lm.get_input_embeddings().embedding_dim
        self.task_rows = _AdditiveRows(TASK_TYPE_VOCAB_SIZE, dim, pinned=1)
        self.segment_rows = _AdditiveRows(MAX_SEGMENTS, dim, pinned=max(1, self.native_segments))
        self.pooler = _Pooler(config.hidden_size)

    @property
    def config(self) -> Any:
        """The stock model's config."""
        return self.mlm.config

    def get_input_embeddings(self) -> nn.Module:
        """The word embeddings (tied to the masked-LM decoder where the family ties them)."""
        return self.mlm.get_input_embeddings()

    def masked_lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the model's own masked-LM head for hidden states [N, H]."""
        return MASKED_LM_HEADS[self.config.model_type](self.mlm, hidden)

    def last_layer(self) -> nn.Module:
        """The last transformer layer (the last block of the base model's layer list)."""
        lists = [m for m in self.mlm.base_model.modules() if isinstance(m, nn.ModuleList)]
        return max(lists, key=len)[-1]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_type_ids: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        """`last_hidden_state` [B, T, H] of the stock base model on the word embeddings plus
        the task and segment rows."""
        embeds = self.get_input_embeddings()(input_ids)
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            embeds = embeds + self.segment_rows(token_type_ids)
            if self.native_segments > 1:  # native rows for the segments the model has
                native = torch.where(token_type_ids < self.native_segments, token_type_ids, 0)
                kwargs["token_type_ids"] = native
        if task_type_ids is not None:
            embeds = embeds + self.task_rows(task_type_ids)
        output = self.mlm.base_model(inputs_embeds=embeds, **kwargs)
        return SimpleNamespace(last_hidden_state=output.last_hidden_state)


class _Pooler(nn.Module):
    """Dense + tanh on the first token (BERT's pooler)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """Pooled [B, H]."""
        return self.activation(self.dense(sequence_output[:, 0]))


def build_family_backbone(config: Any) -> FamilyBackbone:
    """A freshly initialised backbone of a family config (seed the RNG first)."""
    from transformers import AutoModelForMaskedLM

    return FamilyBackbone(AutoModelForMaskedLM.from_config(config, trust_remote_code=False))


def load_family_backbone(path: str | Path) -> FamilyBackbone:
    """The backbone of a local checkpoint of a supported family (safetensors only, never from
    a hub); a checkpoint without a masked-LM head gets a fresh one (transformers warns)."""
    from transformers import AutoModelForMaskedLM

    from ernie_style.untrusted import refuse_pickle_weights, refuse_remote_code

    refuse_pickle_weights(Path(path), "model.init_from")
    refuse_remote_code(Path(path), "model.init_from")
    model = AutoModelForMaskedLM.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    return FamilyBackbone(model)


def save_family_release(backbone_weights: dict[str, torch.Tensor], config: Any, out: Path) -> None:
    """Write the stock `*ForMaskedLM` checkpoint of a family backbone's weights (keys
    `backbone.mlm.*`) to `out`: the additions and the pooler are dropped."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_config(config, trust_remote_code=False)
    prefix = "backbone.mlm."
    weights = {
        k.removeprefix(prefix): v for k, v in backbone_weights.items() if k.startswith(prefix)
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"release of {config.model_type}: missing {missing}, unexpected {unexpected}"
        )
    model.save_pretrained(str(out), safe_serialization=True)
