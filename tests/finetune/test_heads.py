"""Fine-tuning heads: shapes, exact losses, ranking losses, masking, predict, export."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    ErnieConfig,
    ErnieForSequenceClassification,
    ErnieForTokenClassification,
    ErnieModel,
)

from ernie_style.finetune.heads import (
    TASK_TYPES,
    HeadOutput,
    build_head,
    transformers_export_spec,
    transformers_head_state,
)

H = 8


def head(task_type: str, num_labels: int = 1, **options):
    torch.manual_seed(0)
    return build_head(task_type, H, num_labels, dropout=0.0, **options)


def encoder_outputs(batch: int = 4, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch, length, H), torch.randn(batch, H)


def set_scorer(h, weight: list[float], bias: float = 0.0) -> None:
    with torch.no_grad():
        h.classifier.weight.copy_(torch.tensor([weight]))
        h.classifier.bias.fill_(bias)


@pytest.mark.parametrize("task_type", ["classification", "pair_classification"])
def test_classification_shapes_and_exact_loss(task_type):
    h = head(task_type, 3)
    seq, pooled = encoder_outputs()
    labels = torch.tensor([0, 2, 1, 2])
    out = h(seq, pooled, labels)
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (4, 3)
    expected_logits = pooled @ h.classifier.weight.T + h.classifier.bias
    torch.testing.assert_close(out.logits, expected_logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected_logits, labels))
    assert torch.equal(h.predict(out.logits), expected_logits.argmax(-1))
    # The head reads the pooled output only; no labels -> no loss.
    assert h.reads == "pooled"
    assert h(None, pooled).loss is None


def test_label_smoothing_option():
    h = head("classification", 3, label_smoothing=0.1)
    _, pooled = encoder_outputs()
    labels = torch.tensor([0, 2, 1, 2])
    out = h(None, pooled, labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels, label_smoothing=0.1))


def test_regression_shapes_and_exact_loss():
    h = head("regression")
    seq, pooled = encoder_outputs()
    labels = torch.tensor([0.5, 4.0, 2.5, 1.0])
    out = h(seq, pooled, labels)
    assert out.logits.shape == (4,)
    expected = (pooled @ h.classifier.weight.T + h.classifier.bias).squeeze(-1)
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.loss, F.mse_loss(expected, labels))
    # Integer labels are accepted (cast to float).
    torch.testing.assert_close(
        h(seq, pooled, torch.tensor([1, 2, 3, 4])).loss,
        F.mse_loss(expected, torch.tensor([1.0, 2.0, 3.0, 4.0])),
    )
    assert torch.equal(h.predict(out.logits), out.logits)


def test_ranking_listwise_is_cross_entropy_over_candidates():
    h = head("ranking")
    _, pooled = encoder_outputs(batch=6)  # 2 queries x 3 candidates, query-major
    labels = torch.tensor([2, 0])
    out = h(None, pooled, labels, num_candidates=3)
    scores = (pooled @ h.classifier.weight.T + h.classifier.bias).view(2, 3)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, scores)
    torch.testing.assert_close(out.loss, F.cross_entropy(scores, labels))
    # One-hot relevance labels give the same loss; N can come from 2-D labels.
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(h(None, pooled, one_hot).loss, out.loss)
    # Predictions are the scores; the top candidate is their argmax.
    assert torch.equal(h.predict(out.logits), scores)


def test_ranking_num_candidates_sources_and_errors():
    _, pooled = encoder_outputs(batch=6)
    assert head("ranking", num_candidates=2)(None, pooled).logits.shape == (3, 2)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert head("ranking")(None, pooled, candidate_mask=mask).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="candidate_mask or num_candidates"):
        head("ranking")(None, pooled)
    with pytest.raises(ValueError, match="do not split"):
        head("ranking")(None, pooled, num_candidates=4)


def scored_head(**options):
    """A ranking head whose score is the first pooled feature (weight [1, 0, ...])."""
    h = head("ranking", **options)
    set_scorer(h, [1.0] + [0.0] * (H - 1))
    return h


def pooled_with_scores(scores: list[float]) -> torch.Tensor:
    pooled = torch.zeros(len(scores), H)
    pooled[:, 0] = torch.tensor(scores)
    return pooled


def test_ranking_graded_listwise_hand_computed():
    h = scored_head()
    pooled = pooled_with_scores([1.0, 0.0, 2.0])
    # Relevance [1, 1, 0] -> target [1/2, 1/2, 0]: loss = -(log p0 + log p1) / 2.
    z = math.exp(1) + math.exp(0) + math.exp(2)
    expected = -(math.log(math.exp(1) / z) + math.log(1 / z)) / 2
    out = h(None, pooled, torch.tensor([[1.0, 1.0, 0.0]]))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # A query without relevant candidates is skipped; all skipped -> 0.
    both = h(None, torch.cat([pooled, pooled]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert both.loss.item() == pytest.approx(expected, rel=1e-6)
    assert h(None, pooled, torch.zeros(1, 3)).loss.item() == 0.0


def test_ranking_pairwise_hand_computed():
    pooled = pooled_with_scores([2.0, 0.0, 1.0])  # one query, scores [2, 0, 1]
    labels = torch.tensor([0])  # candidate 0 relevant: pairs (0,1) diff 2, (0,2) diff 1
    logistic = scored_head(ranking_loss="pairwise")(None, pooled, labels, num_candidates=3)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2
    assert logistic.loss.item() == pytest.approx(expected, rel=1e-6)
    hinge = scored_head(ranking_loss="pairwise", pairwise_loss="hinge", margin=1.5)
    # max(0, 1.5 - 2) = 0, max(0, 1.5 - 1) = 0.5 -> mean 0.25.
    assert hinge(None, pooled, labels, num_candidates=3).loss.item() == pytest.approx(0.25)
    # Graded relevance [2, 1, 0]: pairs (0,1) diff 2, (0,2) diff 1, (1,2) diff -1.
    graded = scored_head(ranking_loss="pairwise")(None, pooled, torch.tensor([[2.0, 1.0, 0.0]]))
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.e)) / 3
    assert graded.loss.item() == pytest.approx(expected, rel=1e-6)
    # No ordered pair (all candidates equally relevant) -> 0 loss that still backpropagates.
    flat = scored_head(ranking_loss="pairwise")(
        None, pooled.requires_grad_(), torch.tensor([[1.0, 1.0, 1.0]])
    )
    assert flat.loss.item() == 0.0
    flat.loss.backward()


def test_ranking_candidate_mask_excludes_padding():
    h = scored_head()
    pooled = pooled_with_scores([1.0, 3.0, 50.0])  # third candidate is padding
    mask = torch.tensor([[True, True, False]])
    out = h(None, pooled, torch.tensor([0]), candidate_mask=mask)
    assert out.logits[0, 2].item() == torch.finfo(torch.float32).min
    expected = F.cross_entropy(torch.tensor([[1.0, 3.0]]), torch.tensor([0]))
    torch.testing.assert_close(out.loss, expected)
    pairwise = scored_head(ranking_loss="pairwise")
    loss = pairwise(None, pooled, torch.tensor([0]), candidate_mask=mask).loss
    assert loss.item() == pytest.approx(math.log1p(math.exp(2.0)), rel=1e-6)  # pair (0,1) only
    assert torch.isfinite(out.loss)


def test_token_classification_ignores_minus_100():
    h = head("token_classification", 5)
    seq, pooled = encoder_outputs(batch=2, length=4)
    labels = torch.tensor([[-100, 1, -100, 3], [-100, 0, 4, -100]])
    out = h(seq, pooled, labels)
    assert out.logits.shape == (2, 4, 5)
    assert h.reads == "sequence"
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    # Changing the hidden states at ignored positions leaves the loss unchanged.
    seq2 = seq.clone()
    seq2[~keep] = 100.0
    torch.testing.assert_close(h(seq2, None, labels).loss, out.loss)
    assert torch.equal(h.predict(out.logits), out.logits.argmax(-1))
    assert h.predict(out.logits).shape == (2, 4)
    # No labelled position: a zero loss that still backpropagates.
    seq.requires_grad_()
    empty = h(seq, None, torch.full((2, 4), -100))
    assert empty.loss.item() == 0.0
    empty.loss.backward()
    assert seq.grad is not None


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_gradient_flows(task_type):
    num_labels = {"regression": 1, "ranking": 1, "question_answering": 2}.get(task_type, 3)
    h = build_head(task_type, H, num_labels, dropout=0.1)
    seq = torch.randn(4, 5, H, requires_grad=True)
    pooled = torch.randn(4, H, requires_grad=True)
    labels = {
        "classification": torch.tensor([0, 1, 2, 0]),
        "pair_classification": torch.tensor([0, 1, 2, 0]),
        "regression": torch.randn(4),
        "ranking": torch.tensor([1, 0]),
        "token_classification": torch.randint(0, 3, (4, 5)),
        "question_answering": torch.tensor([[0, 1], [2, 4], [1, 1], [3, 4]]),
    }[task_type]
    out = h(seq, pooled, labels, num_candidates=2, attention_mask=torch.ones(4, 5))
    out.loss.backward()
    assert h.classifier.weight.grad is not None and h.classifier.weight.grad.abs().sum() > 0
    read = pooled if h.reads == "pooled" else seq
    unread = seq if h.reads == "pooled" else pooled
    assert read.grad is not None and read.grad.abs().sum() > 0
    assert unread.grad is None


def test_build_head_errors():
    with pytest.raises(ValueError, match=r"unknown task type 'ner'.*token_classification"):
        build_head("ner", H, 3)
    with pytest.raises(ValueError, match="margin"):
        build_head("classification", H, 3, margin=1.0)
    with pytest.raises(ValueError, match="ranking_loss"):
        build_head("ranking", H, 1, ranking_loss="pointwise")
    with pytest.raises(ValueError, match="num_labels=1"):
        build_head("regression", H, 2)
    with pytest.raises(ValueError, match="num_labels >= 2"):
        build_head("classification", H, 1)
    with pytest.raises(ValueError, match="dropout"):
        build_head("classification", H, 2, dropout=1.0)
    with pytest.raises(ValueError, match="reads the pooled output"):
        build_head("classification", H, 2)(torch.zeros(1, 2, H), None)


# --- export to stock transformers models ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    config = ErnieConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return ErnieModel(config).eval()


def stock_model(encoder, h):
    spec = transformers_export_spec(h)
    fields = encoder.config.to_dict()
    fields.pop("id2label"), fields.pop("label2id")
    fields.update(num_labels=spec.num_labels, problem_type=spec.problem_type)
    config = ErnieConfig(**fields)
    cls = {
        "ErnieForSequenceClassification": ErnieForSequenceClassification,
        "ErnieForTokenClassification": ErnieForTokenClassification,
    }[spec.architecture]
    model = cls(config).eval()
    state = {f"ernie.{k}": v for k, v in encoder.state_dict().items()}
    if spec.architecture == "ErnieForTokenClassification":  # built without a pooler
        state = {k: v for k, v in state.items() if not k.startswith("ernie.pooler.")}
    state.update(transformers_head_state(h))
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize(
    ("task_type", "num_labels"),
    [
        ("classification", 3),
        ("pair_classification", 2),
        ("regression", 1),
        ("ranking", 1),
        ("token_classification", 4),
    ],
)
def test_stock_transformers_model_matches_head(tiny_encoder, task_type, num_labels):
    torch.manual_seed(2)
    h = build_head(task_type, 32, num_labels, dropout=0.1).eval()
    with torch.no_grad():  # non-trivial weights
        h.classifier.weight.normal_()
        h.classifier.bias.normal_()
    input_ids = torch.randint(1, 100, (4, 6))
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1]] * 4)
    with torch.no_grad():
        enc = tiny_encoder(input_ids=input_ids, token_type_ids=token_type_ids)
        ours = h(enc.last_hidden_state, enc.pooler_output, num_candidates=2).logits
        stock = stock_model(tiny_encoder, h)(input_ids=input_ids, token_type_ids=token_type_ids)
    # Regression gives [B] where the stock model gives [B, 1]; ranking [Q, N] vs one row per pair.
    torch.testing.assert_close(stock.logits.reshape(ours.shape), ours)


def test_export_spec():
    spec = transformers_export_spec(head("pair_classification", 3))
    assert (spec.architecture, spec.num_labels, spec.problem_type) == (
        "ErnieForSequenceClassification",
        3,
        "single_label_classification",
    )
    spec = transformers_export_spec(head("regression"))
    assert (spec.architecture, spec.num_labels, spec.problem_type) == (
        "ErnieForSequenceClassification",
        1,
        "regression",
    )
    spec = transformers_export_spec(head("ranking"))
    assert (spec.architecture, spec.num_labels) == ("ErnieForSequenceClassification", 1)
    spec = transformers_export_spec(head("token_classification", 5))
    assert (spec.architecture, spec.num_labels) == ("ErnieForTokenClassification", 5)
    state = transformers_head_state(head("token_classification", 5))
    assert set(state) == {"classifier.weight", "classifier.bias"}
    assert state["classifier.weight"].shape == (5, H)
    assert not state["classifier.weight"].requires_grad


@pytest.mark.parametrize("ranking_loss", ["listwise", "pairwise"])
def test_ranking_bfloat16_with_padding_is_finite(ranking_loss):
    h = head("ranking", ranking_loss=ranking_loss).to(torch.bfloat16)
    pooled = torch.randn(6, H, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    for labels in (torch.tensor([1, 0]), torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])):
        out = h(None, pooled, labels, candidate_mask=mask)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert torch.isfinite(pooled.grad).all()
        # Padded candidates get no gradient.
        assert torch.count_nonzero(pooled.grad[[2, 4, 5]]) == 0
        pooled.grad = None
