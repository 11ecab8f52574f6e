"""Weibull outlier score (DALBT, Mandivarapu et al.; after DAL-OSR 2020 and OpenMax, Bendale & Boult 2016).

DALBT Algorithm 1 / Sec. 3.3: take the latent vectors of the labeled images the model classifies
correctly, group them by class, compute each class mean, fit a Weibull to the distances of the class's
points to its mean, and score every unlabeled image by the probability (the fitted CDF) that it is an
outlier; query the highest scores.

What this implementation does exactly:
- Distance: Euclidean, in the embedding space of `view.embeddings` (DALBT does not name one).
- Fit (libMR/OpenMax-style tail fit): the `tail_size` largest distances of the class (default 20, the
  OpenMax / libMR tail length; DALBT does not state its value), zero distances dropped, fitted with a
  two-parameter Weibull (location fixed at 0, maximum likelihood, `scipy.stats.weibull_min.fit`).
  tail_size=None fits all distances. Score = CDF(d) = 1 - exp(-(d / scale) ** shape), in [0, 1].
- Which labeled points define class c (mean and distances), in order of preference:
    1. "correct": labeled points with label c and argmax(labeled_probs) == c, if there are at least
       `min_samples` (default 3) of them;
    2. "all_labeled": otherwise all labeled points with label c (the correct ones are too few for a
       mean and a fit), if there are at least `min_samples`;
    3. otherwise class c has no model.
  If no class has a model, NotReady (a ValueError): the cycle falls back to select.fallback and says so.
- Degenerate tails (fewer than 2 positive distances, or all equal): a step model at the largest
  distance, CDF = 1 beyond it and 0 at or below it (the Weibull limit of infinite shape).
- Which class an unlabeled point is scored against: assign="predicted" (default, DALBT): its predicted
  class argmax(probs); when that class has no model, the nearest class mean that has one.
  assign="nearest": always the nearest class mean that has a model.
Higher score = more outlying = query first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ray_al.acquisition.base import NotReady, PoolView, Strategy, register

WEIBULL_TAIL_SIZE = 20  # OpenMax / libMR tail length; DALBT does not give one
WEIBULL_MIN_SAMPLES = 3  # fewer points than this give no usable mean + fit
_CHUNK_ELEMENTS = 1 << 22  # rows x d per distance chunk (32 MB of float64)


@dataclass(frozen=True)
class ClassWeibull:
    """Weibull model of one class: mean embedding and the fitted distance distribution."""

    label: int
    mean: np.ndarray  # (d,)
    shape: float  # Weibull shape k; inf for a step model
    scale: float  # Weibull scale lambda (the step position for a step model)
    source: Literal["correct", "all_labeled"]  # which labeled points defined the class
    n_samples: int  # labeled points used for the mean
    n_tail: int  # distances the fit used

    def cdf(self, distances: np.ndarray) -> np.ndarray:
        """(n,) distances -> (n,) P(D <= d) under this model."""
        d = np.asarray(distances, dtype=np.float64)
        if not np.isfinite(self.shape):
            return (d > self.scale).astype(np.float64)
        return -np.expm1(-np.power(d / self.scale, self.shape))


def fit_weibull_tail(distances: np.ndarray, tail_size: int | None = WEIBULL_TAIL_SIZE) -> tuple[float, float, int]:
    """(shape, scale, n_tail) of a 2-parameter Weibull (loc 0) fitted to the largest distances.

    Returns shape = inf (a step at the largest distance) when the tail is degenerate.
    """
    from scipy.stats import weibull_min

    d = np.sort(np.asarray(distances, dtype=np.float64))
    tail = d if tail_size is None else d[-int(tail_size):]
    tail = tail[tail > 0]
    if tail.shape[0] < 2 or tail[-1] - tail[0] <= 1e-12 * tail[-1]:
        return float("inf"), float(d[-1]) if d.shape[0] else 0.0, int(tail.shape[0])
    ref = float(np.median(tail))  # fit in units of the median: the optimiser is not scale-free
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shape, _, scale = weibull_min.fit(tail / ref, floc=0)
    except (ValueError, RuntimeError, FloatingPointError):
        shape, scale = float("nan"), float("nan")
    if not (np.isfinite(shape) and np.isfinite(scale) and shape > 0 and scale > 0):
        return float("inf"), float(tail[-1]), int(tail.shape[0])
    return float(shape), float(scale * ref), int(tail.shape[0])


def _distances_to(x: np.ndarray, means: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """(n, d) points, (K, d) means, (n,) mean index -> (n,) Euclidean distances, chunked."""
    n, d = x.shape
    out = np.empty(n, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(d, 1))
    for lo in range(0, n, step):
        diff = x[lo : lo + step].astype(np.float64) - means[assigned[lo : lo + step]]  # (b, d)
        out[lo : lo + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _nearest_mean(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(n, d) points, (K, d) means -> (n,) index of the nearest mean, chunked (memory O(chunk x K))."""
    n, d = x.shape
    out = np.empty(n, dtype=np.int64)
    mm = np.einsum("ij,ij->i", means, means)  # (K,)
    step = max(1, _CHUNK_ELEMENTS // max(d, means.shape[0], 1))
    for lo in range(0, n, step):
        xb = x[lo : lo + step].astype(np.float64)  # (b, d)
        d2 = mm[None, :] - 2.0 * xb @ means.T  # (b, K); |x|^2 is the same for every mean
        out[lo : lo + step] = d2.argmin(axis=1)
    return out


def fit_class_weibulls(
    labeled_embeddings: np.ndarray,
    labeled_labels: np.ndarray,
    labeled_probs: np.ndarray,
    n_classes: int,
    tail_size: int | None = WEIBULL_TAIL_SIZE,
    min_samples: int = WEIBULL_MIN_SAMPLES,
) -> dict[int, ClassWeibull]:
    """class -> ClassWeibull for every class that has a model (see the module docstring)."""
    emb = np.asarray(labeled_embeddings)  # (L, d)
    labels = np.asarray(labeled_labels)  # (L,)
    correct = np.asarray(labeled_probs).argmax(axis=1) == labels  # (L,)
    models: dict[int, ClassWeibull] = {}
    for c in range(n_classes):
        of_class = labels == c
        chosen, source = of_class & correct, "correct"
        if chosen.sum() < min_samples:
            chosen, source = of_class, "all_labeled"
        if chosen.sum() < min_samples:
            continue
        pts = emb[chosen].astype(np.float64)  # (n_c, d)
        mean = pts.mean(axis=0)  # (d,)
        dist = _distances_to(pts, mean[None, :], np.zeros(pts.shape[0], dtype=np.int64))
        shape, scale, n_tail = fit_weibull_tail(dist, tail_size)
        models[c] = ClassWeibull(c, mean, shape, scale, source, int(pts.shape[0]), n_tail)
    return models


def weibull_scores(
    embeddings: np.ndarray,
    probs: np.ndarray,
    models: dict[int, ClassWeibull],
    assign: Literal["predicted", "nearest"] = "predicted",
) -> np.ndarray:
    """(n, d) embeddings, (n, C) probs -> (n,) outlier probability under the assigned class model."""
    if not models:
        raise NotReady("no class has a Weibull model")
    labels = np.array(sorted(models), dtype=np.int64)  # (K,) classes with a model
    means = np.stack([models[int(c)].mean for c in labels])  # (K, d)
    x = np.asarray(embeddings)
    if assign == "predicted":
        slot_of_class = np.full(np.asarray(probs).shape[1], -1, dtype=np.int64)
        slot_of_class[labels] = np.arange(labels.shape[0])
        slot = slot_of_class[np.asarray(probs).argmax(axis=1)]  # (n,) -1 where no model
        missing = np.flatnonzero(slot < 0)
        if missing.shape[0]:
            slot[missing] = _nearest_mean(x[missing], means)
    elif assign == "nearest":
        slot = _nearest_mean(x, means)
    else:
        raise ValueError(f"weibull assign must be 'predicted' or 'nearest', got {assign!r}")
    dist = _distances_to(x, means, slot)  # (n,)
    scores = np.empty_like(dist)
    for j, c in enumerate(labels):
        rows = slot == j
        scores[rows] = models[int(c)].cdf(dist[rows])
    return scores


def _score(
    view: PoolView,
    tail_size: int | None = WEIBULL_TAIL_SIZE,
    min_samples: int = WEIBULL_MIN_SAMPLES,
    assign: Literal["predicted", "nearest"] = "predicted",
) -> np.ndarray:
    if tail_size is not None and (isinstance(tail_size, bool) or int(tail_size) < 2):
        raise ValueError(f"weibull tail_size must be an integer >= 2 or None (all), got {tail_size!r}")
    if int(min_samples) < 2:
        raise ValueError(f"weibull min_samples must be >= 2, got {min_samples!r}")
    n_classes = np.asarray(view.probs).shape[1]
    models = fit_class_weibulls(
        view.labeled_embeddings, view.labeled_labels, view.labeled_probs, n_classes, tail_size, int(min_samples)
    )
    if not models:
        raise NotReady(
            f"weibull needs at least {min_samples} labeled images in some class to fit a model; "
            f"the labeled set has class counts {np.bincount(np.asarray(view.labeled_labels), minlength=n_classes).tolist()}. "
            "Start with a larger initial labeled set or use another method for the first round."
        )
    return weibull_scores(view.embeddings, view.probs, models, assign)


STRATEGY = register(Strategy(
    "weibull", "score", _score,
    required=frozenset({"probs", "embeddings", "labeled_embeddings", "labeled_labels", "labeled_probs"}),
    options=frozenset({"tail_size", "min_samples", "assign"}),
    summary="DALBT Weibull outlier probability of the distance to the class mean"))
