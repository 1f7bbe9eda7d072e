"""Task heads. Each returns `(logits, targets)` for the positions its loss needs only:
token heads score labelled positions, never the padding or ignored ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ernie_style.pretrain.examples import IGNORE_INDEX


class TaskHead(nn.Module):
    """Base class: `forward(sequence_output, pooled_output, labels) -> (logits, targets)`."""

    def forward(
        self, sequence_output: torch.Tensor, pooled_output: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, C] and integer targets [N] for the N scored items of the batch."""
        raise NotImplementedError


def _labelled(
    sequence_output: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    mask = labels != IGNORE_INDEX
    return sequence_output[mask], labels[mask]


class TokenClassificationHead(TaskHead):
    """Linear classifier over the hidden state of each labelled token."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(
        self, sequence_output: torch.Tensor, pooled_output: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for labelled positions only."""
        hidden, targets = _labelled(sequence_output, labels)
        return self.classifier(self.dropout(hidden)), targets


class SequenceClassificationHead(TaskHead):
    """Linear classifier over the pooled [CLS] representation."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(
        self, sequence_output: torch.Tensor, pooled_output: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One row of logits per example."""
        return self.classifier(self.dropout(pooled_output)), labels


class MaskedLMHead(TaskHead):
    """BERT/ERNIE masked-LM head whose decoder is tied to the backbone's word embeddings.

    The transform has the same layout as `ErnieForMaskedLM.cls.predictions` so a release can
    map it one to one. Logits are computed at masked positions only (N x vocab, not B x T x
    vocab), the main saving of a masked-LM step.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        from transformers.models.ernie.modeling_ernie import ErniePredictionHeadTransform

        if hasattr(backbone, "masked_lm_logits"):  # another family: its own head, in the backbone
            self.__dict__["family_head"] = backbone.masked_lm_logits
            return
        self.__dict__["family_head"] = None
        config = backbone.config
        self.transform = ErniePredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        # A plain reference, not a submodule: the weight is owned (and saved) by the backbone.
        self.__dict__["word_embeddings"] = backbone.embeddings.word_embeddings

    def forward(
        self, sequence_output: torch.Tensor, pooled_output: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocabulary logits at masked positions."""
        hidden, targets = _labelled(sequence_output, labels)
        if self.family_head is not None:
            return self.family_head(hidden), targets
        hidden = self.transform(hidden)
        weight = self.word_embeddings.weight
        return nn.functional.linear(hidden, weight.to(hidden.dtype), self.bias.to(hidden.dtype)), (
            targets
        )
