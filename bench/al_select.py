"""Active-learning selection speed: every strategy selecting 10,000 of 1,000,000 x 3 confidences.

Target: each strategy of `ernie_style.active_learning.select` takes < 5 s to select 10,000 rows
of a 1,000,000 x 3 matrix of seeded uniform random confidences (the slowest of `--repeats`
runs counts). Beside it: a naive reference (O(n^2) Pareto peeling, plain Python sorts for the
other strategies) timed on a 10,000-row matrix (budget 100), and whether the fast code selects
exactly the same rows there. `other cores` is the CPU other processes used during the fast runs.

    .venv/bin/python bench/al_select.py [--rows 1000000] [--tasks 3] [--budget 10000] \\
        [--repeats 3] [--naive-rows 10000] [--naive-budget 100]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import numpy as np
from _results import record
from _timing import ForeignLoad

from ernie_style.active_learning import STRATEGIES, select

TARGET_S = 5.0


def naive_fronts(points: np.ndarray, stop_after: int) -> list[list[int]]:
    """Pareto fronts (lower dominates) by repeated all-pairs peeling, until `stop_after` rows."""
    remaining = np.arange(len(points))
    fronts: list[list[int]] = []
    while len(remaining) and sum(map(len, fronts)) < stop_after:
        p = points[remaining]
        dominated = np.zeros(len(p), dtype=bool)
        for start in range(0, len(p), 256):  # rows start.. vs every remaining row
            q = p[start : start + 256, None]
            dominated[start : start + 256] = (
                np.all(p[None] <= q, axis=2) & np.any(p[None] < q, axis=2)
            ).any(axis=1)
        fronts.append(remaining[~dominated].tolist())
        remaining = remaining[dominated]
    return fronts


def naive_select(conf: np.ndarray, budget: int, strategy: str) -> list[int]:
    """The deterministic strategies written out directly, equal weights, task 0 (stable sorts)."""
    n, n_tasks = conf.shape
    rows = range(n)
    c = conf.tolist()
    if strategy in ("st-ec", "st-da"):
        return sorted(rows, key=lambda i: c[i][0])[:budget]
    if strategy == "mt-avg":
        return sorted(rows, key=lambda i: sum(sorted(c[i])))[:budget]
    if strategy == "mt-max":
        return sorted(rows, key=lambda i: max(c[i]))[:budget]
    if strategy == "mt-min":
        return sorted(rows, key=lambda i: min(c[i]))[:budget]
    if strategy == "mt-rrf":
        rank = [[0] * n_tasks for _ in rows]
        for t in range(n_tasks):
            for r, i in enumerate(sorted(rows, key=lambda i: c[i][t]), start=1):
                rank[i][t] = r
        score = [sum(sorted(1.0 / (60 + r) for r in rank[i])) for i in rows]
        return sorted(rows, key=lambda i: -score[i])[:budget]
    if strategy == "mt-ind":
        quotas = [budget // n_tasks + (t < budget % n_tasks) for t in range(n_tasks)]
        orders = [sorted(rows, key=lambda i: c[i][t]) for t in range(n_tasks)]
        out: list[int] = []
        taken: set[int] = set()
        for order, quota in zip(orders, quotas, strict=True):
            for i in order[:quota]:
                if i not in taken:
                    out.append(i)
                    taken.add(i)
        while len(out) < budget:
            for order in orders:
                if len(out) < budget:
                    i = next(i for i in order if i not in taken)
                    out.append(i)
                    taken.add(i)
        return out
    if strategy == "mt-par":
        out = []
        for front in naive_fronts(conf, budget):
            front = sorted(front, key=lambda i: (c[i][0], i))
            left = budget - len(out)
            if len(front) <= left:
                out += front
                continue
            if left == 1:
                return [*out, front[0]]
            step = Fraction(len(front) - 1, left - 1)
            return out + [front[int(j * step + Fraction(1, 2))] for j in range(left)]
        return out
    raise ValueError(strategy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-rows", type=int, default=10_000)
    parser.add_argument("--naive-budget", type=int, default=100)
    args = parser.parse_args()
    conf = np.random.default_rng(0).random((args.rows, args.tasks))
    small = np.random.default_rng(1).random((args.naive_rows, args.tasks))
    print(
        f"select {args.budget:,} of {args.rows:,} x {args.tasks} (slowest of {args.repeats}); "
        f"naive reference: {args.naive_budget} of {args.naive_rows:,} x {args.tasks}"
    )
    header = f"{'strategy':<8} {'fast (s)':>9} {'other cores':>11} {'naive (s)':>10} "
    print(header + f"{'fast == naive':>13}  target < {TARGET_S:g} s")
    failures = 0
    slowest = (0.0, "")
    for strategy in STRATEGIES:
        times, load = [], 0.0
        for _ in range(args.repeats):
            with ForeignLoad() as foreign:
                start = time.perf_counter()
                chosen = select(conf, args.budget, strategy)
                times.append(time.perf_counter() - start)
            load = max(load, foreign.cores or 0.0)
        assert len(np.unique(chosen)) == args.budget
        if strategy == "random":
            naive, same = "-", "-"
        else:
            start = time.perf_counter()
            expected = naive_select(small, args.naive_budget, strategy)
            naive = f"{time.perf_counter() - start:.3f}"
            same = (
                "yes" if select(small, args.naive_budget, strategy).tolist() == expected else "NO"
            )
            failures += same == "NO"
        ok = max(times) < TARGET_S
        failures += not ok
        print(
            f"{strategy:<8} {max(times):>9.3f} {load:>11.2f} {naive:>10} {same:>13}  "
            f"{'PASS' if ok else 'FAIL'}"
        )
        slowest = max(slowest, (max(times), strategy))
    print("all PASS" if failures == 0 else f"{failures} FAIL")
    record(
        f"AL selection of {args.budget:,} from {args.rows:,} x {args.tasks}: slowest strategy (s)",
        slowest[0],
        f"< {TARGET_S:g} s",
        failures == 0,
        f"{slowest[1]}; every strategy within target and equal to the naive picks: "
        f"{'yes' if failures == 0 else 'no'}",
    )


if __name__ == "__main__":
    main()
