"""Least-confidence sampling (Lewis & Gale 1994; Culotta & McCallum 2005): query the lowest top-1 probability."""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import Strategy, on_rows, register


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """(n, C) probabilities -> (n,) 1 - max_c p_c."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


STRATEGY = register(Strategy("least_confidence", "score", on_rows(least_confidence_scores),
                            summary="1 - max class probability"))
