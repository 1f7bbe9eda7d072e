"""Fine-tuning heads, one per task type, over the (possibly task-specific) encoder output.

Every head is `forward(sequence_output [B, T, H], pooled_output [B, H], labels=None,
**batch_extras) -> HeadOutput(loss, logits)` (loss None without labels) plus
`predict(logits)`. A head reads only one of the two encoder outputs (`head.reads` is
"pooled" or "sequence"); the other may be None. Unknown batch extras are ignored, so a
trainer can pass a batch's remaining fields through.

| task type              | reads    | logits                   | loss                           |
|------------------------|----------|--------------------------|--------------------------------|
| `classification`       | pooled   | [B, C]                   | cross-entropy, labels [B]      |
| `pair_classification`  | pooled   | [B, C]                   | cross-entropy, labels [B]      |
| `regression`           | pooled   | [B]                      | MSE, float labels [B]          |
| `ranking`              | pooled   | [Q, N], B = Q x N pairs  | listwise softmax CE / pairwise |
| `token_classification` | sequence | [B, T, C]                | cross-entropy, -100 ignored    |
| `question_answering`   | sequence | [B, T, 2] start, end     | mean of start/end CE (pointer) |

Every head holds `dropout` and a `classifier` linear layer, initialised like `transformers`
(normal 0.02, zero bias), so `transformers_head_state` maps each one to the `classifier`
of a stock `ErnieForSequenceClassification` (classification, pair classification;
regression and ranking with num_labels=1) or `ErnieForTokenClassification` (token
classification); `transformers_export_spec` gives the architecture and config fields.
The stock model reproduces the fine-tuned task only with `hard` sharing: the mixture
layers of `ernie_style.finetune.sharing` have no `transformers` counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ernie_style.finetune.config import TASK_TYPES as TASK_TYPES  # re-exported
from ernie_style.pretrain.examples import IGNORE_INDEX

#: Initial weight standard deviation, as `ErnieConfig.initializer_range`.
INITIALIZER_RANGE = 0.02


@dataclass
class HeadOutput:
    """A head's loss (None when no labels were given) and logits."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class FinetuneHead(nn.Module):
    """Base class: dropout + a linear `classifier` over the encoder output the head reads."""

    task_type: ClassVar[str] = ""
    #: Which encoder output the head reads: "pooled" ([B, H]) or "sequence" ([B, T, H]).
    reads: ClassVar[str] = "pooled"

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=INITIALIZER_RANGE)
        nn.init.zeros_(self.classifier.bias)

    def _input(
        self, sequence_output: torch.Tensor | None, pooled_output: torch.Tensor | None
    ) -> torch.Tensor:
        hidden = pooled_output if self.reads == "pooled" else sequence_output
        if hidden is None:
            raise ValueError(f"a {self.task_type} head reads the {self.reads} output, got None")
        return hidden

    def forward(
        self,
        sequence_output: torch.Tensor | None,
        pooled_output: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        **batch_extras: Any,
    ) -> HeadOutput:
        """Logits, and the loss when `labels` are given."""
        logits = self.classifier(self.dropout(self._input(sequence_output, pooled_output)))
        return HeadOutput(None if labels is None else self.loss(logits, labels), logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, **batch_extras: Any) -> torch.Tensor:
        """The task loss of `logits` against `labels` (a scalar)."""
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predictions from logits: class ids for classification types."""
        return logits.argmax(dim=-1)


class ClassificationHead(FinetuneHead):
    """One text -> C classes: pooled [CLS] -> dropout -> linear; cross-entropy."""

    task_type = "classification"

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(hidden_size, num_labels, dropout)
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, **batch_extras: Any) -> torch.Tensor:
        """Mean cross-entropy over the batch (labels [B] class ids)."""
        return F.cross_entropy(logits.float(), labels.long(), label_smoothing=self.label_smoothing)


class PairClassificationHead(ClassificationHead):
    """Two segments ([CLS] a [SEP] b [SEP]) -> C classes; the same head as classification."""

    task_type = "pair_classification"


class RegressionHead(FinetuneHead):
    """One score per example (e.g. STS similarity): pooled -> dropout -> linear(H, 1); MSE."""

    task_type = "regression"

    def __init__(self, hidden_size: int, num_labels: int = 1, dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_labels, dropout)

    def forward(
        self,
        sequence_output: torch.Tensor | None,
        pooled_output: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        **batch_extras: Any,
    ) -> HeadOutput:
        """Scores [B] and, with labels, the mean squared error."""
        hidden = self._input(sequence_output, pooled_output)
        scores = self.classifier(self.dropout(hidden)).squeeze(-1)
        return HeadOutput(None if labels is None else self.loss(scores, labels), scores)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, **batch_extras: Any) -> torch.Tensor:
        """Mean squared error between scores [B] and float labels [B] (in float32)."""
        return F.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The raw scores."""
        return logits


