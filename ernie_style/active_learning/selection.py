"""Which pool examples to annotate next, from per-task model confidences.

Selection strategies of Rotman & Reichart (TACL 2022), "Multi-task Active Learning for
Pre-trained Transformer-based Models" (arXiv 2208.05379). `confidences` is (n_examples, n_tasks);
lower means less confident, i.e. more worth annotating. `select` returns int64 row indices in
selection order:

    random   ST-R: uniform sample without replacement (numpy default_rng(seed))
    st-ec    single task `task`: the `budget` least confident (entropy/confidence upstream)
    st-da    same rule; differs from st-ec only in how the confidences were computed upstream
    mt-avg   lowest weighted mean over tasks
    mt-max   lowest weighted maximum over tasks (least confident even in its most confident task)
    mt-min   lowest weighted minimum over tasks
    mt-par   successive Pareto fronts, lower dominating; an overflowing front is thinned to evenly
             spaced members along task 0 (exact rule in `pareto.pareto_select`)
    mt-rrf   highest reciprocal rank fusion score sum_t w_t / (60 + rank_t), rank 1 = least
             confident in task t
    mt-ind   the budget split over tasks by weight (largest remainder), each task takes its least
             confident examples, duplicates dropped, then refilled round-robin over the tasks

Conventions, shared by all strategies:

- Ties are broken by example order (the lower row index first), with stable sorts throughout;
  the same inputs and seed always give the same output.
- Weights (default: equal) are non-negative, one per task, not all zero. A task with weight 0 is
  ignored by every multi-task strategy. The others are rescaled so the largest is 1 (equal
  weights are then exactly 1, which changes no ranking):
  mt-avg ranks by sum_t w_t c_t (the weighted mean times the constant sum_t w_t);
  mt-max / mt-min rank by max_t / min_t of w_t c_t (weights multiply the confidences, meant for
  non-negative confidences); mt-rrf uses w_t as the numerator; mt-ind splits the budget in
  proportion to w_t; mt-par only uses which tasks have a positive weight (dominance does not
  change when a task is scaled by a positive factor; "task 0" there means the first such task).
  random, st-ec and st-da ignore the weights (they are still validated).
- Per-row sums (mt-avg, mt-rrf) add their terms in ascending order, so rows whose terms are
  permutations of each other get bit-identical scores and tie exactly.
- budget > n selects all n examples (in the strategy's order) with a UserWarning naming both.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence

import numpy as np

from ernie_style.active_learning.pareto import pareto_select

STRATEGIES = (
    "random",
    "st-ec",
    "st-da",
    "mt-avg",
    "mt-max",
    "mt-min",
    "mt-par",
    "mt-rrf",
    "mt-ind",
)
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
_SHOWN_ROWS = 5  # rows named in a non-finite-value error


def _k_smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` smallest scores, ascending, ties by index; O(n) + O(k log k)."""
    n = len(scores)
    if k >= n:
        return np.argsort(scores, kind="stable")
    kth = np.partition(scores, k - 1)[k - 1]
    less = np.flatnonzero(scores < kth)
    equal = np.flatnonzero(scores == kth)[: k - len(less)]
    rows = np.concatenate([less, equal])
    return rows[np.lexsort((rows, scores[rows]))]


def _ordered_sum(terms: np.ndarray) -> np.ndarray:
    """Row sums of `terms` (n, T), adding each row's terms in ascending order (left to right)."""
    terms = np.sort(terms, axis=1)
    total = terms[:, 0].copy()
    for t in range(1, terms.shape[1]):
        total += terms[:, t]
    return total


def _nonfinite_message(confidences: np.ndarray) -> str | None:
    """'confidences: NaN in rows [...]' (and/or inf), or None when every value is finite."""
    parts = []
    for label, bad in (("NaN", np.isnan(confidences)), ("inf", np.isinf(confidences))):
        rows = np.flatnonzero(bad.any(axis=1))
        if len(rows):
            shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS].tolist())
            more = f", ...] ({len(rows)} rows)" if len(rows) > _SHOWN_ROWS else "]"
            parts.append(f"{label} in rows [{shown}{more}")
    return "confidences: " + ", ".join(parts) if parts else None


