"""k-center greedy / CoreSet (Sener & Savarese, ICLR 2018): pick the candidates farthest from the labeled set
and from each other, in the embedding space.

A thin adapter over `ray_al.acquisition.kcenter_greedy.kcenter_greedy` (the exact greedy kernels shared with the
distributed selector). The candidates are passed in ascending-id order so the result, including the
seeded first center of a cold start (no labeled set), depends on the ids and the seed, not on row order.
`prefilter=NAME, prefilter_factor=F` runs it among the F*k highest NAME scores (see hybrid.py).
"""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import PREFILTER_OPTIONS, PoolView, Strategy, register
from ray_al.core.ids import canonical_order


def kcenter_select(view: PoolView, k: int, seed: int) -> np.ndarray:
    from ray_al.acquisition.kcenter_greedy import kcenter_greedy  # lazy: keeps `import ray_al.acquisition` light

    canon = canonical_order(view.ids)  # (n,)
    features = np.ascontiguousarray(np.asarray(view.embeddings)[canon])  # (n, d)
    labeled = view.labeled_embeddings
    if labeled is not None and np.asarray(labeled).shape[0] == 0:
        labeled = None  # an empty labeled set is a cold start
    picks = np.asarray(kcenter_greedy(features, k, None, seed, labeled_features=labeled), dtype=np.int64)
    return canon[picks]


STRATEGY = register(Strategy("kcenter", "select", kcenter_select, required=frozenset({"embeddings"}),
                            optional=frozenset({"labeled_embeddings"}), options=PREFILTER_OPTIONS,
                            summary="k-center greedy (CoreSet) over embeddings, labeled set as initial centers"))
