"""Dispatch by name: `select`, `score`, `needs` and the uncertainty pre-filter of diversity methods.

Imports base.py and nothing else of the package, so the strategy modules (which import base.py) and
hybrid.py (which imports this module) never import each other. Pure: numpy only, never `import ray`.

Pre-filter: select("kcenter", view, k, prefilter="entropy", prefilter_factor=F) takes the
min(n, ceil(F*k)) candidates with the highest `entropy` score (the shared top_k, ties by seeded id hash), then runs
k-center among them (the labeled set still counts as centers). Any score-based method can pre-filter;
kcenter and badge accept the option. prefilter_options={...} passes options to the score.
Default F = PREFILTER_FACTOR = 10 (our choice: a pool ten times the batch leaves k-center room to spread
out while keeping only uncertain points; Zhdanov 2019 pre-filters the top beta*k with beta = 10 as well).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ray_al.acquisition.base import (
    ACQUISITIONS,
    PREFILTER_OPTIONS,
    PoolView,
    Strategy,
    check_k,
    get,
    top_k,
    validate_view,
)

# The one default pre-filter factor: config.py's select.prefilter_factor must equal it (a test checks).
PREFILTER_FACTOR = 10


def _check_options(strategy: Strategy, options: Mapping[str, Any]) -> None:
    unknown = set(options) - strategy.options
    if unknown:
        valid = ", ".join(sorted(strategy.options)) or "none"
        raise ValueError(
            f"acquisition {strategy.name!r} got unknown option(s) {sorted(unknown)}; valid options: {valid}"
        )


def _fields_used(strategy: Strategy, view: PoolView) -> set[str]:
    """Fields to validate: the required ones plus the optional ones that are present."""
    fields = set(strategy.required)
    fields |= {f for f in strategy.optional if getattr(view, f) is not None}
    return fields


def _check_required(strategy: Strategy, view: PoolView) -> None:
    missing = sorted(f for f in strategy.required if getattr(view, f) is None)
    if missing:
        raise ValueError(
            f"acquisition {strategy.name!r} needs PoolView field(s) {missing}, which are None. "
            f"Compute them in the embed step (see ray_al.acquisition.needs({strategy.name!r}))."
        )


def _score_based() -> list[str]:
    return sorted(n for n, s in ACQUISITIONS.items() if s.kind == "score")


def needs(method: str, *, optional: bool = True, **options: Any) -> set[str]:
    """PoolView fields `method` reads (the embed step computes these).

    optional=True (default) includes fields used when present (e.g. committee_probs for
    variation_ratio, labeled_embeddings for kcenter); optional=False gives only the required ones.
    A `prefilter=NAME` option adds the needs of the pre-filter score.
    """
    strategy = get(method)
    out = set(strategy.required | (strategy.optional if optional else frozenset()))
    if options.get("prefilter"):
        out |= needs(options["prefilter"], optional=optional)
    return out


def score(method: str, view: PoolView, **options: Any) -> np.ndarray:
    """(n,) scores of a score-based method, higher = query first."""
    strategy = get(method)
    if strategy.kind != "score":
        raise ValueError(
            f"acquisition {method!r} selects a set and has no per-point score; "
            f"score-based methods: {', '.join(_score_based())}"
        )
    _check_options(strategy, options)
    _check_required(strategy, view)
    validate_view(view, _fields_used(strategy, view))
    s = np.asarray(strategy.fn(view, **options), dtype=np.float64)
    assert s.shape == (view.n,), (method, s.shape)
    return s


def select(method: str, view: PoolView, k: int, seed: int = 0, **options: Any) -> np.ndarray:
    """(k,) int64 positions into view.ids, in selection order (best first)."""
    strategy = get(method)
    _check_options(strategy, options)
    _check_required(strategy, view)
    k = check_k(k, view.n)
    if options.get("prefilter"):
        return prefiltered_select(method, view, k, seed, **options)
    if "prefilter" in strategy.options:  # prefilter=None: plain run, the other prefilter keys unused
        options = {key: v for key, v in options.items() if key not in PREFILTER_OPTIONS}
    if strategy.kind == "score":
        return top_k(score(method, view, **options), view.ids, k, seed)
    validate_view(view, _fields_used(strategy, view))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    pos = np.asarray(strategy.fn(view, k, int(seed), **options), dtype=np.int64)
    if pos.shape != (k,) or np.unique(pos).shape[0] != k:
        raise RuntimeError(f"acquisition {method!r} returned {pos.shape} positions, expected {k} distinct")
    return pos


def prefiltered_select(
    method: str,
    view: PoolView,
    k: int,
    seed: int = 0,
    *,
    prefilter: str,
    prefilter_factor: float = PREFILTER_FACTOR,
    prefilter_options: dict[str, Any] | None = None,
    **options: Any,
) -> np.ndarray:
    """(k,) positions: `method` run among the ceil(prefilter_factor * k) top `prefilter` scores."""
    if get(prefilter).kind != "score":
        raise ValueError(f"prefilter must be a score-based method ({', '.join(_score_based())}), got {prefilter!r}")
    factor = float(prefilter_factor)
    if not factor >= 1:
        raise ValueError(f"prefilter_factor must be >= 1 (keep at least k candidates), got {prefilter_factor!r}")
    k = check_k(k, view.n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    m = min(view.n, max(k, math.ceil(factor * k)))
    kept = top_k(score(prefilter, view, **(prefilter_options or {})), view.ids, m, seed)  # (m,)
    return kept[select(method, view.subset(kept), k, seed, **options)]
