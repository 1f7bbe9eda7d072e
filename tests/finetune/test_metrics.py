"""Fine-tuning metrics against hand-computed values, degenerate inputs and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ernie_style.finetune.metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    entity_f1,
    entity_precision,
    entity_recall,
    entity_scores,
    f1_binary,
    f1_macro,
    f1_micro,
    get_entities,
    mcc,
    mrr,
    ndcg,
    pearson,
    spearman,
)

# Three classes, six items.
#   class 0: predicted at {0, 5}, true at {0, 5} -> tp 2, fp 0, fn 0 -> F1 1
#   class 1: predicted at {1, 4}, true at {1, 2} -> tp 1, fp 1, fn 1 -> F1 2/4
#   class 2: predicted at {2, 3}, true at {3, 4} -> tp 1, fp 1, fn 1 -> F1 2/4
MULTI_PRED = [0, 1, 2, 2, 1, 0]
MULTI_REF = [0, 1, 1, 2, 2, 0]
# Binary: TP 2 (items 0, 3), FP 1 (item 1), FN 1 (item 4), TN 1 (item 2).
BIN_PRED = [1, 1, 0, 1, 0]
BIN_REF = [1, 0, 0, 1, 1]


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert accuracy(["a", "b"], ["a", "b"]) == 1.0
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="predictions"):
        accuracy([1, 2], [1])


def test_f1_variants():
    assert f1_macro(MULTI_PRED, MULTI_REF) == pytest.approx((1 + 0.5 + 0.5) / 3)
    # Micro over all labels: tp 4, fp 2, fn 2 -> 8 / 12 = accuracy.
    assert f1_micro(MULTI_PRED, MULTI_REF) == pytest.approx(8 / 12)
    assert f1_micro(MULTI_PRED, MULTI_REF) == pytest.approx(accuracy(MULTI_PRED, MULTI_REF))
    # Micro over classes 1 and 2 only: tp 2, fp 2, fn 2 -> 4 / 8.
    assert f1_micro(MULTI_PRED, MULTI_REF, labels=[1, 2]) == pytest.approx(0.5)
    # Macro over labels given explicitly, including one never seen (F1 0).
    assert f1_macro(MULTI_PRED, MULTI_REF, labels=[0, 1, 2, 3]) == pytest.approx(2 / 4)
    # Binary: 2 TP / (2 TP + FP + FN) = 4 / 6; for class 0: tp 1, fp 1, fn 1 -> 0.5.
    assert f1_binary(BIN_PRED, BIN_REF) == pytest.approx(4 / 6)
    assert f1_binary(BIN_PRED, BIN_REF, pos_label=0) == pytest.approx(0.5)
    assert f1_binary(["yes", "no"], ["yes", "yes"], pos_label="yes") == pytest.approx(2 / 3)
    # Positive class neither predicted nor present.
    assert f1_binary([0, 0], [0, 0]) == 0.0
    assert f1_macro([], []) == 0.0


def test_mcc():
    # Binary: (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2).
    assert mcc(BIN_PRED, BIN_REF) == pytest.approx(1 / 6)
    # Gorodkin: confusion rows (true) [2,0,0], [0,1,1], [0,1,1]; c = 4, s = 6,
    # t = p = [2, 2, 2]: (4*6 - 12) / sqrt((36 - 12) * (36 - 12)) = 12 / 24.
    assert mcc(MULTI_PRED, MULTI_REF) == pytest.approx(0.5)
    assert mcc(["x", "y", "x"], ["x", "y", "x"]) == pytest.approx(1.0)
    assert mcc([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    # Degenerate: constant prediction, empty input.
    assert mcc([1, 1, 1], [0, 1, 0]) == 0.0
    assert mcc([], []) == 0.0


def test_correlations():
    # x = [1,2,3], y = [1,2,4]: dx = [-1,0,1], dy = [-4/3,-1/3,5/3]; cov sum 3,
    # sum dx^2 = 2, sum dy^2 = 14/3 -> r = 3 / sqrt(28/3) = sqrt(27/28).
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(math.sqrt(27 / 28))
    # Rank differences d = [0,-1,1,0]: rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Ties get average ranks: [1, 2.5, 2.5, 4] vs [1,2,3,4] -> 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert pearson([3, 1], [1, 3]) == pytest.approx(-1.0)
    # Degenerate: constant side, too few points -> 0.0, not NaN.
    for metric in (pearson, spearman):
        assert metric([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
        assert metric([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
        assert metric([1.0], [1.0]) == 0.0
        assert metric([], []) == 0.0


def test_get_entities_conlleval_rules():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    # I-LOC after O starts an entity; B-LOC starts another; I-ORG after LOC changes type.
    assert get_entities(tags) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    assert get_entities(["I-PER", "I-PER", "O"]) == [("PER", 0, 1)]
    assert get_entities(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert get_entities(["O", "O"]) == []
    assert get_entities([]) == []
    # IOBES tags work too.
    assert get_entities(["S-PER", "B-LOC", "E-LOC", "I-LOC"]) == [
        ("PER", 0, 0),
        ("LOC", 1, 2),
        ("LOC", 3, 3),
    ]
    with pytest.raises(ValueError, match="malformed"):
        get_entities(["PER"])
    with pytest.raises(ValueError, match="label_names"):
        get_entities([1, 2])


def test_entity_scores_hand_computed():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    # Gold: PER(0-1), LOC(3), ORG(0-2) in sentence 1 -> 3 entities.
    preds = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG", "O", "B-MISC"]]
    # Predicted: PER(0-1) ok, LOC(3) ok (I- after O starts it), ORG(0-1) wrong end, MISC(3)
    # spurious -> 2 correct of 4 predicted, 2 of 3 gold.
    precision, recall, f1 = entity_scores(preds, refs)
    assert precision == pytest.approx(2 / 4)
    assert recall == pytest.approx(2 / 3)
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # = 4/7
    assert entity_f1(preds, refs) == pytest.approx(4 / 7)
    assert entity_precision(preds, refs) == pytest.approx(0.5)
    assert entity_recall(preds, refs) == pytest.approx(2 / 3)
    # Same entity in another sentence is a different entity.
    assert entity_f1([["O"], ["B-PER"]], [["B-PER"], ["O"]]) == 0.0


def test_entity_f1_from_ids_skips_ignored_positions():
    names = ["O", "B-PER", "I-PER"]
    # Words start at positions 1, 3, 4; the others are [CLS], sub-tokens, [SEP] (-100).
    refs = np.array([[-100, 1, -100, 2, 0, -100]])
    preds = np.array([[2, 1, 0, 2, 0, 1]])  # differs from refs only at ignored positions
    assert entity_f1(preds, refs, label_names=names) == 1.0
    preds_bad = np.array([[0, 1, 0, 1, 0, 0]])  # word 2 tagged B-PER: two 1-word entities
    assert entity_scores(preds_bad, refs, label_names=names) == pytest.approx((0.0, 0.0, 0.0))


def test_entity_degenerate():
    assert entity_scores([["O", "O"]], [["O", "O"]]) == (0.0, 0.0, 0.0)
    assert entity_f1([], []) == 0.0
    # Nothing predicted: precision 0 (defined), recall 0.
    assert entity_scores([["O"]], [["B-PER"]]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="lengths"):
        entity_f1([["O"]], [["O", "O"]])


def test_mrr():
    scores = [[0.1, 0.9, 0.5], [0.3, 0.2], [1.0, 0.0]]
    relevance = [[0, 0, 1], [1, 0], [0, 0]]
    # Query 1: order [1, 2, 0] -> relevant at rank 2 -> 1/2; query 2: rank 1; query 3: none.
    assert mrr(scores, relevance) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # Ties keep the candidates' order: the relevant second candidate ranks 2nd.
    assert mrr([[0.5, 0.5]], [[0, 1]]) == pytest.approx(0.5)
    assert mrr([], []) == 0.0


def test_ndcg():
    scores = [[3.0, 2.0, 1.0]]
    relevance = [[0, 2, 1]]
    log3 = math.log2(3)
    # Linear gains: DCG = 0 + 2/log2(3) + 1/log2(4); ideal [2, 1, 0] -> 2 + 1/log2(3).
    dcg, ideal = 2 / log3 + 1 / 2, 2 + 1 / log3
    assert ndcg(scores, relevance) == pytest.approx(dcg / ideal)
    # Exponential gains 2^r - 1 = [0, 3, 1].
    assert ndcg(scores, relevance, gain="exponential") == pytest.approx(
        (3 / log3 + 1 / 2) / (3 + 1 / log3)
    )
    # @2: DCG = 2/log2(3); ideal = 2 + 1/log2(3).
    assert ndcg(scores, relevance, k=2) == pytest.approx((2 / log3) / (2 + 1 / log3))
    # @1 with the top candidate irrelevant -> 0; a query without relevant candidates -> 0.
    assert ndcg(scores, relevance, k=1) == 0.0
    assert ndcg([[1.0, 2.0]], [[0, 0]]) == 0.0
    # 2-D arrays (padded candidates with relevance 0 and a very low score change nothing).
    padded = ndcg(np.array([[3.0, 2.0, 1.0, -1e30]]), np.array([[0, 2, 1, 0]]))
    assert padded == pytest.approx(dcg / ideal)
    with pytest.raises(ValueError, match="gain"):
        ndcg(scores, relevance, gain="log")
    with pytest.raises(ValueError, match="k must"):
        ndcg(scores, relevance, k=0)


def test_perfect_predictions_score_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=50)
    for name in ("accuracy", "f1_macro", "f1_micro", "mcc"):
        assert METRICS[name](labels, labels) == pytest.approx(1.0), name
    binary = rng.integers(0, 2, size=30)
    assert f1_binary(binary, binary) == pytest.approx(1.0)
    values = rng.normal(size=40)
    assert pearson(values, values) == pytest.approx(1.0)
    assert spearman(values, values) == pytest.approx(1.0)
    # A monotone transform keeps Spearman at 1.
    assert spearman(np.exp(values), values) == pytest.approx(1.0)
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    assert entity_f1(tags, tags) == 1.0
    # Graded relevance with at least one relevant candidate per query; score = relevance.
    relevance = [np.maximum(rng.integers(0, 3, size=6), np.eye(6, dtype=int)[0]) for _ in range(5)]
    assert ndcg([r.astype(float) for r in relevance], relevance) == pytest.approx(1.0)
    assert mrr([r.astype(float) for r in relevance], relevance) == pytest.approx(1.0)


def test_values_stay_in_range():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pred, ref = rng.integers(0, 3, size=12), rng.integers(0, 3, size=12)
        for name in ("accuracy", "f1_macro", "f1_micro", "f1_binary"):
            assert 0.0 <= METRICS[name](pred, ref) <= 1.0
        assert -1.0 <= mcc(pred, ref) <= 1.0
        scores = [rng.normal(size=4) for _ in range(3)]
        rel = [rng.integers(0, 3, size=4) for _ in range(3)]
        assert 0.0 <= ndcg(scores, rel) <= 1.0
        assert 0.0 <= mrr(scores, rel) <= 1.0


def test_compute_metrics_routes_options():
    out = compute_metrics(["accuracy", "f1_binary", "mcc"], BIN_PRED, BIN_REF, pos_label=0)
    assert out == pytest.approx({"accuracy": 0.6, "f1_binary": 0.5, "mcc": 1 / 6})
    ranking = compute_metrics(["mrr", "ndcg"], [[3.0, 2.0, 1.0]], [[0, 2, 1]], k=1)
    assert ranking == pytest.approx({"mrr": 0.5, "ndcg": 0.0})
    assert compute_metrics([], [1], [1]) == {}


def test_compute_metrics_errors():
    with pytest.raises(ValueError, match=r"unknown metric.*'bleu'.*valid metrics.*accuracy"):
        compute_metrics(["accuracy", "bleu"], [1], [1])
    with pytest.raises(ValueError, match="pos_label"):
        compute_metrics(["accuracy"], [1], [1], pos_label=1)


def test_registry_names():
    expected = {
        "accuracy",
        "f1_macro",
        "f1_micro",
        "f1_binary",
        "mcc",
        "pearson",
        "spearman",
        "entity_f1",
        "mrr",
        "ndcg",
    }
    assert expected <= set(METRICS)


def test_metrics_table_lists_each_task_metric_once_with_splits_side_by_side():
    from ernie_style.finetune.evaluation import metrics_table

    table = {
        "ner": {"dev": {"entity_f1": 0.5}, "test": {"entity_f1": 0.25}},
        "sst": {"dev": {"accuracy": 0.75, "f1_macro": 0.7}, "test": {"accuracy": 0.5}},
    }
    assert metrics_table(table).splitlines() == [
        "| task | metric | dev | test |",
        "|---|---|---|---|",
        "| ner | entity_f1 | 0.5000 | 0.2500 |",
        "| sst | accuracy | 0.7500 | 0.5000 |",
        "| sst | f1_macro | 0.7000 |  |",
    ]


def test_span_metrics_compare_with_the_first_gold_span():
    from ernie_style.finetune.metrics import exact_match, span_f1

    predicted = [(3, 5), (3, 5), (0, 0), (10, 11)]
    gold = [[(3, 5)], [(4, 7)], [], [(1, 2)]]
    assert exact_match(predicted, gold) == 0.25
    # (3, 5) vs (4, 7): overlap 2, precision 2/3, recall 2/4 -> F1 4/7.
    assert span_f1(predicted, gold) == pytest.approx((1 + 4 / 7 + 0 + 0) / 4)
    assert exact_match([], []) == span_f1([], []) == 0.0


def test_majority_baseline_beside_the_metrics():
    from ernie_style.finetune.data import EncodedTask
    from ernie_style.finetune.evaluation import SplitPredictions, metrics_table

    def task(kind, labels):
        return EncodedTask("t", kind, labels, {}, {}, collator=None)

    classes = SplitPredictions(task("classification", ["neg", "pos"]), "test")
    classes.raw, classes.raw_references = [1, 1, 0, 1], [1, 0, 0, 0]
    assert classes.majority_metrics(["accuracy"]) == {"accuracy": 0.75}  # always "neg"
    tags = SplitPredictions(task("token_classification", ["O", "B-PER", "I-PER"]), "test")
    tags.raw_references = [[0, 1, 2, 0], [0, 0]]
    assert tags.majority_metrics(["entity_f1"]) == {"entity_f1": 0.0}  # every token O
    regression = SplitPredictions(task("regression", None), "test")
    regression.raw_references = [0.5, 0.1]
    assert regression.majority_metrics(["pearson"]) is None
    table = metrics_table(
        {
            "t": {"dev": {"accuracy": 0.9}, "test": {"accuracy": 0.8}},
            "r": {"test": {"pearson": 0.4}},
        },
        {"t": {"accuracy": 0.75}, "r": None},
    )
    assert "| task | metric | dev | test | test, majority label |" in table
    assert "| t | accuracy | 0.9000 | 0.8000 | 0.7500 |" in table
    assert "| r | pearson |  | 0.4000 | n/a |" in table
