"""Pareto fronts of confidence vectors (lower dominates) and the MT-PAR selection.

`a` dominates `b` when `a <= b` in every task and `a < b` in at least one. The fronts (layers) are
the successive non-dominated sets: front 0 is the non-dominated points, front 1 the points that
are non-dominated once front 0 is removed, and so on. Equivalently, a point's front is the length
of the longest chain of points dominating it, so identical vectors always share a front.

`pareto_select(points, budget)` (MT-PAR, Rotman & Reichart 2022) takes whole fronts while they fit
in the remaining budget; the first front larger than the remaining budget is thinned to `r`
evenly spaced members (see `pareto_select`). It is exact and avoids O(n^2) work:

1. Prefilter: every member of the fronts the selection looks at is dominated by fewer than
   `budget` points. A grid of per-task value bins (`_Grid`) gives a cheap lower bound on the
   number of dominators; candidates are the points whose bound is below a threshold d, first
   small thresholds (few candidates) whose completeness is then checked with a second grid
   bound, finally d = budget, which is always complete. Proof in `pareto_select`.
2. Exact fronts of the candidates (`pareto_layers`): for up to three tasks a sweep in
   lexicographic order with one 2-D staircase per front, O(m log m) binary searches; for more
   tasks blocks of rows binary-searched over the fronts of the earlier rows, vectorised.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

DEFAULT_GRID_CELLS = 2**21  # cells of the prefilter grid (G**T <= this); 17 MB of int64 at most
_BLOCK = 1024  # rows per block in the general-T layer algorithm
_CELLS_PER_STEP = 1 << 22  # pairs compared per vectorised step (4 MB of booleans)


def _unique_rows(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows in lexicographic order (task 0 first) and, per input row, its distinct row.

    Lexicographic order puts every dominator before the points it dominates.
    """
    order = np.lexsort(points.T[::-1])
    ordered = points[order]
    new = np.ones(len(ordered), dtype=bool)
    new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    inverse = np.empty(len(ordered), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def _layers_sweep(unique: np.ndarray) -> np.ndarray:
    """Front of each distinct, lexicographically sorted row with at most three columns.

    Rows are visited in lexicographic order, so every earlier row `q` with `q[1] <= p[1]` and
    `q[2] <= p[2]` dominates `p` (`q[0] <= p[0]` by the order, and `q != p`). Each front keeps the
    staircase of its visited members' minimal (y, z) pairs: y ascending, z strictly descending.
    "Front f holds a dominator of p" is monotone in f (a dominator in front f has a dominator in
    front f - 1, visited earlier, which dominates p too), so p's front, the first front holding no
    dominator of p, is found by binary search over the fronts; each probe is one bisection.
    """
    padded = np.zeros((len(unique), 3), dtype=np.float64)
    padded[:, : unique.shape[1]] = unique
    stairs_y: list[list[float]] = []
    stairs_z: list[list[float]] = []
    out = np.empty(len(unique), dtype=np.int64)
    for i, (y, z) in enumerate(zip(padded[:, 1].tolist(), padded[:, 2].tolist(), strict=True)):
        lo, hi = 0, len(stairs_y)
        while lo < hi:  # first front whose staircase has no (y', z') <= (y, z)
            mid = (lo + hi) >> 1
            j = bisect_right(stairs_y[mid], y) - 1  # stair with y' <= y and the smallest z'
            if j >= 0 and stairs_z[mid][j] <= z:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo
        if lo == len(stairs_y):
            stairs_y.append([y])
            stairs_z.append([z])
            continue
        ys, zs = stairs_y[lo], stairs_z[lo]
        # Drop the stairs (y', z') >= (y, z): they start at the first y' >= y (a stair with y' == y
        # has z' > z, else it would dominate p) and are contiguous because z descends.
        start = end = bisect_left(ys, y)
        while end < len(zs) and zs[end] >= z:
            end += 1
        ys[start:end] = [y]
        zs[start:end] = [z]
    return out


def _dominated(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per row of `points`: is some row of `others` <= it in every column? Chunked, vectorised."""
    out = np.zeros(len(points), dtype=bool)
    step = max(1, _CELLS_PER_STEP // max(1, len(points)))
    for c0 in range(0, len(others), step):
        chunk = others[c0 : c0 + step]
        below = chunk[None, :, 0] <= points[:, None, 0]
        for t in range(1, points.shape[1]):
            below &= chunk[None, :, t] <= points[:, None, t]
        out |= below.any(axis=1)
    return out


def _layers_blocks(unique: np.ndarray) -> np.ndarray:
    """Front of each distinct, lexicographically sorted row, any number of columns.

    Rows are processed in blocks, in order. The rows before a block are down-closed (every
    dominator comes earlier in lexicographic order), so their fronts are final, and for a row p
    of the block "front f of the earlier rows holds a row <= p" is monotone in f (see
    `_layers_sweep`): a binary search over those fronts, vectorised over the block (rows probing
    the same front are compared with it together), gives 1 + the largest front among p's earlier
    dominators. Dominators inside the block are then resolved in order with the block's own
    all-pairs comparison. Each row is compared with O(log fronts) fronts instead of every row.
    """
    m, n_tasks = unique.shape
    layer = np.zeros(m, dtype=np.int64)
    fronts: list[np.ndarray] = []  # per front, a buffer whose first sizes[f] rows are its rows
    sizes: list[int] = []
    for start in range(0, m, _BLOCK):
        block = unique[start : start + _BLOCK]
        lo = np.zeros(len(block), dtype=np.int64)
        hi = np.full(len(block), len(fronts), dtype=np.int64)
        while np.any(lo < hi):  # first front with no row <= p
            searching = lo < hi
            mid = (lo + hi) >> 1
            for f in np.unique(mid[searching]).tolist():
                rows = np.flatnonzero(searching & (mid == f))
                hit = _dominated(block[rows], fronts[f][: sizes[f]])
                lo[rows[hit]] = f + 1
                hi[rows[~hit]] = f
        inside = block[None, :, 0] <= block[:, None, 0]  # [i, j]: row j <= row i
        for t in range(1, n_tasks):
            inside &= block[None, :, t] <= block[:, None, t]
        for i in range(1, len(block)):
            earlier = inside[i, :i]
            if earlier.any():
                lo[i] = max(lo[i], int(lo[:i][earlier].max()) + 1)
        layer[start : start + len(block)] = lo
        for f in np.unique(lo).tolist():  # consecutive: a row's front - 1 is a dominator's
            new = block[lo == f]
            if f == len(fronts):
                fronts.append(np.empty((2 * len(new), n_tasks)))
                sizes.append(0)
            if sizes[f] + len(new) > len(fronts[f]):  # grow by doubling: O(m) copying in all
                grown = np.empty((2 * (sizes[f] + len(new)), n_tasks))
                grown[: sizes[f]] = fronts[f][: sizes[f]]
                fronts[f] = grown
            fronts[f][sizes[f] : sizes[f] + len(new)] = new
            sizes[f] += len(new)
    return layer


def pareto_layers(points: np.ndarray, method: str | None = None) -> np.ndarray:
    """0-based Pareto front of every row of `points` (n, T), lower dominating; exact.

    `method`: "sweep" (T <= 3 only) or "blocks"; None picks "sweep" for T <= 3.
    Values must be finite.
    """
    points = np.asarray(points, dtype=np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0
    if points.ndim != 2:
        raise ValueError(f"points must be 2-D (n, T), got shape {points.shape}")
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    method = method or ("sweep" if points.shape[1] <= 3 else "blocks")
    if method == "sweep" and points.shape[1] > 3:
        raise ValueError(f"the sweep handles at most 3 tasks, got {points.shape[1]}")
    if method not in ("sweep", "blocks"):
        raise ValueError(f"unknown method {method!r}; expected 'sweep' or 'blocks'")
    unique, inverse = _unique_rows(points)
    layers = _layers_sweep(unique) if method == "sweep" else _layers_blocks(unique)
    return layers[inverse]


def _grid_size(n_tasks: int, cells: int) -> int:
    """Largest G with G**n_tasks <= cells."""
    g = max(1, int(cells ** (1.0 / n_tasks)))
    while (g + 1) ** n_tasks <= cells:
        g += 1
    while g > 1 and g**n_tasks > cells:
        g -= 1
    return g


class _Grid:
    """Per-task value bins of every point, for cheap dominance bounds.

    Per task, the bin edges are values of the sorted column at ranks spaced geometrically from
    `first_rank` to n; a value's bin is the number of edges <= it. Two facts carry every bound:

    - a point in a cell strictly lower in every task than p's cell is strictly smaller than p in
      every task, so it dominates p;
    - if q dominates p, q's cell is <= p's cell in every task (bins are monotone in the value).
    """

    def __init__(self, points: np.ndarray, first_rank: int, cells: int) -> None:
        n, n_tasks = points.shape
        self.g = g = min(_grid_size(n_tasks, min(cells, 8 * n)), n)  # at most 8 cells per point
        self.shape = (g,) * n_tasks
        exponents = np.arange(g - 1) / max(g - 2, 1)
        ranks = np.round(first_rank * (n / first_rank) ** exponents).astype(np.int64)
        ranks = np.unique(ranks.clip(0, n - 1))
        self.bins = np.empty((n_tasks, n), dtype=np.int64)
        for t in range(n_tasks):
            edges = np.unique(np.sort(points[:, t])[ranks])
            self.bins[t] = np.searchsorted(edges, points[:, t], side="right")  # 0 .. g - 1
        self.cell = np.ravel_multi_index(tuple(self.bins), self.shape)

    def _strictly_below(self, per_cell: np.ndarray, accumulate: np.ufunc, empty: int) -> np.ndarray:
        """Per point: `accumulate` of `per_cell` over the cells strictly below its own cell."""
        table = per_cell.reshape(self.shape)
        for axis in range(len(self.shape)):
            table = accumulate.accumulate(table, axis=axis)
        padded = np.full((self.g + 1,) * len(self.shape), empty, dtype=np.int64)
        padded[(slice(1, None),) * len(self.shape)] = table
        return padded[tuple(self.bins)]  # padded[c] covers the cells < c in every task

    def dominator_lower_bound(self) -> np.ndarray:
        """Per point, a lower bound on how many points dominate it (points in lower cells)."""
        counts = np.bincount(self.cell, minlength=self.g ** len(self.shape))
        return self._strictly_below(counts, np.add, 0)

    def front_lower_bound(self, rows: np.ndarray, layers: np.ndarray) -> np.ndarray:
        """Per point, a lower bound on its front given the exact `layers` of the points `rows`.

        A kept point q in a cell strictly below p's dominates p, so front(p) >= front(q) + 1.
        """
        best = np.full(self.g ** len(self.shape), -1, dtype=np.int64)
        np.maximum.at(best, self.cell[rows], layers)
        return self._strictly_below(best, np.maximum, -1) + 1


def _thinned_positions(size: int, keep: int) -> np.ndarray:
    """`keep` evenly spaced positions in 0..size-1: round-half-up of j (size-1)/(keep-1), exact."""
    if keep == 1:
        return np.zeros(1, dtype=np.int64)
    j = np.arange(keep, dtype=np.int64)
    return (2 * j * (size - 1) + (keep - 1)) // (2 * (keep - 1))


def _select_fronts(
    points: np.ndarray, budget: int, method: str | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """MT-PAR on `points` alone: (chosen row positions, every row's front, last front used).

    Takes fewer than `budget` rows only when `points` has fewer rows.
    """
    layer = pareto_layers(points, method=method)
    order = np.lexsort((np.arange(len(points)), points[:, 0], layer))  # front, column 0, row
    ends = np.cumsum(np.bincount(layer))
    whole = int(np.searchsorted(ends, budget, side="right"))  # fronts that fit entirely
    taken = int(ends[whole - 1]) if whole else 0
    chosen = order[:taken]
    if taken < budget and whole < len(ends):
        front = order[taken : ends[whole]]
        chosen = np.concatenate([chosen, front[_thinned_positions(len(front), budget - taken)]])
        return chosen, layer, whole
    return chosen, layer, whole - 1


def pareto_select(
    points: np.ndarray,
    budget: int,
    *,
    grid_cells: int = DEFAULT_GRID_CELLS,
    shrink: tuple[int, ...] = (6, 4, 2),
    method: str | None = None,
) -> np.ndarray:
    """MT-PAR: `min(budget, n)` row indices of `points` (n, T) by successive Pareto fronts.

    Lower values dominate. Fronts are taken whole, in order, while they fit in the remaining
    budget `r`; the first front larger than `r` is thinned to `r` members. Within a front members
    are ordered by column 0 ascending, ties by row index; a thinned front of `L` members keeps the
    positions `round_half_up(j (L - 1) / (r - 1))`, j = 0..r-1, of that order (both ends and
    evenly spaced members between them; only position 0 when r == 1). The result lists the
    selected rows front by front, each front in that order.

    Speed knobs, none of which changes the result: `grid_cells` sizes the prefilter grid (0 or 1
    disables the prefilter); the candidate thresholds `budget >> s` for s in `shrink` are tried
    before `budget` itself; `method` is passed to `pareto_layers`. Values must be finite.

    Why the prefilter is exact. Let F_0, F_1, ... be the fronts, S_j = |F_0| + ... + |F_j|, and
    F_k the last front the selection takes from, so S_{k-1} < budget (a front is only reached
    while budget remains). Call a set C of points down-closed if it holds every dominator of each
    of its points; the fronts computed inside such a C are the global fronts of its points (a
    front is the longest dominating chain, and all of it lies in C). The candidate sets
    C_d = {p : lower(p) < d}, lower(p) <= dom(p) = the number of points dominating p
    (`_Grid.dominator_lower_bound`), are down-closed: if q dominates p, q's cell is <= p's cell,
    so lower(q) <= lower(p). If F_0..F_k lie inside C_d, the selection made on C_d sees the same
    F_0..F_k and is the global selection. That holds
    - for d = budget, always: every dominator of p in F_j lies in an earlier front, so
      lower(p) <= dom(p) <= S_{j-1} <= S_{k-1} < budget for every j <= k;
    - for smaller d, when checked: the selection on C_d fills the budget from its fronts 0..k,
      and every point outside C_d has front >= k + 1 by `_Grid.front_lower_bound` (computed from
      the exact fronts of C_d). Then no point outside C_d belongs to F_0..F_k.
    The thresholds are tried from the smallest (fewest candidates) to `budget`; the first that
    is proven complete gives the answer.
    """
    points = np.asarray(points, dtype=np.float64) + 0.0
    n = len(points)
    budget = min(int(budget), n)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    thresholds = sorted({max(1, budget >> s) for s in shrink} | {budget})
    grid = _Grid(points, thresholds[0], grid_cells) if budget < n and grid_cells > 1 else None
    if grid is None or grid.g < 2:
        return _select_fronts(points, budget, method)[0].astype(np.int64)
    lower = grid.dominator_lower_bound()
    for d in thresholds:
        rows = np.flatnonzero(lower < d)
        chosen, layer, last = _select_fronts(points[rows], budget, method)
        if d == budget:
            break
        if len(chosen) < budget:
            continue
        outside = np.ones(n, dtype=bool)
        outside[rows] = False
        if np.all(grid.front_lower_bound(rows, layer)[outside] > last):
            break
    return rows[chosen].astype(np.int64)
