"""Class-balanced random sampling by predicted class (argmax of probs).

The k picks are spread as evenly as possible over the predicted classes present in the pool: each
class gets min(its count, its share) and the share of classes that run out goes to the others
(water-filling). The order is round-robin over classes, so any prefix of the selection is balanced
too; within a round the classes come in a seeded random order (so the remainder of k / C does not
always favour class 0), and within a class the candidates come in a seeded random order.
"""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import PoolView, Strategy, register
from ray_al.core.ids import canonical_order


def balanced_select(view: PoolView, k: int, seed: int) -> np.ndarray:
    """k positions, class-balanced by predicted class; depends on ids + seed, not on row order."""
    canon = canonical_order(view.ids)  # (n,)
    predicted = np.asarray(view.probs).argmax(axis=1)[canon]  # (n,) in canonical order
    rng = np.random.default_rng(seed)
    classes = np.unique(predicted)
    members = [canon[predicted == c] for c in classes]  # canonical order within each class
    members = [m[rng.permutation(m.shape[0])] for m in members]
    class_order = rng.permutation(classes.shape[0])
    # rank r of class slot j: candidate r of that class is picked in round r, after the slots before j
    rounds = np.concatenate([np.arange(members[j].shape[0]) for j in class_order])
    slot = np.concatenate([np.full(members[j].shape[0], i) for i, j in enumerate(class_order)])
    pos = np.concatenate([members[j] for j in class_order])
    order = np.lexsort((slot, rounds))  # round first, then the class slot
    return pos[order[:k]]


STRATEGY = register(Strategy("balanced", "select", balanced_select,
                            summary="class-balanced random by predicted class (seeded)"))
