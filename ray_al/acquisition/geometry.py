"""Geometry of the pool that k-center, TypiClust and ProbCover share: exact squared distances with a
proven float32 error bound, the pool as rows in a canonical order, and a seeded k-means of those rows.

Pure module: numpy + faiss only, never `import ray`. The selectors are exact (the same picks whatever the
row order, sharding or BLAS) because they decide on the values computed here:

- `exact_sqdist_pairs` is fl32 of a float64 squared distance with a fixed summation order, a pure
  function of the two rows; float32 BLAS (`sq_block`) only screens, within `error_bound` of it.
- `PoolRows` orders the pool as [unlabeled by ascending id, labeled by a hash of their values], so
  anything computed in row order (means, k-means samples) depends on the data, not on how it was stored.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ray_al.acquisition.base import PoolView
from ray_al.core.config import Scaling, choices
from ray_al.core.ids import canonical_order, splitmix64
from ray_al.core.optional import require_faiss

U32 = 2.0**-24  # unit roundoff of float32
KMEANS_NITER = 25  # Lloyd iterations (faiss' default)
POINTS_PER_CENTROID = 256  # k-means training sample per centroid (faiss' default max_points_per_centroid)
KMEANS_PP_POINTS = 64  # k-means++ seeding runs on at most this many sampled points per centroid
CHUNK_ROWS = 65536  # rows per pass-over-the-pool chunk (bounds the float32 copies to ~chunk x d)
PAIR_VALUES = 1 << 20  # pair coordinates per exact-distance batch (8 MB per float64 temporary)


# ----------------------------------------------------------------------------------------------
# squared distances
# ----------------------------------------------------------------------------------------------


def error_bound(d: int, max_norm: float) -> float:
    """Upper bound on |float32 squared L2 - exact| for vectors of norm <= max_norm, any summation order.

    fl(|x|^2 + |c|^2 - 2 x.c) is off by at most (gamma_d + 3u)(|x| + |c|)^2 with gamma_d = d u/(1 - d u)
    (Higham, Accuracy and Stability, 3.1); a factor 2 of slack covers faiss' clamping of negatives to 0.
    """
    gamma = d * U32 / (1.0 - d * U32)
    return 2.0 * (gamma + 3.0 * U32) * (2.0 * float(max_norm)) ** 2


def exact_sqdist_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P,) float32: fl32 of sum_j (a[p, j] - b[p, j])^2 computed in float64 for row pairs (a[p], b[p]).

    A fixed pairwise tree over the columns makes the result a pure function of the two rows (no
    dependence on P or on BLAS blocking): the same pair always gives the same bits.
    """
    sq = a.astype(np.float64) - b.astype(np.float64)  # (P, d)
    sq *= sq
    width = 1 << max(0, (sq.shape[1] - 1).bit_length())
    if width != sq.shape[1]:
        sq = np.concatenate([sq, np.zeros((sq.shape[0], width - sq.shape[1]))], axis=1)  # (P, width)
    while width > 1:
        width //= 2
        sq = sq[:, :width] + sq[:, width:]
    return sq[:, 0].astype(np.float32)


def sqnorms32(x: np.ndarray) -> np.ndarray:
    """(n,) float32 squared norms of float32 rows."""
    return np.einsum("ij,ij->i", x, x, dtype=np.float32)


