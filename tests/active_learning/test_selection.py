"""Multi-task active-learning selection: hand-computed cases, naive references, bad input."""

from __future__ import annotations

import warnings
from fractions import Fraction
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_style.active_learning import STRATEGIES, pareto, select
from ernie_style.active_learning.pareto import _Grid, pareto_layers, pareto_select
from ernie_style.active_learning.selection import _largest_remainder

# ---- naive references (O(n^2) Pareto; plain Python for the rest) ------------------------------


def naive_fronts(points: np.ndarray, stop_after: int | None = None) -> list[list[int]]:
    """Successive Pareto fronts by repeated all-pairs peeling (lower dominates), O(n^2) each.

    With `stop_after`, peeling stops once the fronts hold that many points.
    """
    remaining = np.arange(len(points))
    fronts: list[list[int]] = []
    while len(remaining) and (stop_after is None or sum(map(len, fronts)) < stop_after):
        p = points[remaining]
        # dominated[i, j]: row j dominates row i
        dominated = np.all(p[None, :] <= p[:, None], axis=2) & np.any(
            p[None, :] < p[:, None], axis=2
        )
        in_front = ~dominated.any(axis=1)
        fronts.append(remaining[in_front].tolist())
        remaining = remaining[~in_front]
    return fronts


def naive_par(points: np.ndarray, budget: int) -> list[int]:
    """MT-PAR by its definition: whole fronts, then the overflowing one thinned evenly."""
    out: list[int] = []
    for front in naive_fronts(points, stop_after=budget):
        front = sorted(front, key=lambda i: (points[i][0], i))
        left = budget - len(out)
        if len(front) <= left:
            out += front
        else:
            if left == 1:
                positions = [0]
            else:
                # round half up of j (L - 1) / (left - 1), in exact arithmetic
                positions = [
                    int(Fraction(j * (len(front) - 1), left - 1) + Fraction(1, 2))
                    for j in range(left)
                ]
            out += [front[p] for p in positions]
        if len(out) == budget:
            break
    return out


def naive_select(conf: np.ndarray, budget: int, strategy: str, weights=None, task=0) -> list[int]:
    """Every deterministic strategy written out directly (sorted() is stable)."""
    n, n_tasks = conf.shape
    budget = min(budget, n)
    w = [1.0] * n_tasks if weights is None else [float(x) / max(weights) for x in weights]
    active = [t for t in range(n_tasks) if w[t] > 0]
    rows = range(n)
    if strategy in ("st-ec", "st-da"):
        return sorted(rows, key=lambda i: conf[i, task])[:budget]
    if strategy == "mt-avg":
        key = {i: sum(sorted(w[t] * conf[i, t] for t in active)) for i in rows}
        return sorted(rows, key=lambda i: key[i])[:budget]
    if strategy in ("mt-max", "mt-min"):
        agg = max if strategy == "mt-max" else min
        return sorted(rows, key=lambda i: agg(w[t] * conf[i, t] for t in active))[:budget]
    if strategy == "mt-par":
        return naive_par(conf[:, active], budget)
    if strategy == "mt-rrf":
        rank = {}
        for t in active:
            for r, i in enumerate(sorted(rows, key=lambda i: conf[i, t]), start=1):
                rank[i, t] = r
        score = {i: sum(sorted(w[t] / (60 + rank[i, t]) for t in active)) for i in rows}
        return sorted(rows, key=lambda i: -score[i])[:budget]
    if strategy == "mt-ind":
        total = sum(w[t] for t in active)
        shares = [budget * w[t] / total for t in active]
        quotas = [int(s) for s in shares]
        by_remainder = sorted(range(len(active)), key=lambda k: -(shares[k] - quotas[k]))
        for k in by_remainder[: budget - sum(quotas)]:
            quotas[k] += 1
        orders = [sorted(rows, key=lambda i: conf[i, t]) for t in active]
        out: list[int] = []
        for order, quota in zip(orders, quotas, strict=True):
            out += [i for i in order[:quota] if i not in out]
        while len(out) < budget:
            for order in orders:
                if len(out) < budget:
                    out.append(next(i for i in order if i not in out))
        return out
    raise AssertionError(strategy)