class RankingHead(FinetuneHead):
    """Relevance ranking as in MT-DNN: a query with N candidates is encoded as N (query,
    candidate) pairs laid out query-major (row q * N + j is candidate j of query q); each
    pair is scored by linear(pooled) and the scores are reshaped to [Q, N].

    N comes from the batch extra `candidate_mask` ([Q, N], False on padded candidates, whose
    scores are set to the dtype's lowest value), else the extra `num_candidates`, else the
    head option `num_candidates`, else the width of 2-D labels.

    Labels are either the index of the relevant candidate per query ([Q] integers, MT-DNN) or
    graded relevance ([Q, N] floats, 0 = irrelevant). Losses (`ranking_loss`):

    - "listwise" (default): softmax cross-entropy over each query's candidates with the
      relevant one as target (= `F.cross_entropy(scores, labels)` for index labels); graded
      relevance uses the target distribution relevance / sum(relevance) (ListNet top-one
      form, identical for a single relevant candidate); queries without any relevance are
      skipped.
    - "pairwise": mean over all candidate pairs (i, j) of a query with rel_i > rel_j of
      log(1 + exp(-(s_i - s_j))) (`pairwise_loss="logistic"`, RankNet) or
      max(0, margin - (s_i - s_j)) (`"hinge"`), pairs pooled over the whole batch.

    With no usable query or pair the loss is a zero that keeps the graph.
    """

    task_type = "ranking"

    def __init__(
        self,
        hidden_size: int,
        num_labels: int = 1,
        dropout: float = 0.1,
        ranking_loss: str = "listwise",
        pairwise_loss: str = "logistic",
        margin: float = 1.0,
        num_candidates: int | None = None,
    ) -> None:
        super().__init__(hidden_size, num_labels, dropout)
        if ranking_loss not in {"listwise", "pairwise"}:
            raise ValueError(f"ranking_loss must be 'listwise' or 'pairwise', not {ranking_loss!r}")
        if pairwise_loss not in {"logistic", "hinge"}:
            raise ValueError(f"pairwise_loss must be 'logistic' or 'hinge', not {pairwise_loss!r}")
        if num_candidates is not None and num_candidates < 1:
            raise ValueError(f"num_candidates must be positive, got {num_candidates}")
        self.ranking_loss = ranking_loss
        self.pairwise_loss = pairwise_loss
        self.margin = margin
        self.num_candidates = num_candidates

    def _width(self, rows: int, labels: torch.Tensor | None, extras: dict[str, Any]) -> int:
        mask = extras.get("candidate_mask")
        if mask is not None:
            width = int(mask.shape[-1])
        elif extras.get("num_candidates") is not None:
            width = int(extras["num_candidates"])
        elif self.num_candidates is not None:
            width = self.num_candidates
        elif labels is not None and labels.dim() == 2:
            width = int(labels.shape[1])
        else:
            raise ValueError(
                "ranking head: pass candidate_mask or num_candidates (batch extra or head "
                "option) or 2-D relevance labels to know the number of candidates per query"
            )
        if width < 1 or rows % width:
            raise ValueError(f"{rows} scored pairs do not split into queries of {width}")
        return width

    def forward(
        self,
        sequence_output: torch.Tensor | None,
        pooled_output: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        **batch_extras: Any,
    ) -> HeadOutput:
        """Scores [Q, N] and, with labels, the ranking loss."""
        scores = self.classifier(self.dropout(self._input(sequence_output, pooled_output)))
        scores = scores.view(-1, self._width(scores.shape[0], labels, batch_extras))
        mask = batch_extras.get("candidate_mask")
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)
        loss = None if labels is None else self.loss(scores, labels, candidate_mask=mask)
        return HeadOutput(loss, scores)

    def relevance(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Relevance [Q, N] (float) from index labels [Q] or relevance labels [Q, N]."""
        if labels.dim() == 1:
            return F.one_hot(labels.long(), scores.shape[1]).to(torch.float32)
        if labels.shape != scores.shape:
            raise ValueError(f"relevance labels {tuple(labels.shape)} for scores {scores.shape}")
        return labels.to(torch.float32)

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
        **batch_extras: Any,
    ) -> torch.Tensor:
        """Listwise or pairwise ranking loss of scores [Q, N] (see the class docstring)."""
        scores = logits.float()
        valid = (
            torch.ones_like(scores, dtype=torch.bool)
            if candidate_mask is None
            else candidate_mask.bool()
        )
        relevance = self.relevance(scores, labels).masked_fill(~valid, 0.0)
        # Written without data-dependent branches or indexing (no host-device sync).
        if self.ranking_loss == "listwise":
            if labels.dim() == 1:
                return F.cross_entropy(scores, labels.long())
            totals = relevance.sum(dim=-1, keepdim=True)
            target = relevance / totals.clamp_min(torch.finfo(torch.float32).tiny)
            log_probs = F.log_softmax(scores, dim=-1)
            per_query = -torch.where(target > 0, target * log_probs, 0.0).sum(dim=-1)
            used = (totals.squeeze(-1) > 0).to(per_query.dtype)
            return (per_query * used).sum() / used.sum().clamp_min(1.0)
        pairs = relevance[:, :, None] > relevance[:, None, :]
        pairs = pairs & valid[:, :, None] & valid[:, None, :]
        diff = scores[:, :, None] - scores[:, None, :]
        if self.pairwise_loss == "logistic":
            terms = F.softplus(-diff)
        else:
            terms = F.relu(self.margin - diff)
        terms = torch.where(pairs, terms, 0.0)
        return terms.sum() / pairs.sum().clamp_min(1).to(terms.dtype)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores [Q, N] (rank candidates by descending score; argmax = top candidate)."""
        return logits


class TokenClassificationHead(FinetuneHead):
    """BIO tagging: dropout -> linear over every position of the sequence output; the loss
    counts only positions whose label is not -100 (the data gives a label to the first
    sub-token of each word and -100 to the others, padding and special tokens)."""

    task_type = "token_classification"
    reads = "sequence"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, **batch_extras: Any) -> torch.Tensor:
        """Mean cross-entropy over labelled positions (a graph-keeping zero if none)."""
        flat_labels = labels.reshape(-1).long()
        flat_logits = logits.reshape(-1, logits.shape[-1]).float()
        total = F.cross_entropy(
            flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        # = the mean over labelled positions; 0 (not NaN) when there are none; no sync.
        count = (flat_labels != IGNORE_INDEX).sum().clamp_min(1)
        return total / count.to(total.dtype)


class PointerHead(FinetuneHead):
    """The answer pointer shared by every task phrased as questions (decaNLP): a Linear(H, 2)
    `classifier` -> start and end logits per position ([B, T, 2], padded positions -1e4);
    loss = the mean of the start and end cross-entropies (labels [B, 2]). It maps one to one
    onto the `qa_outputs` layer of a stock `...ForQuestionAnswering` model."""

    task_type = "question_answering"
    reads = "sequence"

    def __init__(self, hidden_size: int, num_labels: int = 2, dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_labels, dropout)

    def forward(
        self,
        sequence_output: torch.Tensor | None,
        pooled_output: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **batch_extras: Any,
    ) -> HeadOutput:
        """Start/end logits (padding masked when `attention_mask` is given) and the loss."""
        hidden = self._input(sequence_output, pooled_output)
        logits = self.classifier(self.dropout(hidden)).float()
        if attention_mask is not None:
            logits = logits.masked_fill(attention_mask[..., None] == 0, -1e4)
        return HeadOutput(None if labels is None else self.loss(logits, labels), logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, **batch_extras: Any) -> torch.Tensor:
        """(CE(start logits, start) + CE(end logits, end)) / 2 over the batch."""
        start = F.cross_entropy(logits[..., 0], labels[:, 0].long())
        end = F.cross_entropy(logits[..., 1], labels[:, 1].long())
        return (start + end) / 2


#: The head class of each task type (of `TASK_TYPES`, which the config module defines).
HEAD_TYPES: dict[str, type[FinetuneHead]] = {
    cls.task_type: cls
    for cls in (
        ClassificationHead,
        PairClassificationHead,
        RegressionHead,
        RankingHead,
        TokenClassificationHead,
        PointerHead,
    )
}

_HEAD_OPTIONS: dict[str, frozenset[str]] = {
    "classification": frozenset({"label_smoothing"}),
    "pair_classification": frozenset({"label_smoothing"}),
    "regression": frozenset(),
    "ranking": frozenset({"ranking_loss", "pairwise_loss", "margin", "num_candidates"}),
    "token_classification": frozenset(),
    "question_answering": frozenset(),
}


def build_head(
    task_type: str,
    hidden_size: int,
    num_labels: int = 1,
    dropout: float = 0.1,
    **options: Any,
) -> FinetuneHead:
    """The head of a task type.

    `num_labels` must be 1 for regression and ranking (one score per example or pair) and at
    least 2 for the classification types. Options: `label_smoothing` (classification, pair
    classification); `ranking_loss`, `pairwise_loss`, `margin`, `num_candidates` (ranking).
    An unknown type or option, or an option the type does not take, is a ValueError.
    """
    if task_type not in HEAD_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; choose one of {list(TASK_TYPES)}")
    extra = sorted(set(options) - _HEAD_OPTIONS[task_type])
    if extra:
        raise ValueError(
            f"option(s) {extra} not valid for a {task_type} head; valid: "
            f"{sorted(_HEAD_OPTIONS[task_type]) or 'none'}"
        )
    if task_type in {"regression", "ranking"}:
        if num_labels != 1:
            raise ValueError(f"a {task_type} head has num_labels=1, got {num_labels}")
    elif task_type == "question_answering":
        if num_labels != 2:
            raise ValueError(f"a question_answering head has num_labels=2, got {num_labels}")
    elif num_labels < 2:
        raise ValueError(f"a {task_type} head needs num_labels >= 2, got {num_labels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return HEAD_TYPES[task_type](hidden_size, num_labels, dropout, **options)


@dataclass(frozen=True)
class ExportSpec:
    """How a head maps to a stock `transformers` model: the architecture class name and the
    `ErnieConfig` fields `num_labels` and `problem_type` (None leaves it to transformers)."""

    architecture: str
    num_labels: int
    problem_type: str | None

    @property
    def token_level(self) -> bool:
        """Whether the stock model is a token-classification model."""
        return self.architecture.endswith("TokenClassification")


def transformers_export_spec(head: FinetuneHead) -> ExportSpec:
    """The stock architecture of a head. Every type can be exported:

    - classification, pair_classification: `ErnieForSequenceClassification`, num_labels=C,
      problem_type "single_label_classification";
    - regression: `ErnieForSequenceClassification`, num_labels=1, problem_type "regression";
    - ranking: `ErnieForSequenceClassification`, num_labels=1 scoring one (query, candidate)
      pair per row, problem_type None (rank a query's candidates by the logit; the ranking
      loss has no stock counterpart);
    - token_classification: `ErnieForTokenClassification`, num_labels=C.
    """
    if isinstance(head, TokenClassificationHead):
        return ExportSpec("ErnieForTokenClassification", head.num_labels, None)
    if isinstance(head, RegressionHead):
        return ExportSpec("ErnieForSequenceClassification", 1, "regression")
    if isinstance(head, RankingHead):
        return ExportSpec("ErnieForSequenceClassification", 1, None)
    if isinstance(head, ClassificationHead):
        return ExportSpec(
            "ErnieForSequenceClassification", head.num_labels, "single_label_classification"
        )
    raise ValueError(f"no transformers export for {type(head).__name__}")


def transformers_head_state(head: FinetuneHead) -> dict[str, torch.Tensor]:
    """`classifier.weight` [C, H] and `classifier.bias` [C] (detached copies) for the model
    `transformers_export_spec(head)` names; its `dropout` has no weights. Loaded with the
    encoder's weights under `ernie.` (with the pooler for `ErnieForSequenceClassification`;
    `ErnieForTokenClassification` has none, leave `ernie.pooler.*` out), the stock model gives
    the head's logits (regression: [B, 1] where the head gives [B]; ranking: one row per
    pair)."""
    transformers_export_spec(head)
    return {
        "classifier.weight": head.classifier.weight.detach().clone(),
        "classifier.bias": head.classifier.bias.detach().clone(),
    }
