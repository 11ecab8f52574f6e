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

Our choices, documented: distances are measured on the features scaled by `scaling` (geometry.PoolRows;
default "standardize": each dimension to unit variance over the pool, then each row to length 1; "none" is
the paper's raw features). k-means is one run of faiss Lloyd (niter = 25, faiss' default) from a seeded
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

from typing import Any

import numpy as np

from ray_al.acquisition.base import PoolView, Strategy, recording, register
from ray_al.acquisition.geometry import KMEANS_NITER, PAIR_VALUES, SCALING, PoolRows, cluster_members, seeded_kmeans
from ray_al.core.optional import require_faiss

MAX_CLUSTERS = 500  # the authors' MAX_NUM_CLUSTERS
MIN_CLUSTER_SIZE = 5  # clusters with this many points or fewer are ignored
KNN = 20  # neighbours of the typicality (capped at half the cluster)


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
    scaling: str = SCALING,
) -> tuple[np.ndarray, dict[str, Any]]:
    """((k,) positions into view.ids in selection order, info).

    info: scaling, clusters (K), eligible_clusters (clusters with more than min_cluster_size points), picks_cluster
    (cluster of each pick), picks_cluster_size, small_clusters_used (True when the eligible clusters ran out
    of unlabeled points and smaller ones were used), labeled (|labeled|).
    """
    max_clusters = _check_int("max_clusters", max_clusters, 1)
    min_cluster_size = _check_int("min_cluster_size", min_cluster_size, 0)
    knn = _check_int("knn", knn, 1)
    niter = _check_int("niter", niter, 0)
    k = int(k)
    pool = PoolRows(view, scaling)
    if k > pool.n:
        raise ValueError(f"asked for k={k} points but the pool has only n={pool.n} unlabeled candidates")
    K = max(1, min(pool.L + k, max_clusters, pool.N))
    info: dict[str, Any] = {"scaling": scaling, "clusters": K, "eligible_clusters": 0, "picks_cluster": [],
                            "picks_cluster_size": [], "small_clusters_used": False, "labeled": pool.L}
    if k == 0:
        return np.empty(0, dtype=np.int64), info
    _, labels = seeded_kmeans(pool, K, seed, niter=niter)
    picks = visit_clusters(pool, labels, K, k, knn, min_cluster_size, info)
    return pool.canon[np.asarray(picks, dtype=np.int64)], info


STRATEGY = register(Strategy(
    "typiclust", "select", recording(typiclust_select), required=frozenset({"embeddings"}),
    optional=frozenset({"labeled_embeddings"}),
    options=frozenset({"max_clusters", "min_cluster_size", "knn", "niter", "scaling", "info"}),
    summary="TypiClust (TPC-RP): most typical point of the largest clusters without labels (Hacohen et al. 2022)"))
