"""Weibull outlier score (DALBT): checked against scipy with known parameters and against an independent
re-computation of the per-class fit, including the few-correct-samples fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import weibull_min

from ray_al.acquisition import PoolView, score, select
from ray_al.acquisition.weibull import fit_class_weibulls


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    u = rng.normal(size=(n, d))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def one_hot_probs(classes: np.ndarray, n_classes: int) -> np.ndarray:
    p = np.full((classes.shape[0], n_classes), 0.1 / (n_classes - 1))
    p[np.arange(classes.shape[0]), classes] = 0.9
    return p


def known_weibull_view(shape: float, scale: float, pool_distances: np.ndarray, seed: int = 0) -> PoolView:
    """Class 0's labeled embeddings lie at Weibull(shape, scale) distances from their mean (exactly 0:
    each point comes with its mirror image); pool points lie at `pool_distances`, predicted class 0."""
    rng = np.random.default_rng(seed)
    d = 4
    r = weibull_min.rvs(shape, scale=scale, size=1500, random_state=rng)
    u = unit_vectors(rng, r.shape[0], d)
    cls0 = np.concatenate([r[:, None] * u, -r[:, None] * u])  # (3000, d), mean 0
    cls1 = np.array([50.0, 0, 0, 0]) + rng.normal(size=(20, d))  # a second, far class
    labeled = np.concatenate([cls0, cls1])
    labels = np.concatenate([np.zeros(cls0.shape[0], int), np.ones(cls1.shape[0], int)])
    pool = pool_distances[:, None] * unit_vectors(rng, pool_distances.shape[0], d)
    return PoolView(
        ids=np.arange(pool.shape[0]),
        probs=one_hot_probs(np.zeros(pool.shape[0], int), 2),
        embeddings=pool,
        labeled_embeddings=labeled,
        labeled_labels=labels,
        labeled_probs=one_hot_probs(labels, 2),
    )


def test_full_fit_recovers_the_true_weibull_cdf() -> None:
    shape, scale = 2.5, 3.0
    t = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 30.0])
    view = known_weibull_view(shape, scale, t)
    s = score("weibull", view, tail_size=None)
    np.testing.assert_allclose(s, weibull_min.cdf(t, shape, scale=scale), atol=0.02)
    assert s[0] < 1e-12  # at the class mean
    assert s[-1] > 0.999  # far out
    assert np.all(np.diff(s) >= 0)  # monotone in the distance
    assert select("weibull", view, 1, tail_size=None).tolist() == [8]


def test_tail_fit_scores_the_bulk_low_and_the_tail_high() -> None:
    shape, scale = 2.5, 3.0
    median = scale * np.log(2) ** (1 / shape)
    t = np.array([median, weibull_min.ppf(0.999, shape, scale=scale), 30.0])
    s = score("weibull", known_weibull_view(shape, scale, t))  # default tail of 20 of 3000
    assert s[0] < 0.01  # a typical in-class distance is not an outlier under the tail model
    assert 0.05 < s[1] < 0.95  # inside the fitted tail
    assert s[2] > 0.999


def reference_scores(view: PoolView, tail_size: int, assign: str = "predicted", exclude_wrong: bool = True) -> np.ndarray:
    """DALBT's recipe written out directly with numpy/scipy."""
    le, ll = view.labeled_embeddings, view.labeled_labels
    predicted_l = view.labeled_probs.argmax(1)
    models = {}
    for c in range(view.probs.shape[1]):
        rows = (ll == c) & (predicted_l == c) if exclude_wrong else ll == c
        if rows.sum() < 3:
            rows = ll == c
        if rows.sum() < 3:
            continue
        mu = le[rows].mean(0)
        dist = np.sort(np.linalg.norm(le[rows] - mu, axis=1))[-tail_size:]
        k, _, lam = weibull_min.fit(dist, floc=0)
        models[c] = (mu, k, lam)
    out = []
    for x, p in zip(view.embeddings, view.probs):
        c = int(p.argmax())
        if assign == "nearest" or c not in models:
            c = min(models, key=lambda j: np.linalg.norm(x - models[j][0]))
        mu, k, lam = models[c]
        out.append(weibull_min.cdf(np.linalg.norm(x - mu), k, scale=lam))
    return np.array(out)


