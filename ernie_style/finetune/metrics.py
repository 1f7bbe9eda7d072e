"""Evaluation metrics for fine-tuning tasks: plain numpy/scipy, no scikit-learn or seqeval.

Every metric is `metric(predictions, references, **options) -> float` and is registered in
`METRICS` under its name; `compute_metrics` runs several at once.

Inputs by metric family:

- label metrics (accuracy, f1_*, mcc): 1-D sequences of labels (ints or strings).
- correlation metrics (pearson, spearman): 1-D sequences of floats.
- entity metrics (entity_f1, entity_precision, entity_recall): one tag sequence per sentence,
  e.g. `[["B-PER", "I-PER", "O"], ...]`; integer tag ids are accepted with `label_names`
  (id -> tag) and positions whose reference is `ignore_index` (-100: sub-tokens after the
  first of a word, padding) are dropped from both sides first.
- ranking metrics (mrr, ndcg): one score sequence and one relevance sequence per query
  (ragged lists or 2-D arrays). Padded candidates are harmless when their relevance is 0 and
  their score is very low.

Degenerate inputs give 0.0, never NaN: empty inputs; Pearson/Spearman with a constant side or
fewer than two points; MCC with a constant side; F1 of a class never predicted nor present;
entity scores when there are no entities (no reference entities and no predicted ones gives
0.0, as seqeval does); a query without any relevant candidate contributes 0.0 to MRR/NDCG.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

#: Reference value that marks positions to skip in token-level inputs.
IGNORE_INDEX = -100


def _labels(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(predictions), np.asarray(references)
    if pred.ndim != 1 or ref.ndim != 1:
        raise ValueError(
            f"expected 1-D predictions and references, got shapes {pred.shape}, {ref.shape}"
        )
    if pred.shape != ref.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {ref.shape[0]} references")
    return pred, ref


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to their reference (0.0 when empty)."""
    pred, ref = _labels(predictions, references)
    return float(np.mean(pred == ref)) if ref.size else 0.0


def _f1(tp: float, fp: float, fn: float) -> float:
    # 2PR / (P + R) written as 2TP / (2TP + FP + FN): equal when defined, 0 when TP = 0.
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _counts(pred: np.ndarray, ref: np.ndarray, label: Hashable) -> tuple[int, int, int]:
    tp = int(np.sum((pred == label) & (ref == label)))
    fp = int(np.sum((pred == label) & (ref != label)))
    fn = int(np.sum((pred != label) & (ref == label)))
    return tp, fp, fn


def _label_set(pred: np.ndarray, ref: np.ndarray, labels: Iterable[Hashable] | None) -> list:
    if labels is not None:
        return list(labels)
    return sorted(set(pred.tolist()) | set(ref.tolist()), key=repr)


def f1_macro(
    predictions: Sequence[Hashable],
    references: Sequence[Hashable],
    labels: Iterable[Hashable] | None = None,
) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every label seen on either
    side, as scikit-learn does); 0.0 when there are no labels."""
    pred, ref = _labels(predictions, references)
    classes = _label_set(pred, ref, labels)
    if not classes:
        return 0.0
    return float(np.mean([_f1(*_counts(pred, ref, c)) for c in classes]))


def f1_micro(
    predictions: Sequence[Hashable],
    references: Sequence[Hashable],
    labels: Iterable[Hashable] | None = None,
) -> float:
    """F1 of true/false positive and false negative counts summed over `labels` (default:
    every label seen; then equal to accuracy for single-label data). Restricting `labels`,
    e.g. leaving out a majority "other" class, is the usual relation-extraction micro F1."""
    pred, ref = _labels(predictions, references)
    totals = np.zeros(3)
    for c in _label_set(pred, ref, labels):
        totals += _counts(pred, ref, c)
    return float(_f1(*totals))


def f1_binary(
    predictions: Sequence[Hashable], references: Sequence[Hashable], pos_label: Hashable = 1
) -> float:
    """F1 of the positive class `pos_label` (default 1)."""
    pred, ref = _labels(predictions, references)
    return float(_f1(*_counts(pred, ref, pos_label)))


def mcc(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """Matthews correlation coefficient, Gorodkin's multi-class generalisation (the binary
    MCC for two classes); 0.0 when either side is constant or the input is empty."""
    pred, ref = _labels(predictions, references)
    if not ref.size:
        return 0.0
    classes = _label_set(pred, ref, None)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, ([index[r] for r in ref.tolist()], [index[p] for p in pred.tolist()]), 1)
    n = confusion.sum()
    correct = np.trace(confusion)
    true_totals, pred_totals = confusion.sum(axis=1), confusion.sum(axis=0)
    numerator = correct * n - pred_totals @ true_totals
    denominator = np.sqrt((n**2 - pred_totals @ pred_totals) * (n**2 - true_totals @ true_totals))
    return float(numerator / denominator) if denominator > 0 else 0.0


def _scores(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _labels(predictions, references)
    return pred.astype(np.float64), ref.astype(np.float64)


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when fewer than two points or either side is constant."""
    pred, ref = _scores(predictions, references)
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(ref) == 0:
        return 0.0
    return float(stats.pearsonr(pred, ref)[0])


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0.0 when fewer than two points or
    either side is constant."""
    pred, ref = _scores(predictions, references)
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(ref) == 0:
        return 0.0
    return float(stats.spearmanr(pred, ref)[0])


# --- entities over BIO tag sequences -------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    if not isinstance(tag, str):
        raise ValueError(f"tag {tag!r} is not a string (pass label_names to map tag ids)")
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in {"B", "I", "E", "S"} or not kind:
        raise ValueError(f"malformed tag {tag!r}: expected 'O' or B-/I-/E-/S- plus a type")
    return prefix, kind


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities `(type, start, end)` (end inclusive) of one tag sequence, by conlleval's rules
    (seqeval's default mode): an entity starts at B-X, at S-X, or at an I-X/E-X that does not
    continue an entity of type X; it ends before O, B-, S-, a change of type, or after E-/S-.

    >>> get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4), ('ORG', 5, 5)]
    """
    entities: list[tuple[str, int, int]] = []
    start: int | None = None
    kind = ""
    prev_prefix = "O"
    for i, tag in enumerate(tags):
        prefix, tag_kind = _split_tag(tag)
        continues = (
            start is not None
            and prefix in {"I", "E"}
            and tag_kind == kind
            and prev_prefix in {"B", "I"}
        )
        if start is not None and not continues:
            entities.append((kind, start, i - 1))
            start = None
        if prefix != "O" and not continues:
            start, kind = i, tag_kind
        if prefix in {"E", "S"} and start is not None:
            entities.append((kind, start, i))
            start = None
        prev_prefix = prefix
    if start is not None:
        entities.append((kind, start, len(tags) - 1))
    return entities


