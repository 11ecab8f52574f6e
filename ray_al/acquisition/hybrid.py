"""Hybrids: an uncertainty pre-filter, then a diversity method among the survivors.

select("kcenter", view, k, prefilter="entropy", prefilter_factor=F) takes the min(n, ceil(F*k))
candidates with the highest `entropy` score (the shared top_k, ties by id), then runs k-center among
them (the labeled set still counts as centers). Any score-based method can pre-filter; kcenter and
badge accept the option. prefilter_options={...} passes options to the score (e.g. weibull tail_size).

Registered names NAME_kcenter (for NAME in HYBRID_BASES) are the same with prefilter=NAME; they take
prefilter_factor, prefilter_options and the options of NAME directly.
Default F = 10 (our choice: a pool ten times the batch leaves k-center room to spread out while
keeping only uncertain points; Zhdanov 2019 pre-filters the top beta*k with beta = 10 as well).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ray_al.acquisition.base import (
    ACQUISITIONS,
    PREFILTER_OPTIONS,
    PoolView,
    Strategy,
    check_k,
    register,
    score,
    select,
    top_k,
)

PREFILTER_FACTOR = 10
HYBRID_BASES = ("entropy", "margin", "least_confidence", "weibull")


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
    strategy = ACQUISITIONS[prefilter]
    if strategy.kind != "score":
        valid = sorted(n for n, s in ACQUISITIONS.items() if s.kind == "score")
        raise ValueError(f"prefilter must be a score-based method ({', '.join(valid)}), got {prefilter!r}")
    factor = float(prefilter_factor)
    if not factor >= 1:
        raise ValueError(f"prefilter_factor must be >= 1 (keep at least k candidates), got {prefilter_factor!r}")
    k = check_k(k, view.n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    m = min(view.n, max(k, math.ceil(factor * k)))
    kept = top_k(score(prefilter, view, **(prefilter_options or {})), view.ids, m)  # (m,)
    return kept[select(method, view.subset(kept), k, seed, **options)]


def _register_hybrid(base: str, diversity: str = "kcenter") -> Strategy:
    base_s, div_s = ACQUISITIONS[base], ACQUISITIONS[diversity]

    def fn(view: PoolView, k: int, seed: int, **options: Any) -> np.ndarray:
        pre_opts = dict(options.pop("prefilter_options", None) or {})
        pre_opts.update({key: options.pop(key) for key in list(options) if key in base_s.options})
        return prefiltered_select(diversity, view, k, seed, prefilter=base, prefilter_options=pre_opts, **options)

    return register(
        Strategy(
            name=f"{base}_{diversity}",
            kind="select",
            fn=fn,
            required=base_s.required | div_s.required,
            optional=base_s.optional | div_s.optional,
            options=(PREFILTER_OPTIONS - {"prefilter"}) | base_s.options,
            summary=f"top-F*k by {base}, then {diversity} among them",
        )
    )


HYBRIDS = {name: _register_hybrid(name) for name in HYBRID_BASES}