def fallback_view(seed: int = 0) -> PoolView:
    """Class 0: 30 correct + 5 misclassified far away; class 1: 2 correct + 4 wrong (fallback to all
    its labeled points); class 2: 2 labeled points (no model); pool points predicted as every class."""
    rng = np.random.default_rng(seed)
    d, n_classes = 5, 3
    centers = np.array([[0.0] * d, [12.0] + [0.0] * (d - 1), [0.0, 12.0] + [0.0] * (d - 2)])
    emb0 = centers[0] + rng.normal(size=(35, d)) * rng.uniform(0.5, 2, size=(35, 1))
    emb0[30:] += 40 * unit_vectors(rng, 5, d)  # the misclassified ones lie far out
    emb1 = centers[1] + rng.normal(size=(6, d))
    emb2 = centers[2] + rng.normal(size=(2, d))
    labeled = np.concatenate([emb0, emb1, emb2])
    labels = np.array([0] * 35 + [1] * 6 + [2] * 2)
    predicted = labels.copy()
    predicted[30:35] = 1
    predicted[[37, 38, 39, 40]] = 0
    pool_classes = rng.integers(0, n_classes, 60)
    pool = centers[pool_classes] + rng.normal(size=(60, d)) * rng.uniform(0.5, 4, size=(60, 1))
    return PoolView(
        ids=np.arange(60) * 7,
        probs=one_hot_probs(pool_classes, n_classes),
        embeddings=pool,
        labeled_embeddings=labeled,
        labeled_labels=labels,
        labeled_probs=one_hot_probs(predicted, n_classes),
    )


@pytest.mark.parametrize("assign", ["predicted", "nearest"])
def test_scores_match_independent_recipe_with_fallbacks(assign: str) -> None:
    view = fallback_view()
    s = score("weibull", view, tail_size=10, assign=assign)
    np.testing.assert_allclose(s, reference_scores(view, 10, assign), atol=1e-4)
    # the test has teeth: keeping the misclassified points would change the scores
    assert not np.allclose(s, reference_scores(view, 10, assign, exclude_wrong=False), atol=1e-2)
    models = fit_class_weibulls(view.labeled_embeddings, view.labeled_labels, view.labeled_probs, 3, tail_size=10)
    assert {c: (m.source, m.n_samples) for c, m in models.items()} == {0: ("correct", 30), 1: ("all_labeled", 6)}


def test_no_class_with_enough_labels_is_an_error() -> None:
    view = fallback_view()
    few = PoolView(**{**view.__dict__, "labeled_embeddings": view.labeled_embeddings[39:],
                      "labeled_labels": view.labeled_labels[39:], "labeled_probs": view.labeled_probs[39:]})  # fmt: skip
    with pytest.raises(ValueError, match=r"at least 3 labeled images in some class.*\[0, 2, 2\]"):
        score("weibull", few)
    with pytest.raises(ValueError, match="tail_size"):
        score("weibull", view, tail_size=1)
    with pytest.raises(ValueError, match="assign"):
        score("weibull", view, assign="closest")


def test_degenerate_tail_is_a_step_at_the_largest_distance() -> None:
    # four correct points at distance exactly 1 from their mean (the origin)
    labeled = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    labels = np.zeros(4, int)
    pool = np.array([[0.5, 0.0], [0.0, 0.99], [1.5, 0.0], [0, -3.0]])
    view = PoolView(
        ids=np.arange(4),
        probs=one_hot_probs(np.zeros(4, int), 2),
        embeddings=pool,
        labeled_embeddings=labeled,
        labeled_labels=labels,
        labeled_probs=one_hot_probs(labels, 2),
    )
    np.testing.assert_array_equal(score("weibull", view), [0.0, 0.0, 1.0, 1.0])
