"""BADGE: gradient embeddings against torch autograd, the kernel distances against explicit vectors, and
the k-means++ (D^2) seeding against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_al.acquisition import PoolView, select
from ray_al.acquisition.badge import _sq_dist_to, badge_residuals, gradient_embeddings


def linear_head_outputs(n: int = 12, d: int = 6, n_classes: int = 4, seed: int = 0):
    """features h, softmax probs of a random linear head, and the head itself."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(d, n_classes).double()
    h = torch.randn(n, d, dtype=torch.float64)  # (n, d)
    with torch.no_grad():
        probs = torch.softmax(head(h), dim=1)  # (n, C)
    return h, probs, head


def explicit_gradients(probs: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(n, C*d) g_i = outer(p_i - e_{argmax p_i}, h_i), written out point by point."""
    rows = []
    for p, x in zip(probs, h):
        e = np.zeros_like(p)
        e[np.argmax(p)] = 1.0
        rows.append(np.outer(p - e, x).ravel())
    return np.array(rows)


def test_gradient_embedding_equals_autograd_of_ce_wrt_last_layer_weight() -> None:
    h, probs, head = linear_head_outputs()
    g = gradient_embeddings(probs.numpy(), h.numpy())  # (n, C*d)
    for i in range(h.shape[0]):
        head.zero_grad()
        logits = head(h[i : i + 1])  # (1, C)
        hypothesised = logits.argmax(dim=1)  # the model's own prediction as the label
        torch.nn.functional.cross_entropy(logits, hypothesised).backward()
        np.testing.assert_allclose(g[i], head.weight.grad.flatten().numpy(), atol=1e-12)


def test_kernel_distances_equal_explicit_gradient_distances() -> None:
    h, probs, _ = linear_head_outputs(n=30)
    p, x = probs.numpy(), h.numpy()
    g = explicit_gradients(p, x)
    a = badge_residuals(p)
    sq_norm = (a * a).sum(1) * (x * x).sum(1)
    for j in (0, 7, 29):
        np.testing.assert_allclose(_sq_dist_to(a, x, sq_norm, j), ((g - g[j]) ** 2).sum(1), rtol=1e-9, atol=1e-12)


def test_first_center_is_the_largest_gradient() -> None:
    h, probs, _ = linear_head_outputs(n=40)
    view = PoolView(ids=np.arange(40) + 100, probs=probs.numpy(), embeddings=h.numpy())
    g = explicit_gradients(view.probs, view.embeddings)
    assert select("badge", view, 1)[0] == np.argmax(np.linalg.norm(g, axis=1))


@pytest.mark.parametrize("seed", range(8))
def test_second_pick_is_where_all_the_d2_mass_is(seed: int) -> None:
    # every candidate but one duplicates the same (probs, features); the odd one is the only point at
    # non-zero gradient distance from a duplicate, so after a seeded first duplicate it must come next
    rng = np.random.default_rng(seed)
    n, odd = 25, int(rng.integers(25))
    probs = np.tile([0.6, 0.3, 0.1], (n, 1))
    emb = np.tile([1.0, -2.0, 0.5], (n, 1))
    probs[odd], emb[odd] = [0.2, 0.5, 0.3], [0.3, 0.1, 2.0]
    view = PoolView(ids=rng.permutation(n), probs=probs, embeddings=emb)
    pos = select("badge", view, 3, seed=seed, init="random")
    if pos[0] != odd:
        assert pos[1] == odd
    assert np.unique(pos).shape[0] == 3  # zero mass left: the third is drawn among the rest


def test_d2_sampling_frequencies_follow_squared_distances() -> None:
    h, probs, _ = linear_head_outputs(n=5, seed=3)
    view = PoolView(ids=np.arange(5), probs=probs.numpy(), embeddings=h.numpy())
    g = explicit_gradients(view.probs, view.embeddings)
    first = int(np.argmax(np.linalg.norm(g, axis=1)))
    d2 = ((g - g[first]) ** 2).sum(1)
    expected = d2 / d2.sum()
    draws = 3000
    seconds = np.array([select("badge", view, 2, seed=s)[1] for s in range(draws)])
    freq = np.bincount(seconds, minlength=5) / draws
    assert freq[first] == 0
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(freq - expected) <= 4 * sigma + 1e-9), (freq, expected)


def test_selection_spreads_over_gradient_clusters() -> None:
    # three tight clusters of equally uncertain points: k = 3 takes one from each (D^2 makes a repeat
    # within a cluster about (0.01 / 25)^2-unlikely)
    rng = np.random.default_rng(0)
    centers = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    cluster = np.repeat(np.arange(3), 20)
    emb = centers[cluster] + 0.01 * rng.normal(size=(60, 3))
    probs = np.tile([0.4, 0.35, 0.25], (60, 1))
    view = PoolView(ids=np.arange(60), probs=probs, embeddings=emb)
    for seed in range(5):
        assert sorted(cluster[select("badge", view, 3, seed=seed)].tolist()) == [0, 1, 2]
