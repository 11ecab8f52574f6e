"""Checks that every pool-geometry strategy (typiclust, probcover) must pass, shared by their test modules."""
from __future__ import annotations

import numpy as np


def assert_row_order_free(select_fn, view_of, x, ids, *, n_labeled: int, jitter: float, k: int, seed: int,
                          rng_seed: int) -> None:
    """select_fn(view, k, seed) -> (rows, info) picks the same ids, with the same info, when the pool's rows
    and the labeled rows come in another order."""
    rng = np.random.default_rng(rng_seed)
    labeled = (x[rng.choice(x.shape[0], n_labeled, replace=False)] + jitter).astype(np.float32)
    want, info = select_fn(view_of(x, ids, labeled), k, seed=seed)
    perm = rng.permutation(x.shape[0])
    got, info2 = select_fn(view_of(x[perm], ids[perm], labeled[::-1].copy()), k, seed=seed)
    assert ids[perm][got].tolist() == ids[want].tolist()
    assert info2 == info
