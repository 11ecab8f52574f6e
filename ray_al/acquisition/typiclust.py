"""TypiClust, TPC-RP variant (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", ICML 2022):
query the most typical point of each of the largest clusters that the labeled set does not cover yet.

The low-budget answer to "uncertainty and CoreSet spend the first labels on outliers". Paper defaults:

- K = min(|labeled| + k, max_clusters) clusters, max_clusters = 500 (the authors' MAX_NUM_CLUSTERS), by
  k-means on the embeddings of the WHOLE pool (labeled + unlabeled).
- Clusters with min_cluster_size = 5 or fewer points are ignored (MIN_CLUSTER_SIZE = 5).
- Clusters are visited by fewest labeled members first, ties by largest size, then by cluster index. A
  point picked in this call counts as labeled, so with fewer eligible clusters than k the picks go round
  robin in that order. (The authors' code sorts once and cycles; re-ranking after every pick is the same
  when every cluster starts with equal labeled counts, and fills under-labeled clusters first otherwise.)
- In the cluster, the unlabeled point of highest typicality
      typicality(x) = 1 / mean_{x' in kNN(x)} ||x - x'||_2,   K_NN = min(knn = 20, |cluster| // 2)
  with the neighbours searched among all members of the cluster, labeled ones included (typicality is a
  density of the data; the authors' code drops labeled and already picked points from the neighbour set).

Our choices, documented: k-means is one run of faiss Lloyd (niter = 25, faiss' default) from a seeded
k-means++ initialisation, trained on a seeded sample of at most 256 points per centroid (faiss' default
max_points_per_centroid), then every pool point is assigned to its nearest centroid (the authors use
scikit-learn KMeans for K <= 50 and MiniBatchKMeans above). Neighbours are found by float32 faiss; the
distances that make up the typicality are recomputed in float64 from the coordinate differences and the
mean is rounded to float32: equal values (duplicates) tie, and ties go to the lowest id.

Determinism: the unlabeled candidates are processed in ascending-id order and the labeled rows in an order
fixed by their values, so the picks depend on (ids, embeddings, labeled set, seed), not on row order.

Memory: one pass over the pool for the cluster assignment (chunks), then one cluster at a time: its
members' features and their kNN lists, O(cluster size x (d + knn)). Never an n x n or n x |labeled|
matrix. Time: the within-cluster kNN is O(m^2 d) for a cluster of m points (m ~ n / K).

`typiclust_select(view, k, seed, **options) -> (positions, info)`; the registered strategy returns the
positions and, given `info={}`, fills that dict with the same record.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ray_al.acquisition.base import PoolView, Strategy, recording, register
from ray_al.core.ids import canonical_order, splitmix64
from ray_al.core.optional import require_faiss

MAX_CLUSTERS = 500  # the authors' MAX_NUM_CLUSTERS
MIN_CLUSTER_SIZE = 5  # clusters with this many points or fewer are ignored
KNN = 20  # neighbours of the typicality (capped at half the cluster)
KMEANS_NITER = 25  # Lloyd iterations (faiss' default)
POINTS_PER_CENTROID = 256  # k-means training sample per centroid (faiss' default max_points_per_centroid)
KMEANS_PP_POINTS = 64  # k-means++ seeding runs on at most this many sampled points per centroid
CHUNK_ROWS = 65536  # rows per pass-over-the-pool chunk (bounds the float32 copies to ~chunk x d)
PAIR_VALUES = 1 << 20  # pair coordinates per exact-distance batch (8 MB per float64 temporary)


# ----------------------------------------------------------------------------------------------
# the pool in canonical order (shared with probcover.py)
# ----------------------------------------------------------------------------------------------


def _row_order(x: np.ndarray) -> np.ndarray:
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


class PoolRows:
    """The whole pool as rows P = [unlabeled in ascending-id order (n), labeled in value-hash order (L)].

    Row p < n is the unlabeled candidate at position `canon[p]` of the view (so p is its id rank);
    nothing is copied up front: `gather` and `chunks` return float32 copies of the rows asked for.
    """

    def __init__(self, view: PoolView) -> None:
        self.emb = np.asarray(view.embeddings)  # (n, d)
        self.canon = canonical_order(view.ids)  # (n,) view position of row p
        lab = view.labeled_embeddings
        lab = None if lab is None else np.asarray(lab)
        if lab is not None and lab.shape[0] == 0:
            lab = None  # an empty labeled set is a cold start
        self.lab = lab
        self.lab_order = _row_order(lab) if lab is not None else np.empty(0, np.int64)
        self.n = int(self.emb.shape[0])
        self.L = 0 if lab is None else int(lab.shape[0])
        self.N = self.n + self.L
        self.d = int(self.emb.shape[1])
        self.shift: np.ndarray | None = None  # (d,) float32 subtracted from every row gathered (centering)

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
        if self.shift is not None:
            out -= self.shift
        return out

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
        """(lo, hi, float32 rows lo..hi-1) over the whole pool in P order."""
        for lo in range(0, self.N, rows):
            hi = min(self.N, lo + rows)
            yield lo, hi, self.gather(np.arange(lo, hi))


# ----------------------------------------------------------------------------------------------
# k-means (shared with probcover.py)
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


# ----------------------------------------------------------------------------------------------
# typicality
# ----------------------------------------------------------------------------------------------


def mean_knn_distance(x: np.ndarray, knn: int) -> np.ndarray:
    """(m,) float32 mean Euclidean distance of each row of x (m, d) to its knn nearest other rows.

    Neighbours by float32 faiss on the centred rows (the row itself is dropped by index, so duplicates
    count as neighbours at distance 0); the distances averaged are recomputed from the coordinate
    differences in float64, and the mean is rounded to float32 so equal points get equal values.
    knn < 1 (a single point) gives 0.
    """
    faiss = require_faiss()

    m = x.shape[0]
    knn = int(min(knn, m - 1))
    if knn < 1:
        return np.zeros(m, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)  # smaller norms: better float32 screening
    _, idx = faiss.knn(x, x, knn + 1)  # (m, knn + 1)
    drop = idx == np.arange(m)[:, None]
    drop[~drop.any(axis=1), -1] = True  # self not returned (> knn exact duplicates): drop the farthest
    nb = idx[~drop].reshape(m, knn)  # (m, knn)
    out = np.empty(m, dtype=np.float32)
    rows_per = max(1, PAIR_VALUES // (knn * x.shape[1]))
    for lo in range(0, m, rows_per):
        hi = min(m, lo + rows_per)
        diff = x[nb[lo:hi]].astype(np.float64)  # (b, knn, d)
        diff -= x[lo:hi, None, :]
        out[lo:hi] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)).mean(axis=1)
    return out


def typicality(x: np.ndarray, knn: int = KNN) -> np.ndarray:
    """(m,) 1 / (mean distance to the min(knn, m // 2) nearest neighbours) of each row of a cluster x.

    A point whose neighbours all coincide with it has infinite typicality.
    """
    mean = mean_knn_distance(x, min(int(knn), x.shape[0] // 2)).astype(np.float64)
    with np.errstate(divide="ignore"):
        return 1.0 / mean


# ----------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"typiclust option {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def visit_clusters(pool: PoolRows, labels: np.ndarray, K: int, k: int, knn: int, min_cluster_size: int,
                   info: dict[str, Any]) -> list[int]:
    """k picks (P indices): each from the eligible cluster with the fewest labeled members (picks count),
    then the largest, then the lowest index; in it the unlabeled point of smallest mean kNN distance
    (highest typicality), ties by lowest id. Each cluster's typicality is computed once, when first visited."""
    n = pool.n
    order, starts = cluster_members(labels, K)
    sizes = np.diff(starts)  # (K,)
    labeled_count = np.bincount(labels[n:], minlength=K)  # (K,)
    unlabeled_left = sizes - labeled_count  # (K,)
    eligible = sizes > min_cluster_size
    info["eligible_clusters"] = int(eligible.sum())
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cluster -> (unlabeled rows, mean kNN distance)
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    for _ in range(k):
        active = eligible & (unlabeled_left > 0)
        if not active.any():  # the eligible clusters are used up: the small ones, in the same order
            active = unlabeled_left > 0
            info["small_clusters_used"] = True
        cand = np.flatnonzero(active)
        c = int(cand[np.lexsort((cand, -sizes[cand], labeled_count[cand]))[0]])
        if c not in cache:
            members = order[starts[c] : starts[c + 1]]  # P rows, ascending: unlabeled (by id) first
            score = mean_knn_distance(pool.gather(members), min(knn, members.shape[0] // 2))
            cache[c] = (members[members < n], score[members < n])
        rows, score = cache[c]
        p = int(rows[int(np.argmin(np.where(taken[rows], np.inf, score)))])  # first minimum: lowest id
        taken[p] = True
        picks.append(p)
        labeled_count[c] += 1
        unlabeled_left[c] -= 1
        info["picks_cluster"].append(c)
        info["picks_cluster_size"].append(int(sizes[c]))
    return picks


def typiclust_select(
    view: PoolView,
    k: int,
    seed: int,
    max_clusters: int = MAX_CLUSTERS,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
    knn: int = KNN,
    niter: int = KMEANS_NITER,
) -> tuple[np.ndarray, dict[str, Any]]:
    """((k,) positions into view.ids in selection order, info).

    info: clusters (K), eligible_clusters (clusters with more than min_cluster_size points), picks_cluster
    (cluster of each pick), picks_cluster_size, small_clusters_used (True when the eligible clusters ran out
    of unlabeled points and smaller ones were used), labeled (|labeled|).
    """
    max_clusters = _check_int("max_clusters", max_clusters, 1)
    min_cluster_size = _check_int("min_cluster_size", min_cluster_size, 0)
    knn = _check_int("knn", knn, 1)
    niter = _check_int("niter", niter, 0)
    k = int(k)
    pool = PoolRows(view)
    if k > pool.n:
        raise ValueError(f"asked for k={k} points but the pool has only n={pool.n} unlabeled candidates")
    K = max(1, min(pool.L + k, max_clusters, pool.N))
    info: dict[str, Any] = {"clusters": K, "eligible_clusters": 0, "picks_cluster": [],
                            "picks_cluster_size": [], "small_clusters_used": False, "labeled": pool.L}
    if k == 0:
        return np.empty(0, dtype=np.int64), info
    _, labels = seeded_kmeans(pool, K, seed, niter=niter)
    picks = visit_clusters(pool, labels, K, k, knn, min_cluster_size, info)
    return pool.canon[np.asarray(picks, dtype=np.int64)], info


STRATEGY = register(Strategy(
    "typiclust", "select", recording(typiclust_select), required=frozenset({"embeddings"}),
    optional=frozenset({"labeled_embeddings"}),
    options=frozenset({"max_clusters", "min_cluster_size", "knn", "niter", "info"}),
    summary="TypiClust (TPC-RP): most typical point of the largest clusters without labels (Hacohen et al. 2022)"))