def _validated_weights(weights: Sequence[float] | None, n_tasks: int) -> np.ndarray:
    """Weights as float64, rescaled so the largest is 1; ValueError if unusable."""
    if weights is None:
        return np.ones(n_tasks)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n_tasks:
        raise ValueError(f"weights: expected {n_tasks} (one per task), got {len(w)}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative, got {w.tolist()}")
    if not np.any(w > 0):
        raise ValueError("weights: at least one must be positive")
    return w / w.max()


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split `total` in proportion to `weights`: floors, then +1 to the largest remainders.

    Equal remainders go to the lower task index first.
    """
    shares = total * weights / weights.sum()
    quotas = np.floor(shares).astype(np.int64)
    extra = total - int(quotas.sum())
    quotas[np.argsort(-(shares - quotas), kind="stable")[:extra]] += 1
    return quotas


def _independent(confidences: np.ndarray, budget: int, weights: np.ndarray) -> np.ndarray:
    """MT-IND: per-task quotas of least confident examples, deduplicated, refilled round-robin.

    Order: task by task (column order), each task's quota in ascending confidence,
    skipping examples an earlier task already took; then the refill, one example per turn, tasks
    in order, each turn the task's least confident example not yet chosen. Every task only ever
    looks at its `budget` least confident examples: the examples a task passes over are distinct
    and all chosen, so fewer than `budget` of them precede any turn.
    """
    tasks = np.flatnonzero(weights > 0)
    quotas = _largest_remainder(budget, weights[tasks])
    rankings = [_k_smallest(confidences[:, t], budget) for t in tasks]
    chosen = np.zeros(len(confidences), dtype=bool)
    parts = []
    for ranking, quota in zip(rankings, quotas.tolist(), strict=True):
        head = ranking[:quota]
        new = head[~chosen[head]]
        chosen[new] = True
        parts.append(new)
    need = budget - int(sum(len(p) for p in parts))
    lists = [r.tolist() for r in rankings]
    pointers = quotas.tolist()
    refill: list[int] = []
    while need > 0:
        for i, ranking in enumerate(lists):
            if need == 0:
                break
            p = pointers[i]
            while chosen[ranking[p]]:
                p += 1
            chosen[ranking[p]] = True
            refill.append(ranking[p])
            pointers[i] = p + 1
            need -= 1
    parts.append(np.asarray(refill, dtype=np.int64))
    return np.concatenate(parts)


def _rrf_scores(confidences: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_t w_t / (60 + rank_t) over tasks with w_t > 0; rank 1 = least confident, ties by row."""
    tasks = np.flatnonzero(weights > 0)
    n = len(confidences)
    terms = np.empty((n, len(tasks)))
    for i, t in enumerate(tasks):
        ranks = np.empty(n, dtype=np.int64)
        ranks[np.argsort(confidences[:, t], kind="stable")] = np.arange(1, n + 1)
        terms[:, i] = weights[t] / (RRF_K + ranks)
    return _ordered_sum(terms)


def select(
    confidences: np.ndarray,
    budget: int,
    strategy: str,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    task: int = 0,
) -> np.ndarray:
    """Rows of `confidences` (n_examples, n_tasks) to annotate next, in selection order (int64).

    Selects `min(budget, n_examples)` distinct rows with `strategy` (one of `STRATEGIES`, see the
    module docstring); lower confidence = more worth annotating. `weights` (one per task) are
    used by the mt-* strategies, `seed` by random, `task` (a column index) by st-ec and st-da.
    Raises ValueError for an unknown strategy, a pool that is not a non-empty 2-D matrix,
    NaN/inf confidences (naming the first rows), budget <= 0, bad weights or task; warns
    (UserWarning) when budget > n_examples and then selects every example.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    confidences = np.asarray(confidences, dtype=np.float64)
    if confidences.ndim != 2 or confidences.shape[1] == 0:
        raise ValueError(
            f"confidences must be 2-D (n_examples, n_tasks >= 1), got shape {confidences.shape}"
        )
    n, n_tasks = confidences.shape
    if n == 0:
        raise ValueError("confidences: the pool is empty (0 examples)")
    message = _nonfinite_message(confidences)
    if message:
        raise ValueError(message)
    budget = operator.index(budget)
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    w = _validated_weights(weights, n_tasks)
    task = operator.index(task)
    if strategy in ("st-ec", "st-da") and not 0 <= task < n_tasks:
        raise ValueError(f"task {task} out of range for {n_tasks} task(s) (0..{n_tasks - 1})")
    if budget > n:
        warnings.warn(
            f"budget {budget} exceeds the pool size {n}; selecting all {n} examples",
            UserWarning,
            stacklevel=2,
        )
        budget = n

    active = np.flatnonzero(w > 0)
    if strategy == "random":
        chosen = np.random.default_rng(seed).choice(n, size=budget, replace=False)
    elif strategy in ("st-ec", "st-da"):
        chosen = _k_smallest(confidences[:, task], budget)
    elif strategy == "mt-avg":
        scores = _ordered_sum(confidences[:, active] * w[active])
        chosen = _k_smallest(scores, budget)
    elif strategy in ("mt-max", "mt-min"):
        scaled = confidences[:, active] * w[active]
        scores = scaled.max(axis=1) if strategy == "mt-max" else scaled.min(axis=1)
        chosen = _k_smallest(scores, budget)
    elif strategy == "mt-par":
        chosen = pareto_select(confidences[:, active], budget)
    elif strategy == "mt-rrf":
        chosen = _k_smallest(-_rrf_scores(confidences, w), budget)
    else:  # mt-ind
        chosen = _independent(confidences, budget, w)
    return np.asarray(chosen, dtype=np.int64)
