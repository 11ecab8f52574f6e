"""A committee of linear heads by bagging (query by bagging, Abe & Mamitsuka 1998), for
`select.committee=heads`: the members whose disagreement committee_vote_entropy / committee_kl score.

Each of the m members is a softmax-regression head on the frozen embeddings, fitted on its own bootstrap
resample of the labeled set (L draws with replacement, expressed as per-row counts); its class
probabilities on the unlabeled embeddings are one slice of committee_probs (m, n, C).

- Features are centred on the labeled mean and divided by ONE scale (the RMS deviation over all features),
  not per feature: a feature that is nearly constant on a few labeled points must not blow up on the pool.
- Objective per head: sum_i w_i CE(softmax(x_i W + b), y_i) + (l2 / 2)(||W||^2 + ||b||^2), w_i = bootstrap
  count. l2 = 1 is scikit-learn LogisticRegression's default (C = 1). The bias is penalised too, so a class
  absent from a resample (or from the labeled set) has a finite optimum and a small positive probability.
  Strictly convex: L-BFGS finds the unique optimum.
- Deterministic: head j draws from SeedSequence(seed).spawn(m)[j] over the labeled rows in ascending id
  order, so the same ids + seed give the same heads whatever order the rows arrive in, and the first m
  heads of a larger committee are the m heads of a smaller one.

Pure module (numpy/scipy, never ray). Fitting touches only the labeled set; scoring the pool is chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from ray_al.core.ids import canonical_order

L2 = 1.0  # scikit-learn's default C = 1 (see the module docstring)
MAX_ITER = 300  # L-BFGS iterations per head; the strictly convex fit usually stops well before
SCORE_CHUNK_ROWS = 8192  # pool rows scored at once: 8192 x 512 float64 = 32 MiB


def bootstrap_counts(n_rows: int, size: int, seed: int) -> np.ndarray:
    """(size, n_rows) int64: how often each row is drawn in each member's resample of n_rows draws."""
    children = np.random.SeedSequence(seed).spawn(size)  # child j does not depend on `size`
    return np.stack(
        [np.bincount(np.random.default_rng(c).integers(0, n_rows, n_rows), minlength=n_rows) for c in children]
    ).astype(np.int64)


def fit_softmax_head(
    x: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    sample_weight: np.ndarray | None = None,
    l2: float = L2,
    max_iter: int = MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted L2-regularised softmax regression on (already scaled) x: (W (d, C), b (C,)), float64."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    keep = w > 0  # rows a resample never drew cost nothing to leave out
    x, y, w = x[keep], y[keep], w[keep]
    n, d = x.shape
    rows = np.arange(n)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes:]
        logits = x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        loss = -(w * (logits[rows, y] - log_norm)).sum() + 0.5 * l2 * (theta @ theta)
        resid = np.exp(logits - log_norm[:, None])  # probabilities, then minus the one-hot labels
        resid[rows, y] -= 1.0
        resid *= w[:, None]
        grad = np.concatenate([(x.T @ resid).ravel(), resid.sum(axis=0)]) + l2 * theta
        return float(loss), grad

    result = minimize(loss_and_grad, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": int(max_iter)})
    theta = result.x
    return theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes:]


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class HeadsOptions:
    """How each head is fitted (l2, L-BFGS max_iter) and how many pool rows are scored at once."""

    l2: float = L2
    max_iter: int = MAX_ITER
    chunk_rows: int = SCORE_CHUNK_ROWS


def heads_committee_probs(
    labeled_embeddings: np.ndarray,
    labeled_labels: np.ndarray,
    embeddings: np.ndarray,
    n_classes: int,
    size: int,
    seed: int,
    labeled_ids: np.ndarray | None = None,
    options: HeadsOptions = HeadsOptions(),
) -> np.ndarray:
    """(size, n, n_classes) float32 class probabilities of `size` bagged softmax heads on `embeddings`.

    labeled_ids: the labeled rows' pool ids; the bootstrap draws in their ascending order (row order
    then does not matter). Without them, the rows' given order is used.
    """
    lab = np.asarray(labeled_embeddings)
    y = np.asarray(labeled_labels)
    pool = np.asarray(embeddings)
    if lab.ndim != 2 or lab.shape[0] == 0:
        raise ValueError(
            f"the heads committee is fitted on the labeled set's embeddings, got shape {lab.shape}; "
            "it needs at least one labeled image (check al.initial_size and the labeled split)."
        )
    if not np.isfinite(lab).all():
        raise ValueError("labeled embeddings contain NaN/inf; re-run the embed step (check for a diverged model).")
    if y.shape != (lab.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"labeled_labels must be ({lab.shape[0]},) integers, got shape {y.shape} dtype {y.dtype}")
    if ((y < 0) | (y >= n_classes)).any():
        raise ValueError(f"labeled_labels must lie in [0, {n_classes}); check the ledger's class set.")
    if pool.ndim != 2 or pool.shape[1] != lab.shape[1]:
        raise ValueError(f"embeddings must have shape (n, {lab.shape[1]}) like the labeled set, got {pool.shape}")
    if int(size) < 1:
        raise ValueError(f"committee size must be >= 1, got {size}; set select.committee_size.")
    if labeled_ids is not None:
        if np.shape(labeled_ids) != (lab.shape[0],):
            raise ValueError(f"labeled_ids must have shape ({lab.shape[0]},), got {np.shape(labeled_ids)}")
        order = canonical_order(labeled_ids)
        lab, y = lab[order], y[order]
    x = lab.astype(np.float64)
    mean = x.mean(axis=0)
    x -= mean
    scale = float(np.sqrt((x * x).mean()))
    scale = scale if scale > 0 else 1.0  # all labeled embeddings equal: nothing to scale
    x /= scale

    # One BLAS thread: fitting is many small (L, d) products, where thread hand-offs cost more than they
    # save; measured L 1000, d 512, m 5, pool 100k on a busy 2-core machine: fit 0.2 s + score 0.35 s with
    # one thread, fit 6-8 s and score 0.3-1.7 s with two.
    with threadpool_limits(limits=1, user_api="blas"):
        weights, bias = _fit_heads(x, y, n_classes, int(size), seed, options)
        # Fold the scaling into the heads: ((z - mean) / scale) W + b = z (W / scale) + (b - mean W / scale),
        # then one (rows, d) x (d, m C) product per chunk scores every head.
        weights /= scale
        bias -= mean @ weights
        return _score(pool, weights, bias, n_classes, int(options.chunk_rows))


def _fit_heads(x: np.ndarray, y: np.ndarray, n_classes: int, size: int, seed: int, options: HeadsOptions
               ) -> tuple[np.ndarray, np.ndarray]:
    """The `size` bagged heads on the scaled labeled rows side by side: (W (d, m C), b (m C,))."""
    counts = bootstrap_counts(len(y), size, seed)
    heads = [fit_softmax_head(x, y, n_classes, c, l2=options.l2, max_iter=options.max_iter) for c in counts]
    return np.concatenate([w for w, _ in heads], axis=1), np.concatenate([b for _, b in heads])


def _score(pool: np.ndarray, weights: np.ndarray, bias: np.ndarray, n_classes: int, chunk_rows: int) -> np.ndarray:
    """(m, n, C) float32 softmax of every head on the pool, chunk_rows pool rows at a time."""
    size = weights.shape[1] // n_classes
    n = pool.shape[0]
    out = np.empty((size, n, n_classes), dtype=np.float32)
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        logits = (pool[start:stop].astype(np.float64) @ weights + bias).reshape(stop - start, size, n_classes)
        out[:, start:stop] = _softmax_rows(logits).transpose(1, 0, 2)
    return out
