"""Acquisition functions: which unlabeled candidates to query next. Pure (numpy/scipy), never imports ray.

    from ray_al.acquisition import PoolView, select, score, needs, ACQUISITIONS
    positions = select("entropy", PoolView(ids=ids, probs=probs), k=100, seed=0)
    query_ids = ids[positions]

select(method, view, k, seed=0, **options) -> (k,) positions into view.ids, best first
score(method, view, **options)             -> (n,) scores, higher = query first (score-based methods)
needs(method, **options)                   -> PoolView fields the method reads (what to embed)
top_k(scores, ids, k, seed)                -> the one shared ranking, ties by a seeded id hash

Registered: random, balanced, entropy, margin, least_confidence, variation_ratio,
committee_vote_entropy, committee_kl, weibull, badge, kcenter, typiclust, probcover, auto (typiclust or margin,
as the policy decides), and hybrids NAME_kcenter
(entropy, margin, least_confidence, weibull); any score can pre-filter kcenter/badge via
prefilter=NAME, prefilter_factor=F (default PREFILTER_FACTOR).
"""

from ray_al.acquisition.base import (
    ACQUISITIONS,
    PROB_SUM_ATOL,
    NotReady,
    PoolView,
    Strategy,
    check_probabilities,
    get,
    top_k,
    validate_view,
)
from ray_al.acquisition.dispatch import PREFILTER_FACTOR, needs, score, select

# importing a strategy module registers it; hybrid (it combines the others) and auto (it runs typiclust or
# margin, ray_al.acquisition.policy) last
from ray_al.acquisition import (  # noqa: E402,F401  isort: skip
    entropy,
    margin,
    least_confidence,
    committee,
    variation_ratio,
    random,
    balanced,
    weibull,
    badge,
    kcenter,
    typiclust,
    probcover,
    hybrid,
    auto,
)

REQUIREMENTS: dict[str, dict[str, frozenset[str]]] = {
    name: {"required": s.required, "optional": s.optional} for name, s in ACQUISITIONS.items()
}

__all__ = [
    "ACQUISITIONS",
    "NotReady",
    "PREFILTER_FACTOR",
    "PROB_SUM_ATOL",
    "PoolView",
    "REQUIREMENTS",
    "Strategy",
    "check_probabilities",
    "get",
    "needs",
    "score",
    "select",
    "top_k",
    "validate_view",
]
