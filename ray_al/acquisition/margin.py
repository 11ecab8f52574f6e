"""Margin sampling (Scheffer et al. 2001): query the smallest gap between the two most likely classes."""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import Strategy, on_rows, register


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """(n, C) probabilities -> (n,) 1 - (p_top1 - p_top2), in [0, 1]; 1 = a dead heat."""
    p = np.asarray(probs, dtype=np.float64)  # (n, C)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]  # (n, 2): second largest, largest
    return 1.0 - (top2[:, 1] - top2[:, 0])


STRATEGY = register(Strategy("margin", "score", on_rows(margin_scores),
                            summary="1 - (top-1 minus top-2 probability)"))