def sq_block(q: np.ndarray, q_sq: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """(b, m) float32 screening values |q|^2 + |y|^2 - 2 q.y (BLAS; within `error_bound` of exact)."""
    g = q @ y.T
    g *= -2.0
    g += q_sq[:, None]
    g += y_sq[None, :]
    return g


def exact_min_sqdist(
    rows: np.ndarray,
    centers: np.ndarray,
    err: float,
    prev: np.ndarray | None = None,
    centers_sq: np.ndarray | None = None,
) -> np.ndarray:
    """(P,) float32 exact values min(prev[p], min_c fl32(dist64(rows[p], c))) for rows (P, d), centers (M, d).

    Float32 GEMM screens the pairs; only pairs within 2*err of a row's float32 minimum (and below
    prev + err) can hold the exact minimum, and only those are computed exactly.
    """
    P, M = rows.shape[0], centers.shape[0]
    out = np.full(P, np.inf, np.float32) if prev is None else np.array(prev, np.float32)  # (P,)
    if P == 0 or M == 0:
        return out
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    rr = sqnorms32(rows)  # (P,)
    cc = sqnorms32(centers) if centers_sq is None else centers_sq  # (M,)
    step = max(1, (1 << 22) // P)  # centers per screening block: <= 4M float32 temporaries
    run_min = np.full(P, np.inf, np.float32)  # (P,)
    prs, pcs, pds = [], [], []
    for s in range(0, M, step):
        d32 = sq_block(rows, rr, centers[s : s + step], cc[s : s + step])  # (P, m)
        np.minimum(run_min, d32.min(axis=1), out=run_min)
        lim = np.minimum(run_min.astype(np.float64) + 2 * err, out.astype(np.float64) + err)  # (P,)
        pr, pc = np.nonzero(d32 <= lim[:, None])
        prs.append(pr)
        pcs.append(pc + s)
        pds.append(d32[pr, pc])
    pr, pc, pd = np.concatenate(prs), np.concatenate(pcs), np.concatenate(pds)
    lim = np.minimum(run_min.astype(np.float64) + 2 * err, out.astype(np.float64) + err)
    keep = pd <= lim[pr]
    pr, pc = pr[keep], pc[keep]
    if pr.size:
        np.minimum.at(out, pr, exact_sqdist_pairs(rows[pr], centers[pc]))
    return out


# ----------------------------------------------------------------------------------------------
# the pool in canonical order
# ----------------------------------------------------------------------------------------------


def row_order(x: np.ndarray) -> np.ndarray:
    """Positions that sort rows by a hash of their float32 values: an order independent of row order
    (equal rows may come in any order among themselves; they are interchangeable)."""
    L, d = x.shape
    h = np.empty(L, dtype=np.uint64)
    col = np.arange(d, dtype=np.uint64) << np.uint64(32)  # (d,)
    for lo in range(0, L, CHUNK_ROWS):
        block = np.ascontiguousarray(x[lo : lo + CHUNK_ROWS], dtype=np.float32) + np.float32(0.0)  # -0 -> +0
        bits = block.view(np.uint32).astype(np.uint64)  # (b, d)
        with np.errstate(over="ignore"):
            h[lo : lo + CHUNK_ROWS] = splitmix64(splitmix64(bits ^ col).sum(axis=1, dtype=np.uint64))
    return np.argsort(h, kind="stable")


SCALINGS = choices(Scaling)  # select.scaling's values
SCALING = "standardize"  # typiclust's and probcover's default; must equal select.scaling's (a test checks)


class PoolRows:
    """The whole pool as rows P = [unlabeled in ascending-id order (n), labeled in value-hash order (L)].

    Row p < n is the unlabeled candidate at position `canon[p]` of the view (so p is its id rank);
    nothing is copied up front: `gather` and `chunks` return float32 copies of the rows asked for.

    scaling: the geometry the selectors measure distances in. "none": the features as given; "unit": each
    row scaled to length 1 (cosine geometry, what TypiClust and ProbCover's authors ran on their
    SSL features); "standardize": every dimension centred and scaled to unit variance over the whole pool
    (labeled rows included), then each row to length 1. A few high-variance dimensions of a pretrained
    encoder's pooled features otherwise decide every distance (docs/RESULTS.md, "Selection geometry").
    Applied row by row in `gather` (a pure function of the row and two pool-wide vectors), never to a copy
    of the pool.
    """

    def __init__(self, view: PoolView, scaling: str = "none") -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        self.emb = np.asarray(view.embeddings)  # (n, d)
        self.canon = canonical_order(view.ids)  # (n,) view position of row p
        lab = view.labeled_embeddings
        lab = None if lab is None else np.asarray(lab)
        if lab is not None and lab.shape[0] == 0:
            lab = None  # an empty labeled set is a cold start
        self.lab = lab
        self.lab_order = row_order(lab) if lab is not None else np.empty(0, np.int64)
        self.n = int(self.emb.shape[0])
        self.L = 0 if lab is None else int(lab.shape[0])
        self.N = self.n + self.L
        self.d = int(self.emb.shape[1])
        self.shift: np.ndarray | None = None  # (d,) float32 subtracted from every row gathered (centering)
        self.block_rows = max(1, PAIR_VALUES // self.d)  # rows per float64 temporary of 8 MB
        # the raw rows until the scaling's moments are known (they are the raw rows' moments)
        self.standard: tuple[np.ndarray, np.ndarray] | None = None  # (d,) float32 mean and 1 / std
        self.unit = False
        if scaling == "standardize":
            self.standard = self._moments()
        self.unit = scaling != "none"

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1 / std) float32 of each dimension over the pool, two passes in P order (float64 sums:
        the same bits for any row order); a constant dimension keeps scale 1 (it is 0 once centred)."""
        mean = self.mean()
        sq = np.zeros(self.d, dtype=np.float64)
        for _, _, x in self.chunks(rows=self.block_rows):
            diff = x.astype(np.float64) - mean
            sq += np.einsum("ij,ij->j", diff, diff)
        std = np.sqrt(sq / max(self.N, 1))
        inv = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0)
        return mean.astype(np.float32), inv.astype(np.float32)

    def mean(self) -> np.ndarray:
        """(d,) float64 mean of all pool rows (one pass in P order: the same bits for any row order)."""
        total = np.zeros(self.d, dtype=np.float64)
        for _, _, x in self.chunks():
            total += x.sum(axis=0, dtype=np.float64)
        return total / max(self.N, 1)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(m, d) float32 copy of pool rows `rows` (P indices), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], self.d), dtype=np.float32)
        unl = rows < self.n
        out[unl] = self.emb[self.canon[rows[unl]]]
        if not unl.all():
            out[~unl] = self.lab[self.lab_order[rows[~unl] - self.n]]
        if self.standard is not None:
            out -= self.standard[0]
            out *= self.standard[1]
        if self.unit:
            for lo in range(0, out.shape[0], self.block_rows):
                block = out[lo : lo + self.block_rows]
                norms = np.sqrt(np.square(block, dtype=np.float64).sum(axis=1))  # (b,) float64, per row
                block /= np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]  # a zero row stays zero
        if self.shift is not None:
            out -= self.shift
        return out

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
        """(lo, hi, float32 rows lo..hi-1) over the whole pool in P order."""
        for lo in range(0, self.N, rows):
            hi = min(self.N, lo + rows)
            yield lo, hi, self.gather(np.arange(lo, hi))


# ----------------------------------------------------------------------------------------------
# k-means of the pool (typiclust's clusters, probcover's pseudo-labels)
# ----------------------------------------------------------------------------------------------


def kmeans_pp(x: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """(K, d) float32 k-means++ seeds (D^2 sampling) among the rows of x (m >= K). When every remaining
    point coincides with a seed (D^2 = 0 everywhere), the next seed is drawn uniformly among the rest."""
    m = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)  # (m,)
    chosen = np.zeros(m, dtype=bool)
    first = int(rng.integers(m))
    picks = [first]
    chosen[first] = True
    d2 = np.maximum(sq + sq[first] - 2.0 * (x @ x[first]).astype(np.float64), 0.0)  # (m,)
    d2[chosen] = 0.0
    for _ in range(1, K):
        total = d2.sum()
        if total > 0:
            nxt = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
            nxt = min(nxt, m - 1)
            if chosen[nxt]:  # rounding at the very end of the cumulative sum
                nxt = int(np.flatnonzero(~chosen & (d2 > 0))[-1])
        else:
            free = np.flatnonzero(~chosen)
            nxt = int(free[rng.integers(free.shape[0])])
        picks.append(nxt)
        chosen[nxt] = True
        np.minimum(d2, np.maximum(sq + sq[nxt] - 2.0 * (x @ x[nxt]).astype(np.float64), 0.0), out=d2)
        d2[chosen] = 0.0
    return np.ascontiguousarray(x[np.asarray(picks)], dtype=np.float32)


def seeded_kmeans(
    pool: PoolRows,
    K: int,
    seed: int,
    niter: int = KMEANS_NITER,
    points_per_centroid: int = POINTS_PER_CENTROID,
) -> tuple[np.ndarray, np.ndarray]:
    """K-means of all pool rows: ((K, d) float32 centroids, (N,) int64 cluster of each row in P order).

    Trained (faiss Lloyd, `niter` iterations, k-means++ seeds) on a seeded sample of at most
    K * points_per_centroid rows drawn in P order; then every row is assigned to its nearest centroid
    in chunks (faiss, float32; ties to the lower centroid index). Deterministic for (pool rows, seed).
    """
    faiss = require_faiss()  # lazy: keeps `import ray_al.acquisition` light

    N, d = pool.N, pool.d
    K = int(min(max(K, 1), N))
    rng = np.random.default_rng([int(seed), 0x7C1])
    m = min(N, K * int(points_per_centroid))
    sample = np.arange(N) if m == N else np.sort(rng.choice(N, size=m, replace=False))
    train = pool.gather(sample)  # (m, d)
    m_pp = min(m, K * KMEANS_PP_POINTS)
    pp_rows = np.arange(m) if m_pp == m else np.sort(rng.choice(m, size=m_pp, replace=False))
    init = kmeans_pp(train[pp_rows], K, rng)  # (K, d)
    if niter > 0 and K > 1:
        km = faiss.Kmeans(d, K, niter=int(niter), seed=int(rng.integers(2**31 - 1)), verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=m + 1)  # we sampled already
        km.train(train, init_centroids=init)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    else:
        centroids = init
    del train
    labels = np.empty(N, dtype=np.int64)
    for lo, hi, x in pool.chunks():
        _, idx = faiss.knn(x, centroids, 1)  # (b, 1)
        labels[lo:hi] = idx[:, 0]
    return centroids, labels


def cluster_members(labels: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows sorted by (cluster, P), (K + 1,) start of each cluster in them)."""
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=K))])
    return order, starts
