"""Fine-tuning encoders of every family: what sits between the stock base model and a task's
final linear layer, laid out as that family's stock task models lay it out.

BERT and ERNIE encoders keep their own pooler (dense + tanh in the base model); the
multi-task model uses them as they are. The other families have no pooler in their base model:
their stock `*ForSequenceClassification` pools inside the task head, each its own way.
`FamilyEncoder` wraps such a base model with that family's part before the final layer, with
the same modules, order and activation, so a task's export is the family's own stock model:

- roberta, xlm-roberta, camembert: dropout, dense, tanh on the first token; the dense layer
  exports as `classifier.dense`, the task's final layer as `classifier.out_proj`;
- electra: the same with gelu;
- deberta-v2: its ContextPooler (dropout, dense, `pooler_hidden_act`) as `pooler.dense`, the
  final layer as `classifier`;
- modernbert: `head` (dense, act, norm) on the cls or mean pool, the final layer `classifier`.

Token classification and question answering read the sequence output: the base model's last
hidden states (ModernBERT: through the same `head`, as its stock token and QA models do).
Segment ids reach the base model only where it has segment rows to read them (`type_vocab_size`
>= 2: BERT, ERNIE, ELECTRA); RoBERTa's single row and DeBERTa-v3's none are left at their
default, which is what the stock model computes when a tokenizer gives no segment ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.activations import ACT2FN

#: Sequence-level, token-level and question-answering stock task models.
EXPORT_KINDS = ("sequence", "token", "question")


@dataclass(frozen=True)
class HeadLayout:
    """Where a family's stock task models keep their layers: the stock prefix of the pooler's
    dense layer (None: ModernBERT's shared `head`), the final linear layer's name in each
    export kind, the pooler activation (an `ACT2FN` name, or `config:KEY`) and dropout key."""

    pooler_prefix: str | None
    sequence_classifier: str
    question_classifier: str
    activation: str = "tanh"
    dropout_key: str = "classifier_dropout"


_ROBERTA = HeadLayout("classifier.dense.", "classifier.out_proj.", "qa_outputs.")
#: model_type -> the layout of its stock task models (families whose base has no pooler).
LAYOUTS: dict[str, HeadLayout] = {
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "electra": HeadLayout("classifier.dense.", "classifier.out_proj.", "qa_outputs.", "gelu"),
    "deberta-v2": HeadLayout(
        "pooler.dense.", "classifier.", "qa_outputs.", "config:pooler_hidden_act", "pooler_dropout"
    ),
    "modernbert": HeadLayout(None, "classifier.", "classifier.", "", ""),
}
#: The families whose base models take no pooler argument at all.
_POOLER_ARGUMENT = ("roberta", "xlm-roberta", "camembert")


class FirstTokenPooler(nn.Module):
    """Dropout, dense and an activation on the first token (RoBERTa's, ELECTRA's and
    DeBERTa's classification heads up to their final linear layer)."""

    def __init__(self, hidden_size: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[activation]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Pooled [B, H] from hidden states [B, T, H]."""
        return self.activation(self.dense(self.dropout(hidden[:, 0])))


class FamilyEncoder(nn.Module):
    """A stock base model without a pooler (`base`) plus its family's pooled output (`pooler`,
    or ModernBERT's `head`), called like a BERT encoder: the output has `last_hidden_state`
    (what token-level heads read) and `pooler_output`."""

    def __init__(self, base: PreTrainedModel) -> None:
        super().__init__()
        config = base.config
        self.layout = LAYOUTS[config.model_type]
        self.base = base
        self.takes_token_types = takes_token_types(config)
        if self.layout.pooler_prefix is None:
            from transformers.models.modernbert.modeling_modernbert import (
                ModernBertPredictionHead,
            )

            self.head = ModernBertPredictionHead(config)
        else:
            if getattr(config, "pooler_hidden_size", config.hidden_size) != config.hidden_size:
                raise ValueError(
                    f"{config.model_type}: pooler_hidden_size {config.pooler_hidden_size} != "
                    f"hidden_size {config.hidden_size} is not supported"
                )
            activation = self.layout.activation
            if activation.startswith("config:"):
                activation = getattr(config, activation.removeprefix("config:"))
            dropout = getattr(config, self.layout.dropout_key, None)
            if dropout is None:
                dropout = getattr(config, "hidden_dropout_prob", 0.1)
            self.pooler = FirstTokenPooler(config.hidden_size, activation, float(dropout))
        self.initialise_head()

    @property
    def config(self) -> Any:
        """The base model's config."""
        return self.base.config

    def initialise_head(self) -> None:
        """(Re)initialise the pooled-output layers as transformers does (normal weights with
        the config's `initializer_range`, zero biases, unit norms); seed the RNG first."""
        std = float(getattr(self.config, "initializer_range", 0.02))
        for module in (self.pooler if self.layout.pooler_prefix else self.head).modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> SimpleNamespace:
        """`last_hidden_state` [B, T, H] and `pooler_output` [B, H]."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if self.takes_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.base(input_ids=input_ids, **kwargs).last_hidden_state
        if self.layout.pooler_prefix is not None:
            return SimpleNamespace(
                last_hidden_state=hidden, pooler_output=self.pooler(hidden, attention_mask)
            )
        pooled = self.head(_modernbert_pool(hidden, attention_mask, self.config))
        return SimpleNamespace(last_hidden_state=self.head(hidden), pooler_output=pooled)

    def stock_state(self, kind: str, final: nn.Linear) -> dict[str, torch.Tensor]:
        """The weights of the family's stock `kind` model (one of `EXPORT_KINDS`) with `final`
        as its last linear layer: base model under its prefix, pooler/head, final layer."""
        prefix = self.base.base_model_prefix
        layout = self.layout
        state = {f"{prefix}.{k}": v for k, v in self.base.state_dict().items()}
        if layout.pooler_prefix is None:  # ModernBERT: `head` before every final layer
            state |= {f"head.{k}": v for k, v in self.head.state_dict().items()}
        elif kind == "sequence":
            state |= {
                f"{layout.pooler_prefix}{k}": v for k, v in self.pooler.dense.state_dict().items()
            }
        name = {
            "sequence": layout.sequence_classifier,
            "token": "classifier.",
            "question": layout.question_classifier,
        }[kind]
        state |= {f"{name}{k}": v for k, v in final.state_dict().items()}
        return {k: v.detach().clone() for k, v in state.items()}


def _modernbert_pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, config: Any
) -> torch.Tensor:
    """ModernBERT's sequence-classification pooling: the first token, or the masked mean."""
    if config.classifier_pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=torch.bool)
    summed = (hidden * attention_mask.unsqueeze(-1)).sum(dim=1)
    return summed / attention_mask.sum(dim=1, keepdim=True)


def takes_token_types(config: Any) -> bool:
    """Whether a model reads segment ids: it has at least two segment rows."""
    return int(getattr(config, "type_vocab_size", 0) or 0) >= 2


def stock_inputs(config: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs a stock model of `config` takes from a collated batch ([.., T] flattened to
    [N, T]); segment ids only where the model reads them."""
    names = ["input_ids", "attention_mask"]
    if takes_token_types(config) and "token_type_ids" in batch:
        names.append("token_type_ids")
    return {k: batch[k].reshape(-1, batch[k].shape[-1]) for k in names}


def wrap_encoder(base: PreTrainedModel) -> nn.Module:
    """`base` itself when it has a pooler (BERT, ERNIE), else a `FamilyEncoder`; a model of
    another type without a pooler is refused naming its model_type."""
    model_type = base.config.model_type
    if model_type in LAYOUTS:
        return FamilyEncoder(base)
    if getattr(base, "pooler", None) is None:
        supported = ", ".join(["bert", "ernie", *sorted(LAYOUTS)])
        raise ValueError(
            f"encoder: model_type {model_type!r} has no pooler and no fine-tuning adapter; "
            f"supported: {supported}"
        )
    return base


def _base_kwargs(model_type: str) -> dict[str, Any]:
    """RoBERTa-like base models leave their (unused) pooler out, as their task models do."""
    return {"add_pooling_layer": False} if model_type in _POOLER_ARGUMENT else {}


def encoder_from_config(config: Any, trust_remote_code: bool = False) -> nn.Module:
    """A randomly initialised fine-tuning encoder of `config` (weights are loaded after)."""
    base = AutoModel.from_config(
        config, trust_remote_code=trust_remote_code, **_base_kwargs(config.model_type)
    )
    return wrap_encoder(base)


def encoder_from_pretrained(path: Path, config: Any, trust_remote_code: bool = False) -> nn.Module:
    """The fine-tuning encoder of a local checkpoint (safetensors only, never from a hub)."""
    base = AutoModel.from_pretrained(
        str(path),
        config=config,
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **_base_kwargs(config.model_type),
    )
    return wrap_encoder(base)


def stock_config(encoder: nn.Module) -> Any:
    """A fresh copy of the encoder's config, for a stock task model of its architecture."""
    return AutoConfig.for_model(**encoder.config.to_dict())
