"""Hybrids: an uncertainty pre-filter, then a diversity method among the survivors.

Registered names NAME_kcenter (for NAME in HYBRID_BASES) are select("kcenter", prefilter=NAME) under a
name of their own (see dispatch.prefiltered_select); they take prefilter_factor (default
dispatch.PREFILTER_FACTOR = 10, Zhdanov 2019's beta), prefilter_options and the options of NAME directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ray_al.acquisition.base import ACQUISITIONS, PREFILTER_OPTIONS, PoolView, Strategy, register
from ray_al.acquisition.dispatch import prefiltered_select

HYBRID_BASES = ("entropy", "margin", "least_confidence", "weibull")


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
