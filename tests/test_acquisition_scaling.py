"""The geometry typiclust and probcover measure distances in (acquisition.geometry.PoolRows `scaling`)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ray_al.acquisition import PoolView, select
from ray_al.acquisition.geometry import SCALING, PoolRows
from ray_al.core.config import Config

pytestmark = pytest.mark.usefixtures("single_threaded_faiss")
METHODS = ("typiclust", "probcover")


def clustered(seed: int = 0, n: int = 600, stretch: float = 1.0):
    """(x float32 (n, 3), cluster of each row): four clusters in dimensions 0-1, noise in dimension 2 with
    standard deviation `stretch`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centers = np.array([[0, 0], [8, 0], [0, 8], [8, 8]], np.float64)
    x = np.concatenate([centers[y] + rng.standard_normal((n, 2)), stretch * rng.standard_normal((n, 1))], axis=1)
    return x.astype(np.float32), y


def by_hand(x: np.ndarray) -> np.ndarray:
    """Each dimension to zero mean and unit variance over all rows, then each row to length 1."""
    x64 = x.astype(np.float64)
    z = (x - x64.mean(0).astype(np.float32)) * (1.0 / x64.std(0)).astype(np.float32)
    return (z / np.sqrt((z.astype(np.float64) ** 2).sum(1))[:, None].astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_standardize_is_the_method_on_standardised_unit_rows(method: str) -> None:
    x, _ = clustered(seed=1)
    x[:, 0] *= 30.0  # dimensions on different scales
    ids = np.arange(len(x), dtype=np.int64) * 3 + 5
    free, lab = np.arange(550), np.arange(550, 600)  # the statistics run over labeled rows too
    z = by_hand(x)
    given = PoolView(ids=ids[free], embeddings=x[free], labeled_embeddings=x[lab])
    done = PoolView(ids=ids[free], embeddings=z[free], labeled_embeddings=z[lab])
    rows = np.arange(550)  # the unlabeled rows (labeled ones come in an order of their values)
    assert np.abs(PoolRows(given, "standardize").gather(rows) - PoolRows(done).gather(rows)).max() < 1e-6
    cold, cold_done = PoolView(ids=ids, embeddings=x), PoolView(ids=ids, embeddings=z)  # rows in id order
    picks = select(method, cold, 12, seed=3)
    assert picks.tolist() == select(method, cold_done, 12, seed=3, scaling="none").tolist()
    assert picks.tolist() != select(method, cold, 12, seed=3, scaling="none").tolist()


@pytest.mark.parametrize("method", METHODS)
def test_a_stretched_noise_dimension_does_not_decide_the_picks(method: str) -> None:
    """Raw distances follow the dimension with the largest spread; standardised ones weigh each alike:
    over six pools, 8 standardised picks always reach the four clusters, raw ones miss one on some pools."""
    missed = 0
    for seed in range(6):
        x, y = clustered(seed=seed, stretch=200.0)
        view = PoolView(ids=np.arange(len(x), dtype=np.int64), embeddings=x, probs=np.full((len(x), 4), 0.25))
        assert set(y[select(method, view, 8, seed=0)].tolist()) == {0, 1, 2, 3}, seed
        missed += len(set(y[select(method, view, 8, seed=0, scaling="none")].tolist())) < 4
    assert missed >= 2


def test_standardised_picks_ignore_a_dimension_s_units() -> None:
    x, _ = clustered(seed=4)
    ids = np.arange(len(x), dtype=np.int64)
    stretched = x * np.array([1.0, 1000.0, 0.001], np.float32)
    for method in METHODS:
        a = select(method, PoolView(ids=ids, embeddings=x), 10, seed=1)
        b = select(method, PoolView(ids=ids, embeddings=stretched), 10, seed=1)
        assert a.tolist() == b.tolist(), method


def test_unit_scaling_gives_rows_of_length_one_and_zero_rows_stay_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    rows = PoolRows(PoolView(ids=np.arange(3), embeddings=x), "unit").gather(np.arange(3))
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])


def test_a_constant_dimension_and_an_unknown_scaling() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]], np.float32)
    rows = PoolRows(PoolView(ids=np.arange(3), embeddings=x), "standardize").gather(np.arange(3))
    assert np.isfinite(rows).all() and np.allclose(rows[:, 1], 0.0)
    with pytest.raises(ValueError, match="standardize, unit, none"):
        select("typiclust", PoolView(ids=np.arange(3), embeddings=x), 1, scaling="whiten")


def test_the_cycle_hands_select_scaling_to_the_geometric_methods_only() -> None:
    from ray_al.loop.selection import strategy_options

    cfg = Config()
    cfg = dataclasses.replace(cfg, select=dataclasses.replace(cfg.select, scaling="unit"))
    for method in ("typiclust", "probcover", "auto"):
        assert strategy_options(cfg, method)["scaling"] == "unit"
    assert "scaling" not in strategy_options(cfg, "margin")
    assert Config().select.scaling == SCALING == "standardize"  # one default for the cycle and select()
