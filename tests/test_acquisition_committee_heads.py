"""select.committee=heads: bagged softmax-regression heads (ray_al.acquisition.heads).

Checked against independent computations: scikit-learn's LogisticRegression for the fits, the known
fraction of distinct rows in a bootstrap resample (1 - (1 - 1/n)^n), and separable data whose answer is
known (unanimous far from the boundary, disagreement only between the classes).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ray_al.acquisition import PoolView, score
from ray_al.acquisition.committee import mean_kl_to_consensus_scores, vote_entropy_scores
from ray_al.acquisition.heads import L2, HeadsOptions, bootstrap_counts, fit_softmax_head, heads_committee_probs


def sklearn_probs(x: np.ndarray, y: np.ndarray, weight: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
    """The same objective by scikit-learn: a constant column stands for the (penalised) bias."""
    ones = np.ones((len(x), 1))
    ref = LogisticRegression(C=1.0 / L2, fit_intercept=False, tol=1e-10, max_iter=10_000)
    ref.fit(np.hstack([x, ones]), y, sample_weight=weight)
    return ref.predict_proba(np.hstack([x_eval, np.ones((len(x_eval), 1))]))


def blobs(n_per_class: int, n_classes: int, d: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * spread
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centers[y] + rng.normal(size=(len(y), d)), y


# ------------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------------


def test_bootstrap_counts_are_resamples_with_the_known_distinct_fraction() -> None:
    n = 20_000
    counts = bootstrap_counts(n, 4, seed=3)
    assert counts.shape == (4, n) and (counts >= 0).all()
    assert (counts.sum(axis=1) == n).all()  # n draws each
    distinct = (counts > 0).mean(axis=1)
    expected = 1 - (1 - 1 / n) ** n  # ~ 1 - 1/e = 0.632
    np.testing.assert_allclose(distinct, expected, atol=0.01)
    assert not (counts[0] == counts[1]).all(), "members must draw different resamples"


def test_bootstrap_is_deterministic_by_seed_and_prefix_stable() -> None:
    np.testing.assert_array_equal(bootstrap_counts(50, 3, seed=7), bootstrap_counts(50, 3, seed=7))
    assert not np.array_equal(bootstrap_counts(50, 3, seed=7), bootstrap_counts(50, 3, seed=8))
    # adding members leaves the existing ones unchanged
    np.testing.assert_array_equal(bootstrap_counts(50, 5, seed=7)[:3], bootstrap_counts(50, 3, seed=7))


# ------------------------------------------------------------------------------------------------
# the fits against scikit-learn
# ------------------------------------------------------------------------------------------------


def test_weighted_head_matches_sklearn_logistic_regression() -> None:
    x, y = blobs(15, 3, 4, spread=1.5, seed=0)
    weight = np.random.default_rng(1).integers(0, 3, len(y)).astype(float)  # zeros included
    x_eval = np.random.default_rng(2).normal(size=(40, 4)) * 2
    w, b = fit_softmax_head(x, y, 3, weight)
    logits = x_eval @ w + b
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    np.testing.assert_allclose(ours, sklearn_probs(x, y, weight, x_eval), atol=2e-5)


def test_every_member_is_sklearn_on_its_bootstrap_of_the_scaled_features() -> None:
    x, y = blobs(12, 3, 5, spread=1.0, seed=4)
    x = x * 7 + 30  # far from centred unit scale: the scaling must be undone on the pool too
    ids = np.random.default_rng(5).permutation(1000)[: len(y)]
    pool = np.random.default_rng(6).normal(size=(25, 5)) * 7 + 30
    cp = heads_committee_probs(x, y, pool, 3, size=4, seed=11, labeled_ids=ids)
    assert cp.shape == (4, 25, 3) and cp.dtype == np.float32
    # documented scheme: labeled rows in ascending id order, centred on their mean, one RMS scale
    order = np.argsort(ids)
    xs, ys = x[order], y[order]
    mean = xs.mean(0)
    scale = np.sqrt(((xs - mean) ** 2).mean())
    counts = bootstrap_counts(len(ys), 4, seed=11)
    for j in range(4):
        ref = sklearn_probs((xs - mean) / scale, ys, counts[j], (pool - mean) / scale)
        np.testing.assert_allclose(cp[j], ref, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# disagreement on data with a known answer
# ------------------------------------------------------------------------------------------------


def test_separable_classes_agree_far_away_and_disagree_only_between_them() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    x = np.column_stack([np.where(y == 0, -3.0, 3.0) + rng.normal(size=80), rng.normal(size=80)])
    line = np.linspace(-10, 10, 2001)
    pool = np.column_stack([line, np.zeros_like(line)])
    cp = heads_committee_probs(x, y, pool, 2, size=7, seed=0)
    ve = vote_entropy_scores(cp)
    kl = mean_kl_to_consensus_scores(cp)
    far = np.abs(line) > 6
    assert (cp.argmax(2)[:, far] == (line[far] > 0)).all()  # every head right, so the votes are unanimous
    assert (ve[far] == 0).all()
    assert ve.max() > 0, "bootstrap heads place their boundaries differently somewhere"
    assert np.abs(line[ve > 0]).max() < 3, "votes split only between the two classes"
    assert abs(line[kl.argmax()]) < 3
    assert kl[far].max() < 0.01 * kl.max()


def test_a_single_labeled_class_gives_a_unanimous_committee_on_its_examples() -> None:
    x = np.random.default_rng(0).normal(size=(10, 3))
    cp = heads_committee_probs(x, np.full(10, 2), x, 4, size=3, seed=0)
    assert (cp.argmax(2) == 2).all()
    assert (vote_entropy_scores(cp) == 0).all()


def test_a_class_without_examples_has_the_finite_stationary_point() -> None:
    x, y = blobs(10, 2, 3, spread=3.0, seed=0)  # classes 0, 1 of C = 3
    weight = np.random.default_rng(1).integers(0, 3, len(y)).astype(float)
    w, b = fit_softmax_head(x, y, 3, weight)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # zero gradient of the objective for class 2: W_2 = -X^T (weight * p_2) / l2, b_2 = -sum(weight * p_2) / l2
    np.testing.assert_allclose(w[:, 2], -(x.T @ (weight * p[:, 2])) / L2, atol=1e-4)
    np.testing.assert_allclose(b[2], -(weight * p[:, 2]).sum() / L2, atol=1e-4)
    assert b[2] < 0 and (p[:, 2] > 0).all()


def test_classes_absent_from_a_resample_or_the_labeled_set_still_get_a_probability() -> None:
    x, y = blobs(10, 2, 3, spread=3.0, seed=0)  # classes 0, 1 of C = 4
    x, y = np.vstack([x, [[0.0, 0.0, 9.0]]]), np.append(y, 2)  # one example of class 2, none of class 3
    counts = bootstrap_counts(len(y), 6, seed=0)
    missed = counts[:, -1] == 0
    assert missed.any() and not missed.all(), "pick a seed where some resamples miss the class-2 row"
    pool = np.vstack([x, np.random.default_rng(1).normal(size=(20, 3))])
    cp = heads_committee_probs(x, y, pool, 4, size=6, seed=0)
    assert cp.shape == (6, len(pool), 4)
    assert (cp > 0).all() and np.isfinite(cp).all()
    np.testing.assert_allclose(cp.sum(2), 1, atol=1e-5)
    # a head that drew no class-2 example cannot tell classes 2 and 3 apart: equal probabilities everywhere
    np.testing.assert_allclose(cp[missed, :, 2], cp[missed, :, 3], rtol=1e-4)
    class2 = cp[:, len(y) - 1, 2]  # the class-2 example itself
    assert class2[~missed].min() > class2[missed].max()  # heads that saw it rank it higher
    view = PoolView(ids=np.arange(len(pool)), probs=cp.mean(0), committee_probs=cp)
    assert np.isfinite(score("committee_kl", view)).all()


# ------------------------------------------------------------------------------------------------
# determinism and chunking
# ------------------------------------------------------------------------------------------------


def test_same_seed_same_committee_whatever_the_labeled_row_order() -> None:
    x, y = blobs(20, 3, 6, spread=0.8, seed=2)
    ids = np.arange(500, 500 + len(y))
    pool = np.random.default_rng(3).normal(size=(50, 6))
    first = heads_committee_probs(x, y, pool, 3, size=5, seed=9, labeled_ids=ids)
    np.testing.assert_array_equal(first, heads_committee_probs(x, y, pool, 3, size=5, seed=9, labeled_ids=ids))
    perm = np.random.default_rng(4).permutation(len(y))
    shuffled = heads_committee_probs(x[perm], y[perm], pool, 3, size=5, seed=9, labeled_ids=ids[perm])
    np.testing.assert_array_equal(first, shuffled)
    assert np.abs(first - heads_committee_probs(x, y, pool, 3, size=5, seed=10, labeled_ids=ids)).max() > 1e-3
    # a larger committee keeps the members of a smaller one
    np.testing.assert_array_equal(
        heads_committee_probs(x, y, pool, 3, size=7, seed=9, labeled_ids=ids)[:5], first)


def test_chunked_scoring_equals_one_chunk() -> None:
    x, y = blobs(10, 3, 4, spread=1.0, seed=5)
    pool = np.random.default_rng(6).normal(size=(103, 4)).astype(np.float32)
    whole = heads_committee_probs(x, y, pool, 3, size=3, seed=1)
    chunked = heads_committee_probs(x, y, pool, 3, size=3, seed=1, options=HeadsOptions(chunk_rows=10))
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lab", "labels", "pool", "size", "match"),
    [
        (np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros((5, 3)), 3, "at least one labeled image"),
        (np.ones((4, 3)), np.array([0, 1, 2, 3]), np.zeros((5, 3)), 3, r"lie in \[0, 3\)"),
        (np.ones((4, 3)), np.array([0, 1, 2, 0]), np.zeros((5, 2)), 3, r"shape \(n, 3\)"),
        (np.ones((4, 3)), np.array([0, 1, 2, 0]), np.zeros((5, 3)), 0, "committee_size"),
        (np.full((4, 3), np.nan), np.array([0, 1, 2, 0]), np.zeros((5, 3)), 3, "NaN"),
    ],
)
def test_bad_inputs_say_what_is_wrong(lab, labels, pool, size, match) -> None:
    with pytest.raises(ValueError, match=match):
        heads_committee_probs(lab, labels, pool, 3, size=size, seed=0)
