"""Variation ratio (Freeman 1965; the 'Ensembles w. VarR' baseline of Beluch et al. 2018 that DALBT compares to).

With a committee (view.committee_probs present, m members): 1 - f_mode / m, where f_mode is the number
of members voting for the modal class (Beluch et al. 2018, Gal et al. 2017 with MC-dropout passes).
Without a committee it reduces to one member's soft version, 1 - max_c p_c (the same ranking as
least_confidence).
"""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import PoolView, Strategy, register
from ray_al.acquisition.committee import vote_counts
from ray_al.acquisition.least_confidence import least_confidence_scores


def variation_ratio_scores(probs: np.ndarray, committee_probs: np.ndarray | None = None) -> np.ndarray:
    """(n, C) probs [and (m, n, C) committee] -> (n,) variation ratio in [0, 1 - 1/C]."""
    if committee_probs is None:
        return least_confidence_scores(probs)
    counts = vote_counts(committee_probs)  # (n, C)
    m = np.asarray(committee_probs).shape[0]
    return 1.0 - counts.max(axis=1) / m


def _score(view: PoolView) -> np.ndarray:
    return variation_ratio_scores(view.probs, view.committee_probs)


STRATEGY = register(Strategy("variation_ratio", "score", _score, optional=frozenset({"committee_probs"}),
                            summary="1 - modal vote fraction over the committee (1 - max p without one)"))