def _tag_sequences(
    predictions: Sequence[Sequence[Any]],
    references: Sequence[Sequence[Any]],
    label_names: Sequence[str] | None,
    ignore_index: int,
) -> tuple[list[list[str]], list[list[str]]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sequences for {len(references)}")
    preds, refs = [], []
    for pred_seq, ref_seq in zip(predictions, references, strict=True):
        pred_list, ref_list = (
            list(np.asarray(pred_seq).tolist()),
            list(np.asarray(ref_seq).tolist()),
        )
        if len(pred_list) != len(ref_list):
            raise ValueError(f"sequence lengths differ: {len(pred_list)} vs {len(ref_list)}")
        kept = [(p, r) for p, r in zip(pred_list, ref_list, strict=True) if r != ignore_index]
        if label_names is not None:
            kept = [
                (
                    label_names[p] if isinstance(p, int) else p,
                    label_names[r] if isinstance(r, int) else r,
                )
                for p, r in kept
            ]
        preds.append([p for p, _ in kept])
        refs.append([r for _, r in kept])
    return preds, refs


def entity_scores(
    predictions: Sequence[Sequence[Any]],
    references: Sequence[Sequence[Any]],
    label_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[float, float, float]:
    """Micro-averaged entity precision, recall and F1 over all sentences: an entity counts as
    correct only when type, start and end all match (seqeval's default, conlleval)."""
    preds, refs = _tag_sequences(predictions, references, label_names, ignore_index)
    predicted = {(i, *e) for i, tags in enumerate(preds) for e in get_entities(tags)}
    gold = {(i, *e) for i, tags in enumerate(refs) for e in get_entities(tags)}
    correct = len(predicted & gold)
    precision = correct / len(predicted) if predicted else 0.0
    recall = correct / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_f1(
    predictions: Sequence[Sequence[Any]],
    references: Sequence[Sequence[Any]],
    label_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Micro entity F1 (see `entity_scores`)."""
    return entity_scores(predictions, references, label_names, ignore_index)[2]


def entity_precision(
    predictions: Sequence[Sequence[Any]],
    references: Sequence[Sequence[Any]],
    label_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Micro entity precision (see `entity_scores`)."""
    return entity_scores(predictions, references, label_names, ignore_index)[0]


def entity_recall(
    predictions: Sequence[Sequence[Any]],
    references: Sequence[Sequence[Any]],
    label_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Micro entity recall (see `entity_scores`)."""
    return entity_scores(predictions, references, label_names, ignore_index)[1]


# --- ranking over groups -------------------------------------------------------------------


def _queries(
    predictions: Sequence[Sequence[float]], references: Sequence[Sequence[float]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} score lists for {len(references)} queries")
    out = []
    for scores, relevance in zip(predictions, references, strict=True):
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        r = np.asarray(relevance, dtype=np.float64).reshape(-1)
        if s.shape != r.shape:
            raise ValueError(f"{s.size} scores for {r.size} candidates in a query")
        # Highest score first; ties keep the candidates' order (stable sort).
        order = np.argsort(-s, kind="stable")
        out.append((s[order], r[order]))
    return out


def mrr(predictions: Sequence[Sequence[float]], references: Sequence[Sequence[float]]) -> float:
    """Mean reciprocal rank of the first relevant (relevance > 0) candidate per query, ranked
    by descending score (ties: earlier candidate first); 0.0 for a query with none relevant."""
    queries = _queries(predictions, references)
    if not queries:
        return 0.0
    values = []
    for _, relevance in queries:
        hits = np.flatnonzero(relevance > 0)
        values.append(1.0 / (hits[0] + 1) if hits.size else 0.0)
    return float(np.mean(values))


def _dcg(relevance: np.ndarray, k: int | None, gain: str) -> float:
    relevance = relevance[:k] if k is not None else relevance
    gains = 2.0**relevance - 1.0 if gain == "exponential" else relevance
    return float(np.sum(gains / np.log2(np.arange(2, relevance.size + 2))))


def ndcg(
    predictions: Sequence[Sequence[float]],
    references: Sequence[Sequence[float]],
    k: int | None = None,
    gain: str = "linear",
) -> float:
    """Mean NDCG@k over queries (all candidates when `k` is None) with graded relevance.

    DCG@k = sum_{i<k} g(rel_i) / log2(i + 2) over candidates ranked by descending score (ties:
    earlier candidate first); g(r) = r for `gain="linear"` (scikit-learn's `ndcg_score`) or
    2^r - 1 for `"exponential"` (Burges et al.); the two agree for 0/1 relevance. NDCG divides
    by the DCG@k of the ideal order; 0.0 for a query without relevant candidates.
    """
    if gain not in {"linear", "exponential"}:
        raise ValueError(f"gain must be 'linear' or 'exponential', not {gain!r}")
    if k is not None and k < 1:
        raise ValueError(f"k must be positive, got {k}")
    queries = _queries(predictions, references)
    if not queries:
        return 0.0
    values = []
    for _, relevance in queries:
        ideal = _dcg(np.sort(relevance)[::-1], k, gain)
        values.append(_dcg(relevance, k, gain) / ideal if ideal > 0 else 0.0)
    return float(np.mean(values))


def _span_overlap_f1(predicted: Sequence[int], gold: Sequence[int]) -> float:
    overlap = min(predicted[1], gold[1]) - max(predicted[0], gold[0]) + 1
    if overlap <= 0:
        return 0.0
    precision = overlap / (predicted[1] - predicted[0] + 1)
    recall = overlap / (gold[1] - gold[0] + 1)
    return 2 * precision * recall / (precision + recall)


def exact_match(
    predictions: Sequence[Sequence[int]], references: Sequence[Sequence[Sequence[int]]]
) -> float:
    """Fraction of predicted (start, end) spans equal to their first gold span (an example
    whose answer was truncated away, no gold span, counts as wrong); 0.0 when empty."""
    if not predictions:
        return 0.0
    hits = [
        bool(g) and tuple(p) == tuple(g[0]) for p, g in zip(predictions, references, strict=True)
    ]
    return sum(hits) / len(hits)


def span_f1(
    predictions: Sequence[Sequence[int]], references: Sequence[Sequence[Sequence[int]]]
) -> float:
    """Mean token-overlap F1 of predicted inclusive (start, end) spans with the first gold span
    (SQuAD's F1 over token positions); 0.0 when empty."""
    if not predictions:
        return 0.0
    scores = [
        _span_overlap_f1(p, g[0]) if g else 0.0
        for p, g in zip(predictions, references, strict=True)
    ]
    return sum(scores) / len(scores)


#: Metric name -> `metric(predictions, references, **options) -> float`.
METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1_macro": f1_macro,
    "f1_micro": f1_micro,
    "f1_binary": f1_binary,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "entity_f1": entity_f1,
    "entity_precision": entity_precision,
    "entity_recall": entity_recall,
    "mrr": mrr,
    "ndcg": ndcg,
    "exact_match": exact_match,
    "span_f1": span_f1,
}


def compute_metrics(
    names: Iterable[str], predictions: Any, references: Any, **options: Any
) -> dict[str, float]:
    """`{name: value}` for each metric in `names` on the same predictions and references.

    Each option goes to the metrics whose signature takes it (e.g. `pos_label` to f1_binary
    only, `k` to ndcg only); an option no requested metric takes is a ValueError, as is an
    unknown metric name.
    """
    names = list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {sorted(METRICS)}")
    accepted = {
        n: set(inspect.signature(METRICS[n]).parameters) - {"predictions", "references"}
        for n in names
    }
    unused = set(options) - set().union(*accepted.values())
    if unused:
        raise ValueError(f"option(s) {sorted(unused)} are not taken by any of the metrics {names}")
    return {
        n: METRICS[n](
            predictions, references, **{k: v for k, v in options.items() if k in accepted[n]}
        )
        for n in names
    }
