"""Entropy sampling (Shannon 1948; as an AL baseline e.g. Settles 2010): query the most uncertain prediction."""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import Strategy, on_rows, register


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """(n, C) probabilities -> (n,) H(p) = -sum_c p_c log p_c in nats, with 0 log 0 = 0."""
    p = np.asarray(probs, dtype=np.float64)  # (n, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)  # (n, C)
    return -plogp.sum(axis=1)


STRATEGY = register(Strategy("entropy", "score", on_rows(entropy_scores),
                            summary="predictive entropy of the class probabilities"))
