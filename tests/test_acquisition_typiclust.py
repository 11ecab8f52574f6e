"""TypiClust (TPC-RP) on planted clusters with known answers: the densest point of the largest cluster
first, one pick per cluster by size, labeled clusters later, round robin past the cluster count, small
clusters ignored, ties by id, row order and seeds. No Ray. The pool-scale memory bound (n = 200,000,
d = 128) is in test_acquisition_probcover.py, run for both strategies."""

from __future__ import annotations

import numpy as np
import pytest

from ray_al.acquisition import PoolView, select
from ray_al.acquisition.geometry import row_order
from ray_al.acquisition.typiclust import mean_knn_distance, typiclust_select
from tests.selection_checks import assert_row_order_free

CENTERS = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
SIZES = (300, 200, 120, 60)  # largest first: the visiting order on a cold start
SIGMAS = (1.0, 0.5, 2.0, 0.8)  # different densities


pytestmark = pytest.mark.usefixtures("single_threaded_faiss")


def planted(sizes=SIZES, sigmas=SIGMAS, centers=CENTERS, seed=0):
    """(x float32 (n, 2), cluster of each row, ids: a seeded permutation of spread-out integers)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + s * rng.standard_normal((m, c.shape[0])) for c, m, s in zip(centers, sizes, sigmas)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    ids = rng.permutation(x.shape[0]).astype(np.int64) * 7 + 1000
    return x.astype(np.float32), y, ids


def view_of(x, ids, labeled=None):
    return PoolView(ids=ids, probs=np.full((x.shape[0], 2), 0.5), embeddings=x, labeled_embeddings=labeled)


def brute_mean_knn(x: np.ndarray, knn: int) -> np.ndarray:
    """(m,) mean Euclidean distance to the knn nearest other rows, from a full float64 matrix."""
    x = np.asarray(x, np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :knn].mean(axis=1)


def most_typical(x, ids, rows, extra=None, skip=()):
    """Id of the most typical unlabeled row among `rows` (the cluster's members; `extra` labeled rows
    count as neighbours), excluding ids in `skip`; ties by lowest id."""
    members = x[rows] if extra is None else np.concatenate([x[rows], extra])
    mean = brute_mean_knn(members, min(20, members.shape[0] // 2))[: rows.shape[0]]
    cand = [(mean[i], ids[r]) for i, r in enumerate(rows) if ids[r] not in skip]
    return min(cand)[1]


def test_cold_start_densest_point_of_each_cluster_largest_first() -> None:
    x, y, ids = planted()
    pos, info = typiclust_select(view_of(x, ids), 4, seed=0, scaling="none", max_clusters=4)
    assert y[pos].tolist() == [0, 1, 2, 3]  # one per cluster, by size
    for c, p in zip(range(4), pos):
        assert ids[p] == most_typical(x, ids, np.flatnonzero(y == c))
    assert info["clusters"] == 4 and info["eligible_clusters"] == 4
    assert info["picks_cluster_size"] == list(SIZES)


def test_k_sets_the_number_of_clusters_on_a_cold_start() -> None:
    """K = min(|labeled| + k, max_clusters): k = 4 with the default max_clusters finds the 4 clusters."""
    x, y, ids = planted()
    pos, info = typiclust_select(view_of(x, ids), 4, seed=0, scaling="none")
    assert info["clusters"] == 4
    assert y[pos].tolist() == [0, 1, 2, 3]


def test_cluster_with_labeled_points_is_visited_later() -> None:
    x, y, ids = planted()
    labeled = x[y == 0][:1] + np.float32(0.01)  # one labeled point in the largest cluster
    # K = min(1 + 3, 4) = 4: the three clusters without labels come first, by size
    pos, _ = typiclust_select(view_of(x, ids, labeled), 3, seed=0, scaling="none", max_clusters=4)
    assert y[pos].tolist() == [1, 2, 3]
    # with one more pick every cluster holds one label; the largest comes next
    pos, info = typiclust_select(view_of(x, ids, labeled), 4, seed=0, scaling="none", max_clusters=4)
    assert y[pos].tolist() == [1, 2, 3, 0]
    assert info["labeled"] == 1
    # the pick in cluster 0 is its most typical unlabeled point, the labeled point counting as a neighbour
    assert ids[pos[3]] == most_typical(x, ids, np.flatnonzero(y == 0), extra=labeled)


def test_more_picks_than_clusters_go_round_robin_by_typicality() -> None:
    x, y, ids = planted()
    pos, info = typiclust_select(view_of(x, ids), 9, seed=0, scaling="none", max_clusters=4)
    assert y[pos].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert np.unique(pos).shape[0] == 9
    rows0 = np.flatnonzero(y == 0)
    first = most_typical(x, ids, rows0)
    second = most_typical(x, ids, rows0, skip={first})
    third = most_typical(x, ids, rows0, skip={first, second})
    assert [ids[pos[0]], ids[pos[4]], ids[pos[8]]] == [first, second, third]


def test_clusters_of_five_or_fewer_points_are_ignored() -> None:
    centers = np.vstack([CENTERS, [[200.0, 200.0]]])
    x, y, ids = planted(sizes=(*SIZES, 5), sigmas=(*SIGMAS, 0.1), centers=centers)
    pos, info = typiclust_select(view_of(x, ids), 5, seed=0, scaling="none", max_clusters=5)
    assert info["clusters"] == 5 and info["eligible_clusters"] == 4
    assert y[pos].tolist() == [0, 1, 2, 3, 0]  # never the 5-point cluster
    assert not info["small_clusters_used"]


def test_only_small_clusters_still_gives_k_distinct_picks() -> None:
    x, y, ids = planted(sizes=(4, 4, 4), sigmas=(0.1, 0.1, 0.1), centers=CENTERS[:3])
    pos, info = typiclust_select(view_of(x, ids), 6, seed=0, scaling="none", max_clusters=3)
    assert info["eligible_clusters"] == 0 and info["small_clusters_used"]
    assert np.unique(pos).shape[0] == 6
    assert sorted(y[pos[:3]].tolist()) == [0, 1, 2]  # equal sizes: round robin over the three


def test_ties_by_id_with_duplicated_points() -> None:
    x, y, ids = planted()
    best = int(np.flatnonzero(ids == most_typical(x, ids, np.flatnonzero(y == 0)))[0])
    x = np.concatenate([x, x[best : best + 1]])  # a second copy of the most typical point, with a lower id
    y = np.concatenate([y, [0]])
    ids = np.concatenate([ids, [5]])
    pos, _ = typiclust_select(view_of(x, ids), 4, seed=0, scaling="none", max_clusters=4)
    assert ids[pos[0]] == 5  # both copies tie; the lower id wins
    assert ids[pos[0]] == most_typical(x, ids, np.flatnonzero(y == 0))
    # and with the ids the other way round, the original wins
    ids2 = ids.copy()
    ids2[-1] = ids[best] + 1
    pos2, _ = typiclust_select(view_of(x, ids2), 4, seed=0, scaling="none", max_clusters=4)
    assert pos2[0] == best
    assert mean_knn_distance(x[-1:].repeat(6, axis=0), 2).tolist() == [0.0] * 6  # exact zeros tie


def test_independent_of_row_order() -> None:
    x, _, ids = planted()
    assert_row_order_free(typiclust_select, view_of, x, ids, n_labeled=7, jitter=0.05, k=6, seed=4, rng_seed=3)


def test_deterministic_for_a_seed_and_cold_start_forms_agree() -> None:
    x, _, ids = planted()
    a, ia = typiclust_select(view_of(x, ids), 7, seed=11, scaling="none", max_clusters=5)
    b, ib = typiclust_select(view_of(x, ids), 7, seed=11, scaling="none", max_clusters=5)
    c, ic = typiclust_select(view_of(x, ids, np.empty((0, 2), np.float32)), 7, seed=11, scaling="none", max_clusters=5)
    assert a.tolist() == b.tolist() == c.tolist() and ia == ib == ic
    for seed in range(3):  # any seed: distinct valid positions
        p, _ = typiclust_select(view_of(x, ids), 7, seed=seed, scaling="none", max_clusters=5)
        assert np.unique(p).shape[0] == 7 and p.min() >= 0 and p.max() < x.shape[0]


def test_registered_strategy_through_dispatch_fills_info() -> None:
    x, y, ids = planted()
    rec: dict = {}
    pos = select("typiclust", view_of(x.astype(np.float64), ids), 4, seed=0, max_clusters=4, info=rec)
    assert y[pos].tolist() == [0, 1, 2, 3]
    assert rec["clusters"] == 4 and rec["eligible_clusters"] == 4
    assert select("typiclust", view_of(x, ids), 0).shape == (0,)
    with pytest.raises(ValueError, match="max_clusters"):
        select("typiclust", view_of(x, ids), 2, max_clusters=0)
    with pytest.raises(ValueError, match="unknown option"):
        select("typiclust", view_of(x, ids), 2, budget=3)


def test_labeled_row_order_is_a_function_of_the_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 3)).astype(np.float32)
    perm = rng.permutation(50)
    assert np.array_equal(a[row_order(a)], a[perm][row_order(a[perm])])
