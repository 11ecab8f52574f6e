"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022):
query the points whose delta-balls cover the most of the pool that the labeled set does not cover yet.

Paper defaults and rules:

- The ball radius delta is the largest one whose purity is at least alpha = 0.95, where purity(delta) is
  the share of points x whose ball B(x, delta) = {x' : ||x - x'|| < delta} holds only points of x's own
  pseudo-label, and the pseudo-labels come from k-means with K = num_classes (default: the number of
  columns of view.probs, else 10). Ball x is pure iff delta <= r(x), the distance from x to the nearest
  point of another pseudo-label, so purity(delta) = share of points with r(x) >= delta: it only falls as
  delta grows, and the largest pure-enough delta is exactly the order statistic r_(j), j = floor((1 -
  alpha) S), of the S sampled points (0-based). We take that value, no grid: every candidate radius is
  tried. r is computed exactly against the whole pool for a seeded sample of S = min(purity_sample = 2000,
  pool) points (the cost is S x pool x d; the estimate's standard error at 0.95 is about 0.005).
  `delta=` sets the radius by hand (the authors' released code takes it as a hyper-parameter).
- The delta-ball graph over the pool: edge x -> x' iff ||x - x'|| < delta (every point covers itself).
- Points within delta of a labeled point are covered already; candidates are the unlabeled points.
- Greedy maximum coverage: pick the candidate whose ball holds the most uncovered points (ties: lowest
  id), mark them covered, update the other candidates' counts incrementally, repeat.
- When every remaining count is zero (the pool is covered: coverage saturated), the rest of the batch
  comes from the `fallback` method (default "random", any registered method; it sees the picks so far as
  labeled), and the record says so: info["fallback_used"], info["fallback_count"], and a log warning.

Scale (never an n x n or n x |labeled| matrix):
- Distances are those of the features scaled by `scaling` (geometry.PoolRows; default "standardize": each
  dimension to unit variance over the pool, then each row to length 1; "none": the features as given),
  mean-centred, in float32: an edge is decided on fl32 of the exact
  (float64) squared distance of the pair, so the graph is exactly symmetric and independent of row order;
  float32 BLAS blocks only screen the pairs (error bounded by `error_bound`), near-boundary pairs are
  recomputed exactly.
- The range search runs cell by cell: the pool is split into about sqrt(N) (<= 1024) k-means cells, and
  a cell is compared only with cells that the triangle inequality cannot rule out
  (|mu_C - mu_D| - R_C - R_D < delta), in row blocks of at most 4M distances. For clustered features the
  work falls far below N^2 d; it is never above it.
- The graph is stored as CSR, int32 neighbour indices of the unlabeled points (4 bytes per edge). If the
  estimated number of edges at the purity delta exceeds `max_edges` (default 50M, 200 MB), delta is
  lowered to the largest radius (on a 2^(-1/8) grid below it) whose estimated edges fit, and the record
  says so (info["delta_rule"] = "capped_by_max_edges"); the estimate is the mean ball size of the purity
  sample, counted against the whole pool. A build that still exceeds 2 x max_edges stops with an error.

Determinism: candidates are processed in ascending-id order and labeled rows in an order fixed by their
values; k-means, samples and the fallback are seeded: same ids, features and seed, same picks.

`probcover_select(view, k, seed, ProbCoverOptions(...)) -> (positions, info)`; the registered strategy
takes the options as keywords, returns the positions and, given `info={}`, fills that dict with the same
record.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from collections.abc import Iterator
from typing import Any

import numpy as np

from ray_al.acquisition.base import ACQUISITIONS, PoolView, Strategy, recording, register
from ray_al.acquisition.geometry import (
    CHUNK_ROWS, PAIR_VALUES, SCALING, U32, PoolRows, cluster_members, error_bound, exact_min_sqdist, exact_sqdist_pairs,
    seeded_kmeans, sq_block, sqnorms32,
)

log = logging.getLogger(__name__)

ALPHA = 0.95  # the paper's purity threshold
DEFAULT_NUM_CLASSES = 10  # pseudo-label clusters when view.probs does not say
PURITY_SAMPLE = 2000  # points whose purity is measured (exactly, against the whole pool)
MAX_EDGES = 50_000_000  # stored edges (int32 each, 200 MB) before delta is lowered
KMEANS_NITER = 25  # Lloyd iterations of the pseudo-label k-means (faiss' default)
MAX_CELLS = 1024  # cells of the range search (about sqrt(pool))
MIN_CELL_POOL = 4096  # below this pool size the range search is one block
CELL_NITER = 8  # Lloyd iterations of the cell k-means (a partition only needs to be compact)
CELL_POINTS = 32  # k-means training points per cell
BLOCK = 1 << 22  # distances per float32 screening block (16 MB)
CHUNK_EDGES = 1 << 22  # edges the greedy's passes over the graph hold at once (a few 16-32 MB temporaries)
QUERY_ROWS = 1024  # query rows per block (the pool rows of a block are read once per this many queries)
GRID_STEP = 2.0 ** (-1 / 4)  # squared-radius grid factor when capping by max_edges (radius: 2^(-1/8))
GRID_SIZE = 161  # grid values: down to 2^-40 of the purity delta^2


# ----------------------------------------------------------------------------------------------
# blocks of squared distances
# ----------------------------------------------------------------------------------------------


def _exact_below(q: np.ndarray, y: np.ndarray, rows: np.ndarray, cols: np.ndarray, t: float) -> np.ndarray:
    """(P,) bool: fl32(exact squared distance of (q[rows[p]], y[cols[p]])) < t, in batches of pairs."""
    out = np.empty(rows.shape[0], dtype=bool)
    step = max(1, PAIR_VALUES // q.shape[1])
    for lo in range(0, rows.shape[0], step):
        hi = min(rows.shape[0], lo + step)
        out[lo:hi] = exact_sqdist_pairs(q[rows[lo:hi]], y[cols[lo:hi]]).astype(np.float64) < t
    return out


def _thresholds(t: float, err: float) -> tuple[np.float32, np.float32]:
    """float32 screening bounds: g < lo means exact < t for sure, g >= hi means exact >= t for sure."""
    lo = np.nextafter(np.float32(t * (1 - 4 * U32) - err), np.float32(-np.inf))
    hi = np.nextafter(np.float32(t * (1 + 4 * U32) + err), np.float32(np.inf))
    return lo, hi


# ----------------------------------------------------------------------------------------------
# delta: purity against k-means pseudo-labels
# ----------------------------------------------------------------------------------------------


def purity_radius(
    pool: PoolRows, labels: np.ndarray, K: int, sample: np.ndarray, alpha: float, err: float
) -> tuple[float, np.ndarray]:
    """(largest squared radius t with purity >= alpha on the sample, (S,) squared r of the sample).

    r(x)^2 = min over pool points x' with another pseudo-label of fl32(exact ||x - x'||^2) (inf if none);
    purity(t) = mean(r^2 >= t), so the answer is the order statistic sorted(r^2)[floor((1 - alpha) S)].
    """
    q = pool.gather(sample)  # (S, d)
    q_lab = labels[sample]
    r_sq = np.full(sample.shape[0], np.inf, dtype=np.float32)
    order, starts = cluster_members(labels, K)
    for c in range(K):
        other = np.flatnonzero(q_lab != c)
        if other.size == 0 or starts[c + 1] == starts[c]:
            continue
        qo = q[other]
        for lo in range(starts[c], starts[c + 1], CHUNK_ROWS):
            y = pool.gather(order[lo : min(starts[c + 1], lo + CHUNK_ROWS)])
            r_sq[other] = exact_min_sqdist(qo, y, err, prev=r_sq[other])
    S = r_sq.shape[0]
    j = min(S - 1, int(math.floor((1.0 - alpha) * S + 1e-9)))
    return float(np.sort(r_sq)[j]), r_sq


def ball_sizes(pool: PoolRows, sample: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(G,) mean number of pool points within squared radius grid[g] (ascending) of the sample points
    (float32 screening values: an estimate, used only to bound the graph's size)."""
    q = pool.gather(sample)
    q_sq = sqnorms32(q)
    hist = np.zeros(grid.shape[0] + 1, dtype=np.int64)
    top = grid[-1]
    cols = max(1, BLOCK // max(1, q.shape[0]))
    for lo in range(0, pool.N, cols):
        y = pool.gather(np.arange(lo, min(pool.N, lo + cols)))
        g = sq_block(q, q_sq, y, sqnorms32(y))
        vals = g[g < top]
        hist += np.bincount(np.searchsorted(grid, vals, side="right"), minlength=grid.shape[0] + 1)
    return np.cumsum(hist)[: grid.shape[0]] / max(1, q.shape[0])


# ----------------------------------------------------------------------------------------------
# the delta-ball graph
# ----------------------------------------------------------------------------------------------


class BallGraph:
    """Balls of the unlabeled points: CSR rows (one per unlabeled point, in `row_of` order) of the
    unlabeled neighbours (P indices, int32), and which unlabeled points a labeled point covers."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.row_of = np.full(n, -1, dtype=np.int64)  # P index -> CSR row
        self.points = np.empty(0, dtype=np.int64)  # CSR row -> P index
        self.indptr = np.zeros(1, dtype=np.int64)
        self.indices = np.empty(0, dtype=np.int32)
        self.covered = np.zeros(n, dtype=bool)  # within delta of a labeled point
        self.cells = 1

    @property
    def edges(self) -> int:
        return int(self.indices.shape[0])

    def row_chunks(self, edges: int = CHUNK_EDGES) -> Iterator[np.ndarray]:
        """CSR rows in runs of about `edges` edges (at least one row each)."""
        rows = self.indptr.shape[0] - 1
        lo = 0
        while lo < rows:
            hi = max(lo + 1, int(np.searchsorted(self.indptr, self.indptr[lo] + edges, side="right")) - 1)
            yield np.arange(lo, min(hi, rows))
            lo = hi

    def point_chunks(self, points: np.ndarray, edges: int = CHUNK_EDGES) -> Iterator[np.ndarray]:
        """`points` (unlabeled P indices) in runs whose balls hold about `edges` edges together."""
        rows = self.row_of[points]
        ends = np.cumsum(self.indptr[rows + 1] - self.indptr[rows])
        lo = 0
        while lo < points.shape[0]:
            hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + edges, side="right")))
            yield points[lo:hi]
            lo = hi

    def neighbours(self, points: np.ndarray) -> np.ndarray:
        """Concatenated neighbour lists (P indices) of the unlabeled points `points`."""
        rows = self.row_of[points]
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return np.empty(0, dtype=np.int32)
        offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        return self.indices[offsets]


class _Cells:
    """The pool's rows grouped by k-means cell (`perm`: a permutation, no copy of the rows), with each cell's
    centre and radius, to rule out whole cells by the triangle inequality: no point of D is within delta of a
    point of C when |mu_C - mu_D| - R_C - R_D >= delta. Rows are gathered from the pool when a block needs
    them (a cell-sorted copy of the pool was one matrix more: 1,000,000 x 128, `python -m
    ray_al.bench.select`, 2026-12-06)."""

    def __init__(self, pool: PoolRows, seed: int) -> None:
        N = pool.N
        self.pool, self.count = pool, 1 if N <= MIN_CELL_POOL else min(MAX_CELLS, int(math.isqrt(N)))
        if self.count > 1:
            _, cell = seeded_kmeans(pool, self.count, seed, niter=CELL_NITER, points_per_centroid=CELL_POINTS)
        else:
            cell = np.zeros(N, dtype=np.int64)
        self.perm, self.starts = cluster_members(cell, self.count)  # sorted row -> P index, by (cell, P)
        self.sq = np.empty(N, dtype=np.float32)  # (N,) squared norms in sorted order
        self.mu = np.zeros((self.count, pool.d), dtype=np.float64)
        self.radius = np.zeros(self.count, dtype=np.float64)
        for c in range(self.count):
            s, e = self.starts[c], self.starts[c + 1]
            if e == s:
                continue
            x = self.rows(np.arange(s, e))
            self.sq[s:e] = sqnorms32(x)
            self.mu[c] = x.mean(axis=0, dtype=np.float64)
            r2 = 0.0
            for lo in range(0, e - s, CHUNK_ROWS):
                diff = x[lo : lo + CHUNK_ROWS].astype(np.float64) - self.mu[c]
                r2 = max(r2, float(np.einsum("ij,ij->i", diff, diff).max()))
            self.radius[c] = math.sqrt(r2) * (1 + 1e-6)
        self.mu_sq = np.einsum("ij,ij->i", self.mu, self.mu)

    def rows(self, sorted_rows: np.ndarray) -> np.ndarray:
        """(m, d) float32 copy of the rows at these sorted positions."""
        return self.pool.gather(self.perm[sorted_rows])

    def members(self, c: int) -> np.ndarray:
        return np.arange(self.starts[c], self.starts[c + 1])

    def near(self, c: int, reach: float) -> np.ndarray:
        """Sorted positions of every cell that may hold points within `reach` of cell c."""
        mu, starts = self.mu, self.starts
        dist = np.sqrt(np.maximum(self.mu_sq[c] + self.mu_sq - 2.0 * (mu @ mu[c]), 0.0))  # (cells,)
        near = np.flatnonzero((dist - self.radius[c] - self.radius < reach) & (starts[1:] > starts[:-1]))
        return np.concatenate([self.members(j) for j in near])


def _block_edges(q: np.ndarray, q_sq: np.ndarray, cells: _Cells, near: np.ndarray, n: int,
                 t: float, err: float, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges from query rows q to the rows at sorted positions `near` (`_Cells.near`), gathered a block at
    a time: (query row, unlabeled neighbour P index) as int32 pairs, and which query rows have a labeled
    point (P >= n) in their ball. More than `budget` unlabeled edges stops with an error."""
    lo_t, hi_t = _thresholds(t, err)
    step = max(1, BLOCK // q.shape[0])
    near_lab = np.zeros(q.shape[0], dtype=bool)
    rr_l: list[np.ndarray] = []
    nb_l: list[np.ndarray] = []
    total = 0
    for lo in range(0, near.shape[0], step):
        block = near[lo : lo + step]
        yc, y_p = cells.rows(block), cells.perm[block]
        g = sq_block(q, q_sq, yc, cells.sq[block])  # (b, step)
        mask = g < lo_t
        br, bc = np.nonzero((g >= lo_t) & (g < hi_t))  # too close to call in float32: exact
        del g
        if br.size:
            ok = _exact_below(q, yc, br, bc, t)
            mask[br[ok], bc[ok]] = True
        rr, cc = np.nonzero(mask)
        del mask
        nb = y_p[cc]
        lab = nb >= n
        near_lab[rr[lab]] = True
        rr_l.append(rr[~lab].astype(np.int32))
        nb_l.append(nb[~lab].astype(np.int32))
        total += rr_l[-1].shape[0]
        if total > budget:
            raise ValueError(
                f"probcover: the delta-ball graph at delta={math.sqrt(t):.6g} has more than 2 x max_edges "
                "edges. Pass a smaller delta=..., or a larger max_edges=... if memory allows (4 bytes per edge).")
    return np.concatenate(rr_l), np.concatenate(nb_l), near_lab


def build_ball_graph(pool: PoolRows, t: float, err: float, max_norm: float, seed: int,
                     max_edges: int) -> BallGraph:
    """The graph at squared radius t (edge iff fl32 exact squared distance < t), cell by cell, in blocks
    of QUERY_ROWS unlabeled points against the cells that the triangle inequality cannot rule out."""
    n = pool.n
    graph = BallGraph(n)
    if n == 0:
        return graph
    cells = _Cells(pool, seed)
    graph.cells = cells.count
    reach = math.sqrt(t) * (1 + 1e-6) + 1e-6 * max_norm if math.isfinite(t) else math.inf
    counts_all: list[np.ndarray] = []
    idx_all: list[np.ndarray] = []
    rows_all: list[np.ndarray] = []
    total = 0
    for c in range(cells.count):
        members = cells.members(c)
        q_pos = members[cells.perm[members] < n]  # the unlabeled members of the cell
        if q_pos.size == 0:
            continue
        near = cells.near(c, reach)
        for lo in range(0, q_pos.size, QUERY_ROWS):
            qp = q_pos[lo : lo + QUERY_ROWS]
            rr, nb, near_lab = _block_edges(cells.rows(qp), cells.sq[qp], cells, near, n, t, err,
                                            2 * int(max_edges) - total)
            total += rr.shape[0]
            idx_all.append(nb[np.argsort(rr, kind="stable")])
            counts_all.append(np.bincount(rr, minlength=qp.size))
            rows_all.append(cells.perm[qp])
            graph.covered[cells.perm[qp][near_lab]] = True
    del cells
    graph.points = np.concatenate(rows_all)
    graph.row_of[graph.points] = np.arange(graph.points.shape[0])
    graph.indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts_all))]).astype(np.int64)
    graph.indices = np.concatenate(idx_all)
    return graph


# ----------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------


def greedy_cover(graph: BallGraph, k: int, chunk_edges: int = CHUNK_EDGES) -> tuple[list[int], np.ndarray]:
    """(picks as P indices, (n,) covered after them): greedy max coverage, ties to the lowest P index
    (= lowest id); stops early when every remaining candidate's gain is zero. The graph is read about
    `chunk_edges` edges at a time (whole-graph temporaries were 20 bytes per edge: 41.6M edges, ~800 MB, in a
    1,000,000 x 128 round of `python -m ray_al.bench.select`, 2026-12-06)."""
    n = graph.n
    covered = graph.covered.copy()
    gain = np.zeros(n, dtype=np.int64)  # uncovered points in each candidate's ball
    for rows in graph.row_chunks(chunk_edges):
        a, b = graph.indptr[rows[0]], graph.indptr[rows[-1] + 1]
        cs = np.concatenate([[0], np.cumsum(~covered[graph.indices[a:b]], dtype=np.int64)])
        gain[graph.points[rows]] = cs[graph.indptr[rows + 1] - a] - cs[graph.indptr[rows] - a]
    done = -(1 << 62)
    picks: list[int] = []
    for _ in range(k):
        p = int(np.argmax(gain))  # first maximum: lowest P index = lowest id
        if gain[p] <= 0:
            break
        picks.append(p)
        gain[p] = done
        nb = graph.neighbours(np.asarray([p]))
        new = nb[~covered[nb]].astype(np.int64)
        covered[new] = True
        for part in graph.point_chunks(new, chunk_edges):
            losers = graph.neighbours(part)  # one decrement per newly covered point in their ball
            if losers.size * 16 < n:
                np.subtract.at(gain, losers, 1)
            else:
                gain -= np.bincount(losers, minlength=n)
    return picks, covered


@dataclass(frozen=True)
class ProbCoverOptions:
    """ProbCover's options (module docstring); the registered strategy takes them as keywords.

    alpha: purity threshold of the radius rule. num_classes: pseudo-label clusters (None: the columns of
    view.probs, else DEFAULT_NUM_CLASSES). delta: the radius by hand (None: by purity). fallback: the method
    that fills the batch once coverage saturates. purity_sample: points whose purity is measured.
    max_edges: stored edges before delta is lowered. niter: Lloyd iterations of the pseudo-label k-means.
    scaling: the geometry (geometry.PoolRows; delta, given or found, is a radius in it).
    """

    alpha: float = ALPHA
    num_classes: int | None = None
    delta: float | None = None
    fallback: str = "random"
    purity_sample: int = PURITY_SAMPLE
    max_edges: int = MAX_EDGES
    niter: int = KMEANS_NITER
    scaling: str = SCALING


def _check_options(o: ProbCoverOptions) -> None:
    if not isinstance(o.alpha, (int, float)) or isinstance(o.alpha, bool) or not 0.0 < float(o.alpha) <= 1.0:
        raise ValueError(f"probcover option alpha must be a purity in (0, 1], got {o.alpha!r}")
    for name, value, low in (("num_classes", o.num_classes, 2), ("purity_sample", o.purity_sample, 1),
                             ("max_edges", o.max_edges, 1), ("niter", o.niter, 0)):
        if value is None and name == "num_classes":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"probcover option {name} must be an integer >= {low}, got {value!r}")
    if o.delta is not None and (isinstance(o.delta, bool) or not isinstance(o.delta, (int, float))
                                or not float(o.delta) >= 0.0):
        raise ValueError(f"probcover option delta must be a radius >= 0 (or None: by purity), got {o.delta!r}")
    if o.fallback == "probcover":
        raise ValueError("probcover option fallback must name another method (e.g. 'random')")
    ACQUISITIONS.get(o.fallback)  # an unknown name lists the valid ones


def _fallback(view: PoolView, pool: PoolRows, picks: list[int], remaining: int, seed: int,
              method: str) -> np.ndarray:
    """(remaining,) view positions from `method` among the unlabeled points not picked, with the picks
    counted as labeled (added to labeled_embeddings; labeled_labels/labeled_probs are then left out, so a
    fallback that needs them, such as weibull, only works when no covering pick was made)."""
    from ray_al.acquisition.dispatch import select  # lazy: dispatch is the one entry point

    taken = np.zeros(pool.n, dtype=bool)
    taken[picks] = True
    rest = pool.canon[np.flatnonzero(~taken)]  # view positions, ascending id
    sub = view.subset(rest)
    if picks:
        new = np.asarray(view.embeddings)[pool.canon[np.asarray(picks)]]
        lab = view.labeled_embeddings
        lab = new if lab is None or np.asarray(lab).shape[0] == 0 else np.concatenate([np.asarray(lab), new])
        sub = PoolView(ids=sub.ids, probs=sub.probs, embeddings=sub.embeddings,
                       committee_probs=sub.committee_probs, labeled_embeddings=lab)
    return rest[select(method, sub, remaining, seed)]


def _centre(pool: PoolRows) -> tuple[float, float]:
    """Centre the pool's rows (distances unchanged, float32 error bounds tighter): (max norm, error bound)."""
    pool.shift = pool.mean().astype(np.float32)
    max_norm = 0.0
    for _, _, x in pool.chunks():
        max_norm = max(max_norm, float(np.sqrt(sqnorms32(x).max(initial=0.0))))
    return max_norm, error_bound(pool.d, max_norm)


def choose_radius(pool: PoolRows, rng: np.random.Generator, options: ProbCoverOptions, max_norm: float,
                  err: float, info: dict[str, Any]) -> float:
    """Squared delta by the purity rule, lowered if the graph would exceed max_edges; fills `info`.
    options.num_classes is set (probcover_select resolves None)."""
    N, max_edges = pool.N, options.max_edges
    S = min(int(options.purity_sample), N)
    sample = np.arange(N) if S == N else np.sort(rng.choice(N, size=S, replace=False))
    K = min(int(options.num_classes), N)
    _, labels = seeded_kmeans(pool, K, int(rng.integers(2**31 - 1)), niter=options.niter)
    t, r_sq = purity_radius(pool, labels, K, sample, float(options.alpha), err)
    del labels
    info.update(delta_rule="purity", delta_purity=math.sqrt(t), purity_sample=int(S))
    if pool.n * N > max_edges:  # the graph could exceed max_edges: estimate its size from the sample
        top = min(t, 4.0 * max_norm**2 * (1 + 1e-6) + err)  # no pair is farther apart than 2 max_norm
        grid = np.float32(top) * np.float32(GRID_STEP) ** np.arange(GRID_SIZE - 1, -1, -1, dtype=np.float32)
        est = pool.n * ball_sizes(pool, sample, grid.astype(np.float64))  # (G,) for ascending radii
        if est[-1] > max_edges:
            fits = np.flatnonzero(est <= max_edges)
            t = float(grid[fits[-1]]) if fits.size else 0.0
            info["delta_rule"] = "capped_by_max_edges"
    info["purity"] = float(np.mean(r_sq.astype(np.float64) >= t))
    return t


def probcover_select(
    view: PoolView, k: int, seed: int, options: ProbCoverOptions = ProbCoverOptions()
) -> tuple[np.ndarray, dict[str, Any]]:
    """((k,) positions into view.ids in selection order, info).

    info: scaling, delta, delta_rule ("purity", "given", "capped_by_max_edges"), delta_purity (the purity-rule
    radius before any cap), purity (estimated purity at delta; None when delta is given), alpha,
    num_classes, purity_sample, edges, mean_degree, cells, coverage_before / coverage (covered share of the
    whole pool, labeled included, before and after the picks), covering_picks, fallback, fallback_used,
    fallback_count.
    """
    if options.num_classes is None:
        probs = getattr(view, "probs", None)
        num_classes = int(np.shape(probs)[1]) if probs is not None and np.ndim(probs) == 2 else DEFAULT_NUM_CLASSES
        options = replace(options, num_classes=num_classes)
    _check_options(options)
    alpha, num_classes, delta, fallback = options.alpha, options.num_classes, options.delta, options.fallback
    k, pool = int(k), PoolRows(view, options.scaling)
    n, N = pool.n, pool.N
    if k > n:
        raise ValueError(f"asked for k={k} points but the pool has only n={n} unlabeled candidates")
    info: dict[str, Any] = {"scaling": options.scaling, "delta": None, "delta_rule": None, "delta_purity": None,
                            "purity": None,
                            "alpha": float(alpha), "num_classes": int(num_classes), "purity_sample": 0,
                            "edges": 0, "mean_degree": 0.0, "cells": 0, "coverage_before": 0.0,
                            "coverage": 0.0, "covering_picks": 0, "fallback": fallback,
                            "fallback_used": False, "fallback_count": 0}
    if k == 0:
        return np.empty(0, dtype=np.int64), info
    rng = np.random.default_rng([int(seed), 0x9C0])
    max_norm, err = _centre(pool)
    if delta is not None:
        t = float(np.float32(float(delta) ** 2))
        info["delta_rule"] = "given"
    else:
        t = choose_radius(pool, rng, options, max_norm, err, info)
    info["delta"] = math.sqrt(t)
    graph = build_ball_graph(pool, t, err, max_norm, int(rng.integers(2**31 - 1)), int(options.max_edges))
    info.update(edges=graph.edges, mean_degree=graph.edges / max(1, n), cells=graph.cells,
                coverage_before=float((graph.covered.sum() + pool.L) / N))
    picks, covered = greedy_cover(graph, k)
    del graph
    info.update(coverage=float((covered.sum() + pool.L) / N), covering_picks=len(picks))
    positions = pool.canon[np.asarray(picks, dtype=np.int64)]
    remaining = k - len(picks)
    if remaining:
        info.update(fallback_used=True, fallback_count=int(remaining))
        log.warning("probcover: coverage saturated at %.4f after %d of %d picks (delta=%.4g); the other %d "
                    "come from fallback=%r", info["coverage"], len(picks), k, info["delta"], remaining, fallback)
        positions = np.concatenate([positions, _fallback(view, pool, picks, remaining, seed, fallback)])
    return positions.astype(np.int64), info


def _probcover_strategy(view: PoolView, k: int, seed: int, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """probcover_select with the options as keywords (how `acquisition.select` passes them)."""
    return probcover_select(view, k, seed, ProbCoverOptions(**options))


STRATEGY = register(Strategy(
    "probcover", "select", recording(_probcover_strategy), required=frozenset({"embeddings"}),
    optional=frozenset({"labeled_embeddings"}),
    options=frozenset({f.name for f in fields(ProbCoverOptions)} | {"info"}),
    summary="ProbCover: greedy max coverage of purity-chosen delta-balls (Yehuda et al. 2022)"))
