"""`auto` as a strategy: typiclust or margin, decided each round by ray_al.acquisition.policy.

    positions = select("auto", view, k, seed=0, info={})   # info["method"], info["why"], info["signals"]

Pure (numpy, faiss through the methods it runs), never imports ray. Reads the unlabeled embeddings and,
when present, the class probabilities and the labeled embeddings and labels; without probabilities (a
user's own embeddings) or labels (a cold start) it is typiclust. Otherwise the policy's data rule
(policy.DATA_RULE): margin once the model's mean top-class probability over the unlabeled rows reaches
0.8, typiclust before. `switch_per_class=N` keeps the fixed rule of commit 059c831 (typiclust below N
labels per class).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ray_al.acquisition.base import PoolView, Strategy, recording, register
from ray_al.acquisition.dispatch import select
from ray_al.acquisition.geometry import SCALING
from ray_al.acquisition.policy import AUTO, EARLY_METHOD, LATE_METHOD, decide, labeled_in_class, rule_signals


def auto_select(view: PoolView, k: int, seed: int, switch_per_class: float | None = None,
                scaling: str = SCALING) -> tuple[np.ndarray, dict[str, Any]]:
    """((k,) positions, record): the record holds the method run, why, and the signals it read.
    scaling: typiclust's geometry (geometry.PoolRows)."""
    n_classes = 0 if view.probs is None else int(np.shape(view.probs)[1])
    choice, signals = decide(labeled_in_class(view), n_classes, switch_per_class, lambda: rule_signals(view))
    options = {"scaling": scaling} if choice.method == EARLY_METHOD else {}
    positions = select(choice.method, view, k, seed, **options)
    return positions, {"method": choice.method, "why": choice.why, "signals": signals}


STRATEGY = register(Strategy(
    AUTO, "select", recording(auto_select), required=frozenset({"embeddings"}),
    optional=frozenset({"probs", "labeled_embeddings", "labeled_labels"}),
    options=frozenset({"switch_per_class", "scaling", "info"}),
    summary=f"{EARLY_METHOD} until the data say {LATE_METHOD} pays (ray_al.acquisition.policy)"))
