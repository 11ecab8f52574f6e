"""Uniform random sampling: the baseline every AL paper compares to."""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import PoolView, Strategy, register
from ray_al.core.ids import canonical_order


def random_select(view: PoolView, k: int, seed: int) -> np.ndarray:
    """k distinct positions drawn uniformly; depends on the set of ids and the seed, not the row order."""
    canon = canonical_order(view.ids)  # (n,) positions sorted by id
    rng = np.random.default_rng(seed)
    return canon[rng.permutation(canon.shape[0])[:k]]


STRATEGY = register(Strategy("random", "select", random_select, required=frozenset(),
                            summary="uniform random (seeded); reads only the ids"))