def sel(conf, budget, strategy, **kwargs) -> list[int]:
    return select(np.asarray(conf, dtype=float), budget, strategy, **kwargs).tolist()


# ---- hand-computed selections ---------------------------------------------------------------

# 6 examples x 2 tasks (integers, so every sum is exact).
#          task0 task1   sum  max  min
A = [
    [9, 1],  # 0    10    9    1
    [2, 8],  # 1    10    8    2
    [5, 5],  # 2    10    5    5
    [2, 3],  # 3     5    3    2
    [7, 7],  # 4    14    7    7
    [2, 9],  # 5    11    9    2
]


def test_single_task_takes_least_confident_with_ties_by_row():
    # task 0: the three 2s are rows 1, 3, 5; task 1: 1 (row 0), 3 (row 3)
    assert sel(A, 3, "st-ec") == [1, 3, 5]
    assert sel(A, 2, "st-da", task=1) == [0, 3]
    assert sel(A, 4, "st-ec", task=0) == [1, 3, 5, 2]


def test_aggregates():
    assert sel(A, 3, "mt-avg") == [3, 0, 1]  # 5, then the three 10s by row order
    assert sel(A, 4, "mt-max") == [3, 2, 4, 1]  # 3, 5, 7, 8
    assert sel(A, 3, "mt-min") == [0, 1, 3]  # 1, then the 2s of rows 1, 3 (row 5 left out)
    # weights (1, 3) -> (1/3, 1): 4, 8.67, 6.67, 3.67, 9.33, 9.67
    assert sel(A, 2, "mt-avg", weights=[1, 3]) == [3, 0]
    # weights (2, 1) -> (1, 0.5) multiply: max(9, .5)=9, max(2, 4)=4, 5, 2, 7, 4.5
    assert sel(A, 3, "mt-max", weights=[2, 1]) == [3, 1, 5]
    # weight 0 ignores task 1: min over task 0 alone = 9, 2, 5, 2, 7, 2
    assert sel(A, 2, "mt-min", weights=[1, 0]) == [1, 3]


# 9 examples x 2 tasks. Front 0 = rows 0, 8 (duplicates), 1, 2, 3, 4; front 1 = rows 5 and 6
# (dominated by rows 0 and 1); front 2 = row 7. Front 0 ordered by task 0, ties by row:
# 0 (1), 8 (1), 1 (2), 2 (3), 3 (4), 4 (5).
PAR2 = [[1, 5], [2, 4], [3, 3], [4, 2], [5, 1], [2, 5], [3, 4], [9, 9], [1, 5]]


def test_pareto_two_tasks_overflowing_front():
    # budget 3 < 6: positions round_half_up(j * 5 / 2) = 0, 3 (2.5 rounds up), 5
    assert sel(PAR2, 3, "mt-par") == [0, 2, 4]
    # budget 5: j * 5 / 4 = 0, 1.25, 2.5, 3.75, 5 -> 0, 1, 3, 4, 5
    assert sel(PAR2, 5, "mt-par") == [0, 8, 2, 3, 4]
    # budget 7: front 0 whole, front 1 thinned to its first member by task 0 (row 5: 2 < 3)
    assert sel(PAR2, 7, "mt-par") == [0, 8, 1, 2, 3, 4, 5]
    # budget 8: fronts 0 and 1 exactly
    assert sel(PAR2, 8, "mt-par") == [0, 8, 1, 2, 3, 4, 5, 6]
    assert sel(PAR2, 9, "mt-par") == [0, 8, 1, 2, 3, 4, 5, 6, 7]
    assert pareto_layers(np.array(PAR2)).tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 0]


# 7 examples x 3 tasks. Front 0 = rows 0, 4 (duplicates), 1, 2, 6; row 3 = (2, 3, 3) is dominated
# by rows 0 and 2 (front 1); row 5 = (4, 4, 4) is dominated by row 3 (front 2).
PAR3 = [[1, 2, 3], [3, 2, 1], [2, 2, 2], [2, 3, 3], [1, 2, 3], [4, 4, 4], [0, 9, 9]]


