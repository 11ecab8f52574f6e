"""BADGE: Batch Active learning by Diverse Gradient Embeddings (Ash et al., ICLR 2020).

Each candidate's gradient embedding is the gradient of the cross-entropy loss with respect to the
last linear layer's weight W (C x d), taking the model's own prediction yhat = argmax p as the
hypothesised label:  g = (p - onehot(yhat)) (outer) h,  flattened to C*d, where h is the penultimate
feature the layer sees (view.embeddings). Its norm is large for uncertain points and its direction
varies with the features, so k-means++ seeding over g picks a batch that is both uncertain and diverse.

k-means++ seeding as in the authors' code: the first center is the point with the largest gradient
norm (init="max_norm", default; init="random" draws it uniformly with the seed); each next center is
drawn with probability proportional to D^2, the squared distance to the nearest chosen center. If
every remaining point has D^2 = 0 (duplicates of centers), the next is drawn uniformly among them.

Memory: g is never materialised. ||g_i - g_j||^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i.a_j)(h_i.h_j)
with a = p - onehot(yhat), so one center update is a pass over (n, C) and (n, d) with O(n) extra memory.
The whole selection is deterministic given (ids, seed): it runs in ascending-id order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ray_al.acquisition.base import PREFILTER_OPTIONS, PoolView, Strategy, register
from ray_al.core.ids import canonical_order

_CHUNK_ROWS = 1 << 16  # rows per chunk of the D^2 update (bounds the float64 temporaries)


def badge_residuals(probs: np.ndarray) -> np.ndarray:
    """(n, C) probs -> (n, C) a = p - onehot(argmax p): dCE/dlogits for the hypothesised label."""
    a = np.asarray(probs, dtype=np.float64).copy()  # (n, C)
    a[np.arange(a.shape[0]), a.argmax(axis=1)] -= 1.0
    return a


def gradient_embeddings(probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """(n, C) probs, (n, d) features -> (n, C*d) g, row-major like W.grad.flatten() of a (C, d) weight.

    Materialises n x C*d: for tests and small pools; selection uses the kernel form instead.
    """
    a = badge_residuals(probs)  # (n, C)
    h = np.asarray(embeddings, dtype=np.float64)  # (n, d)
    return (a[:, :, None] * h[:, None, :]).reshape(a.shape[0], -1)  # (n, C*d)


def _sq_dist_to(a: np.ndarray, h: np.ndarray, sq_norm: np.ndarray, j: int) -> np.ndarray:
    """(n,) ||g_i - g_j||^2 for all i from the factors, in row chunks; clipped at 0 (rounding)."""
    n = a.shape[0]
    out = np.empty(n, dtype=np.float64)
    aj, hj = a[j], h[j]
    for lo in range(0, n, _CHUNK_ROWS):
        hi = min(n, lo + _CHUNK_ROWS)
        cross = (a[lo:hi] @ aj) * (h[lo:hi] @ hj).astype(np.float64)  # (b,) <g_i, g_j>
        out[lo:hi] = sq_norm[lo:hi] + sq_norm[j] - 2.0 * cross
    np.maximum(out, 0.0, out=out)
    return out


def kmeans_pp_gradient(
    probs: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    seed: int,
    init: Literal["max_norm", "random"] = "max_norm",
) -> np.ndarray:
    """k-means++ seeding over the gradient embeddings; (k,) positions in selection order."""
    a = badge_residuals(probs)  # (n, C)
    h = np.asarray(embeddings)
    if h.dtype not in (np.float32, np.float64):
        h = h.astype(np.float32)
    n = a.shape[0]
    sq_norm = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h).astype(np.float64)  # (n,) |g|^2
    rng = np.random.default_rng(seed)
    if init == "max_norm":
        first = int(np.argmax(sq_norm))  # first maximum: the lowest id among ties (canonical order)
    elif init == "random":
        first = int(rng.integers(n))
    else:
        raise ValueError(f"badge init must be 'max_norm' or 'random', got {init!r}")
    chosen = np.zeros(n, dtype=bool)
    picks = [first]
    chosen[first] = True
    d2 = _sq_dist_to(a, h, sq_norm, first)  # (n,) D^2 to the nearest center
    d2[chosen] = 0.0
    for _ in range(1, k):
        cum = np.cumsum(d2)
        total = cum[-1]
        if total > 0:
            # first index whose cumulative mass exceeds u: zero-mass (chosen) points are never hit
            nxt = int(np.searchsorted(cum, rng.random() * total, side="right"))
            nxt = min(nxt, n - 1)
        else:
            free = np.flatnonzero(~chosen)
            nxt = int(free[rng.integers(free.shape[0])])
        picks.append(nxt)
        chosen[nxt] = True
        np.minimum(d2, _sq_dist_to(a, h, sq_norm, nxt), out=d2)
        d2[nxt] = 0.0
    return np.asarray(picks, dtype=np.int64)


def badge_select(
    view: PoolView, k: int, seed: int, init: Literal["max_norm", "random"] = "max_norm"
) -> np.ndarray:
    canon = canonical_order(view.ids)  # (n,)
    probs = np.asarray(view.probs)[canon]
    emb = np.asarray(view.embeddings)[canon]
    return canon[kmeans_pp_gradient(probs, emb, k, seed, init)]


STRATEGY = register(Strategy("badge", "select", badge_select, required=frozenset({"probs", "embeddings"}),
                            options=frozenset({"init"}) | PREFILTER_OPTIONS,
                            summary="k-means++ seeding over last-layer gradient embeddings (Ash et al. 2020)"))
