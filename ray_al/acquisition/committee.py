"""Query by committee (Seung et al. 1992; as a deep-AL baseline: Beluch et al. 2018 ensembles, Gal et al.
2017 MC dropout): score the disagreement of m committee members (classifier heads, seeds or MC-dropout
passes) on each candidate.

- committee_vote_entropy (Dagan & Engelson 1995): entropy of the members' hard votes,
  VE(x) = -sum_c (V_c / m) log(V_c / m), V_c = number of members whose argmax is c.
- committee_kl (McCallum & Nigam 1998): mean KL divergence of each member to the consensus,
  KL(x) = (1/m) sum_j KL(P_j || P_avg), P_avg = (1/m) sum_j P_j  (natural log).
A member's vote is its argmax (the lowest class index wins a tie within a member).
"""

from __future__ import annotations

import numpy as np

from ray_al.acquisition.base import Strategy, on_field, register
from ray_al.acquisition.entropy import entropy_scores


def vote_counts(committee_probs: np.ndarray) -> np.ndarray:
    """(m, n, C) member probabilities -> (n, C) number of members voting for each class."""
    cp = np.asarray(committee_probs)
    m, n, n_classes = cp.shape
    votes = cp.argmax(axis=2)  # (m, n)
    counts = np.zeros((n, n_classes), dtype=np.int64)
    rows = np.arange(n)
    for member in range(m):  # m is small (heads / passes); keeps memory at O(n C)
        counts[rows, votes[member]] += 1
    return counts


def vote_entropy_scores(committee_probs: np.ndarray) -> np.ndarray:
    """(m, n, C) -> (n,) entropy (nats) of the vote distribution V_c / m."""
    counts = vote_counts(committee_probs)  # (n, C)
    m = np.asarray(committee_probs).shape[0]
    return entropy_scores(counts / m)


def mean_kl_to_consensus_scores(committee_probs: np.ndarray) -> np.ndarray:
    """(m, n, C) -> (n,) (1/m) sum_j KL(P_j || mean_j P_j), 0 log 0 = 0."""
    cp = np.asarray(committee_probs, dtype=np.float64)  # (m, n, C)
    consensus = cp.mean(axis=0)  # (n, C); > 0 wherever some member is > 0
    out = np.zeros(cp.shape[1], dtype=np.float64)
    for member in cp:  # (n, C) each
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(member > 0, member * np.log(member / consensus), 0.0)
        out += terms.sum(axis=1)
    # tiny negatives are rounding (KL >= 0); clipping keeps exact ties between identical members
    return np.maximum(out / cp.shape[0], 0.0)


_NEEDS = frozenset({"probs", "committee_probs"})
VOTE_ENTROPY = register(Strategy("committee_vote_entropy", "score", on_field(vote_entropy_scores, "committee_probs"),
                                 required=_NEEDS, summary="entropy of the committee members' votes"))
KL = register(Strategy("committee_kl", "score", on_field(mean_kl_to_consensus_scores, "committee_probs"),
                       required=_NEEDS, summary="mean KL divergence of members to the committee consensus"))