def test_pareto_three_tasks():
    # front 0 by task 0: 6 (0), 0 (1), 4 (1), 2 (2), 1 (3)
    assert sel(PAR3, 6, "mt-par") == [6, 0, 4, 2, 1, 3]
    assert sel(PAR3, 2, "mt-par") == [6, 1]  # both ends
    assert sel(PAR3, 4, "mt-par") == [6, 0, 2, 1]  # j * 4 / 3 = 0, 1.33, 2.67, 4 -> 0, 1, 3, 4
    assert sel(PAR3, 1, "mt-par") == [6]
    # weight 0 on task 0: fronts of tasks 1, 2 only; "task 0" of the thinning is then task 1.
    # (2, 3) row 0/4, (2, 1) row 1, (2, 2) row 2 ... front 0 = row 1 alone.
    assert sel(PAR3, 1, "mt-par", weights=[0, 1, 1]) == [1]
    assert pareto_layers(np.array(PAR3)).tolist() == [0, 0, 0, 1, 0, 2, 0]


def test_rrf_rank_and_score_ties():
    conf = [[1, 3], [3, 1], [2, 2], [2, 2]]
    # task 0 ranks: row 0 = 1, row 2 = 2, row 3 = 3 (tie with row 2, later row), row 1 = 4
    # task 1 ranks: row 1 = 1, row 2 = 2, row 3 = 3, row 0 = 4
    # scores: row 0 = 1/61 + 1/64 = .032018, row 1 = 1/64 + 1/61 (tie, exact), row 2 = 2/62 =
    # .032258, row 3 = 2/63 = .031746
    assert sel(conf, 4, "mt-rrf") == [2, 0, 1, 3]
    assert sel(conf, 2, "mt-rrf") == [2, 0]
    # weights (2, 1) -> (1, .5): row 0 = 1/61 + .5/64 = .024206, row 1 = 1/64 + .5/61 = .023822,
    # row 2 = 1.5/62 = .024194, row 3 = 1.5/63 = .023810
    assert sel(conf, 4, "mt-rrf", weights=[2, 1]) == [0, 2, 1, 3]


def test_rrf_permuted_ranks_tie_exactly():
    # each row has ranks {1, 2, 3} across the three tasks: equal scores, so row order decides
    conf = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    assert sel(conf, 3, "mt-rrf") == [0, 1, 2]
    assert sel(conf, 3, "mt-avg") == [0, 1, 2]


# 8 examples x 2 tasks for MT-IND.
IND = [[1, 9], [2, 1], [3, 2], [8, 0], [8, 5], [8, 6], [0, 7], [9, 8]]
# task 0 order: 6, 0, 1, 2, 3, 4, 5, 7       task 1 order: 3, 1, 2, 4, 5, 6, 7, 0


def test_independent_overlap_and_refill():
    # budget 5: quotas 3, 2 (2.5 each, the tie goes to task 0). Task 0: 6, 0, 1; task 1: 3, 1 ->
    # row 1 is taken already, so the union is 6, 0, 1, 3; refill from task 0: row 2.
    assert sel(IND, 5, "mt-ind") == [6, 0, 1, 3, 2]
    # budget 6: quotas 3, 3; task 1 adds 3, 2; refill from task 0 skips rows 2, 3 and takes 4.
    assert sel(IND, 6, "mt-ind") == [6, 0, 1, 3, 2, 4]
    # budget 7: quotas 4, 3; union 6, 0, 1, 2, 3; refill task 0 -> 4, then task 1 (skips 4) -> 5
    assert sel(IND, 7, "mt-ind") == [6, 0, 1, 2, 3, 4, 5]
    # weights (1, 3), budget 4: quotas 1, 3 -> 6; 3, 1, 2
    assert sel(IND, 4, "mt-ind", weights=[1, 3]) == [6, 3, 1, 2]
    # weight 0: task 1 alone
    assert sel(IND, 3, "mt-ind", weights=[0, 1]) == [3, 1, 2]


def test_largest_remainder():
    assert _largest_remainder(5, np.array([1.0, 1.0, 1.0])).tolist() == [2, 2, 1]
    assert _largest_remainder(7, np.array([5.0, 3.0, 2.0])).tolist() == [4, 2, 1]  # 3.5 2.1 1.4
    assert _largest_remainder(10, np.array([1.0, 1.0])).tolist() == [5, 5]


def test_random_is_seeded_uniform_sample():
    conf = np.zeros((50, 2))
    first = select(conf, 10, "random", seed=3)
    assert first.tolist() == select(conf, 10, "random", seed=3).tolist()
    assert first.tolist() != select(conf, 10, "random", seed=4).tolist()
    expected = np.random.default_rng(3).choice(50, size=10, replace=False)
    assert first.tolist() == expected.tolist()


# ---- properties -------------------------------------------------------------------------------


@st.composite
def pools(draw, max_rows: int = 24, max_tasks: int = 4):
    n = draw(st.integers(1, max_rows))
    n_tasks = draw(st.integers(1, max_tasks))
    values = draw(st.lists(st.integers(0, 3), min_size=n * n_tasks, max_size=n * n_tasks))
    conf = np.array(values, dtype=float).reshape(n, n_tasks)  # small integers: many ties
    weights = draw(
        st.none() | st.lists(st.integers(0, 3), min_size=n_tasks, max_size=n_tasks).filter(any)
    )
    return conf, weights


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools(), st.integers(1, 30), st.sampled_from(STRATEGIES), st.integers(0, 3), st.data())
def test_properties_and_naive_references(pool, budget, strategy, seed, data):
    conf, weights = pool
    n, n_tasks = conf.shape
    task = data.draw(st.integers(0, n_tasks - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got = select(conf, budget, strategy, weights=weights, seed=seed, task=task)
        again = select(conf, budget, strategy, weights=weights, seed=seed, task=task)
    assert got.dtype == np.int64
    assert len(got) == min(budget, n)
    assert len(set(got.tolist())) == len(got)
    assert got.min() >= 0 and got.max() < n
    assert got.tolist() == again.tolist()
    if strategy != "random":
        assert got.tolist() == naive_select(conf, budget, strategy, weights, task)


@settings(max_examples=300, deadline=None)
@given(
    pools(max_rows=40),
    st.integers(1, 40),
    st.sampled_from([2**21, 2, 8, 27, 64, 1000]),
    st.sampled_from([(6, 4, 2), (), (1,), (3, 1)]),
    st.sampled_from([None, "blocks"]),
)
def test_pareto_matches_naive_with_ties(pool, budget, grid_cells, shrink, method):
    # every grid size, candidate schedule and layer algorithm must give the same, exact result;
    # blocks of 3 rows make the block algorithm search the fronts of earlier blocks
    conf, _ = pool
    budget = min(budget, len(conf))
    expected = naive_par(conf, budget)
    with mock.patch.object(pareto, "_BLOCK", 3):
        got = pareto_select(conf, budget, grid_cells=grid_cells, shrink=shrink, method=method)
    assert got.tolist() == expected


@settings(max_examples=100, deadline=None)
@given(pools(max_rows=30), st.sampled_from([1, 2, 5, 1024]))
def test_pareto_layers_match_naive(pool, block):
    conf, _ = pool
    expected = np.empty(len(conf), dtype=np.int64)
    for f, front in enumerate(naive_fronts(conf)):
        expected[front] = f
    if conf.shape[1] <= 3:
        assert pareto_layers(conf).tolist() == expected.tolist()
    with mock.patch.object(pareto, "_BLOCK", block):
        assert pareto_layers(conf, method="blocks").tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("n", "n_tasks", "budget", "levels"),
    [(1500, 3, 60, 0), (1500, 3, 80, 12), (1200, 2, 50, 0), (800, 4, 40, 0), (600, 5, 40, 6)],
)
def test_pareto_prefilter_exact_on_larger_pools(n, n_tasks, budget, levels):
    rng = np.random.default_rng(n + n_tasks + levels)
    conf = rng.random((n, n_tasks)) if levels == 0 else rng.integers(0, levels, (n, n_tasks))
    conf = conf.astype(float)
    lower = _Grid(conf, budget, pareto.DEFAULT_GRID_CELLS).dominator_lower_bound()
    assert np.sum(lower < budget) < n  # the prefilter really drops points
    assert pareto_select(conf, budget).tolist() == naive_par(conf, budget)


def test_pareto_small_candidate_set_is_certified():
    # on 20,000 uniform points a threshold below the budget is proven complete, so the fronts
    # are never computed on the (much larger) candidate set of the budget itself
    rng = np.random.default_rng(0)
    conf = rng.random((20_000, 3))
    budget = 640
    sizes = []
    real = pareto.pareto_layers

    def spy(points, method=None):
        sizes.append(len(points))
        return real(points, method=method)

    with mock.patch.object(pareto, "pareto_layers", spy):
        got = pareto_select(conf, budget)
    lower = _Grid(conf, budget >> 6, pareto.DEFAULT_GRID_CELLS).dominator_lower_bound()
    assert len(sizes) < 4  # (6, 4, 2) shifts, then budget itself
    assert sizes[-1] < np.sum(lower < budget) / 2
    assert got.tolist() == pareto_select(conf, budget, shrink=()).tolist()
    assert got.tolist() == pareto_select(conf, budget, grid_cells=0).tolist()  # no prefilter


# ---- bad input --------------------------------------------------------------------------------


def test_budget_larger_than_pool_warns_and_takes_all():
    with pytest.warns(UserWarning, match="budget 10 exceeds the pool size 6"):
        got = select(np.array(A, dtype=float), 10, "mt-par")
    assert sorted(got.tolist()) == list(range(6))
    with pytest.warns(UserWarning, match="budget 7 exceeds the pool size 6"):
        assert sel(A, 7, "st-ec") == [1, 3, 5, 2, 4, 0]


@pytest.mark.parametrize("budget", [0, -3])
def test_non_positive_budget(budget):
    with pytest.raises(ValueError, match=f"budget must be positive, got {budget}"):
        select(np.ones((4, 2)), budget, "mt-avg")


def test_bad_pools():
    with pytest.raises(ValueError, match="pool is empty"):
        select(np.zeros((0, 3)), 1, "mt-par")
    with pytest.raises(ValueError, match="must be 2-D"):
        select(np.zeros(5), 1, "st-ec")
    with pytest.raises(ValueError, match="must be 2-D"):
        select(np.zeros((5, 0)), 1, "st-ec")


def test_non_finite_confidences_name_rows():
    conf = np.zeros((20, 2))
    conf[3, 1] = conf[17, 0] = np.nan
    with pytest.raises(ValueError, match=r"^confidences: NaN in rows \[3, 17\]$"):
        select(conf, 2, "mt-avg")
    conf[5, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN in rows \[3, 17\], inf in rows \[5\]"):
        select(conf, 2, "random")
    many = np.zeros((20, 1))
    many[::2] = -np.inf
    with pytest.raises(ValueError, match=r"inf in rows \[0, 2, 4, 6, 8, \.\.\.\] \(10 rows\)"):
        select(many, 2, "st-ec")


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="unknown strategy 'mt-foo'") as info:
        select(np.ones((3, 2)), 1, "mt-foo")
    assert all(name in str(info.value) for name in STRATEGIES)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "expected 2 \\(one per task\\), got 1"),
        ([1.0, 2.0, 3.0], "got 3"),
        ([1.0, -0.5], "non-negative"),
        ([0.0, 0.0], "at least one must be positive"),
        ([np.nan, 1.0], "finite"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        select(np.ones((3, 2)), 1, "mt-avg", weights=weights)


@pytest.mark.parametrize("task", [2, -1])
def test_task_out_of_range(task):
    with pytest.raises(ValueError, match=f"task {task} out of range for 2 task"):
        select(np.ones((3, 2)), 1, "st-ec", task=task)
