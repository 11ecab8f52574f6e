"""Shared types of the acquisition functions: the pool view, validation, `top_k` and the registry.
Dispatch (`select`, `score`, `needs`, pre-filters) is in dispatch.py, which imports this module.

Pure module: numpy/scipy only, never `import ray`.

Conventions every strategy follows:
- Positions returned by `select` index into `view.ids` and come in selection order (best first).
- Score-based strategies return a score per candidate, higher = query first, and are turned into a
  selection by the one shared `top_k` (ties broken by a seeded hash of the id, `ids.tie_keys`, so the
  result depends neither on the row order Ray Data happened to produce nor on how ids follow classes).
- Randomised strategies work in the canonical order of the ids (sorted ascending) before drawing
  from `np.random.default_rng(seed)`, for the same reason: same ids + same seed = same picks.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import numpy as np

from ray_al.core.ids import describe_ids, id_sort_keys, sortable_ids, tie_keys
from ray_al.core.registry import Registry

# Row sums of `probs` may differ from 1 by at most this much (float32 softmax is ~1e-6 off;
# bfloat16 probabilities are not, so compute the softmax in float32).
PROB_SUM_ATOL = 1e-3
# Tolerance on the [0, 1] range check of single probabilities.
PROB_RANGE_ATOL = 1e-6

POOL_FIELDS = (
    "probs",
    "embeddings",
    "committee_probs",
    "labeled_embeddings",
    "labeled_labels",
    "labeled_probs",
)


@dataclass(frozen=True, eq=False)  # arrays have no truth value: compare/hash by identity
class PoolView:
    """What a strategy sees of one round: the unlabeled candidates and, for some, the labeled set.

    ids:                (n,) int64 or str pool ids of the UNLABELED candidates (unique)
    probs:              (n, C) float class probabilities (softmax output; rows sum to 1); None for
                        methods that read only embeddings (typiclust, probcover, kcenter, random)
    embeddings:         (n, d) penultimate features
    committee_probs:    (m, n, C) probabilities of m committee members (heads / seeds / MC-dropout passes)
    labeled_embeddings: (L, d) features of the labeled set
    labeled_labels:     (L,) true labels of the labeled set
    labeled_probs:      (L, C) model predictions on the labeled set
    """

    ids: np.ndarray
    probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    committee_probs: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None
    labeled_labels: np.ndarray | None = None
    labeled_probs: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(np.shape(self.ids)[0])

    def subset(self, positions: np.ndarray) -> "PoolView":
        """The view restricted to candidates `positions` (labeled fields unchanged)."""
        pos = np.asarray(positions, dtype=np.int64)
        return dataclasses.replace(
            self,
            ids=np.asarray(self.ids)[pos],
            probs=None if self.probs is None else np.asarray(self.probs)[pos],
            embeddings=None if self.embeddings is None else np.asarray(self.embeddings)[pos],
            committee_probs=(
                None if self.committee_probs is None else np.asarray(self.committee_probs)[:, pos]
            ),
        )


class NotReady(ValueError):
    """The strategy cannot run on this round's data yet (e.g. weibull before some class has enough
    labels). The cycle then runs select.fallback and records that it did."""


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


ROW_CHUNK = 65_536  # rows a per-row check or score takes at once: float64 temporaries O(chunk), not O(n)


def check_probabilities(probs: Any, ids: Any, field: str = "probs") -> np.ndarray:
    """`probs` (n, C) as given, or ValueError naming the ids whose rows are not probabilities.

    A row is bad when it holds NaN/inf, a value outside [0, 1], or sums to 1 +- PROB_SUM_ATOL. Checked
    ROW_CHUNK rows at a time, in float64: no whole-pool float64 copy.
    """
    p = np.asarray(probs)
    ids = np.asarray(ids)
    if p.ndim != 2 or p.shape[0] != ids.shape[0]:
        raise ValueError(
            f"{field} must have shape (n, C) with n = len(ids) = {ids.shape[0]}, got {p.shape}"
        )
    if p.shape[1] < 2:
        raise ValueError(f"{field} has {p.shape[1]} class column(s); a classifier needs at least 2.")
    if p.dtype.kind not in "fiu":
        raise ValueError(f"{field} must be a float array, got dtype {p.dtype}")
    chunks = ([_bad_probability_rows(p[start:start + ROW_CHUNK]) for start in range(0, len(p), ROW_CHUNK)]
              or [(np.zeros(0, bool),) * 3])
    nonfinite, out_of_range, bad_sum = (np.concatenate(masks) for masks in zip(*chunks))
    problems = []
    if nonfinite.any():
        problems.append(f"NaN/inf values for ids {describe_ids(ids, nonfinite)}")
    if out_of_range.any():
        problems.append(f"values outside [0, 1] for ids {describe_ids(ids, out_of_range)}")
    if bad_sum.any():
        problems.append(
            f"rows not summing to 1 (+-{PROB_SUM_ATOL}) for ids {describe_ids(ids, bad_sum)}"
        )
    if problems:
        raise ValueError(
            f"{field} are not valid class probabilities: " + "; ".join(problems) + ". "
            "Check that the model output went through a float32 softmax (not raw logits or "
            "bfloat16 probabilities) and that inference did not produce NaN, then re-run the embed step."
        )
    return p


def _bad_probability_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(non-finite, out of [0, 1], not summing to 1) row masks of some rows of probabilities."""
    p = rows.astype(np.float64, copy=False)
    nonfinite = ~np.isfinite(p).all(axis=1)
    out_of_range = ~nonfinite & ((p < -PROB_RANGE_ATOL) | (p > 1 + PROB_RANGE_ATOL)).any(axis=1)
    with np.errstate(invalid="ignore"):
        bad_sum = ~nonfinite & ~out_of_range & (np.abs(p.sum(axis=1) - 1.0) > PROB_SUM_ATOL)
    return nonfinite, out_of_range, bad_sum


def _check_finite_matrix(x: Any, rows: int, field: str, ids: Any | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ValueError(f"{field} must have shape ({rows}, d), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{field} must be a float array, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        where = (
            f"ids {describe_ids(ids, bad)}"
            if ids is not None
            else f"rows {describe_ids(np.arange(rows), bad)}"
        )
        raise ValueError(
            f"{field} contain NaN/inf for {where}; re-run the embed step (check for a diverged model)."
        )
    return arr


def validate_view(view: PoolView, fields: Iterable[str]) -> None:
    """Check the ids, `probs` and every field in `fields` that the strategy reads.

    Raises ValueError saying which field is wrong, for which ids, and what to do.
    """
    if not isinstance(view, PoolView):
        raise TypeError(f"expected a PoolView, got {type(view).__name__}")
    ids = sortable_ids(view.ids)
    n = ids.shape[0]
    sorted_ids = np.sort(ids, kind="stable")
    dup = sorted_ids[1:] == sorted_ids[:-1]
    if dup.any():
        dup_ids = np.unique(sorted_ids[1:][dup])
        raise ValueError(
            f"pool ids must be unique; duplicated ids {describe_ids(dup_ids, np.ones(dup_ids.shape[0], bool))}. "
            "Deduplicate the unlabeled candidates before selection."
        )
    fields = set(fields)
    # probs are checked when given or read; without them the class count comes from the field that has it
    n_classes = None
    if view.probs is not None or "probs" in fields:
        n_classes = check_probabilities(view.probs, view.ids).shape[1]
    if "embeddings" in fields:
        emb = _check_finite_matrix(view.embeddings, n, "embeddings", view.ids)
        d = emb.shape[1]
    else:
        d = None
    if "committee_probs" in fields:
        cp = np.asarray(view.committee_probs)
        n_classes = n_classes if n_classes is not None else (cp.shape[-1] if cp.ndim == 3 else -1)
        if cp.ndim != 3 or cp.shape[1:] != (n, n_classes) or cp.shape[0] < 1:
            raise ValueError(
                f"committee_probs must have shape (m, n, C) = (m, {n}, {n_classes}) with m >= 1, "
                f"got {cp.shape}"
            )
        for member in range(cp.shape[0]):
            check_probabilities(cp[member], view.ids, field=f"committee_probs[{member}]")
    if fields & {"labeled_embeddings", "labeled_labels", "labeled_probs"}:
        _validate_labeled(view, fields, n_classes, d)


def _validate_labeled(view: PoolView, fields: set[str], n_classes: int | None, d: int | None) -> None:
    lengths = {}
    if "labeled_embeddings" in fields:
        le = np.asarray(view.labeled_embeddings)
        if le.ndim != 2 or (d is not None and le.shape[1] != d):
            raise ValueError(
                f"labeled_embeddings must have shape (L, {d if d is not None else 'd'}) like the "
                f"pool embeddings, got {le.shape}"
            )
        _check_finite_matrix(le, le.shape[0], "labeled_embeddings")
        lengths["labeled_embeddings"] = le.shape[0]
    if "labeled_labels" in fields:
        ll = np.asarray(view.labeled_labels)
        if ll.ndim != 1 or ll.dtype.kind not in "iu":
            raise ValueError(
                f"labeled_labels must be a 1-D integer array, got shape {ll.shape} dtype {ll.dtype}"
            )
        bad = (ll < 0) | (ll >= (n_classes if n_classes is not None else np.iinfo(np.int64).max))
        if bad.any():
            raise ValueError(
                f"labeled_labels outside the {n_classes if n_classes is not None else 'non-negative'} classes of probs at rows "
                f"{describe_ids(np.arange(ll.shape[0]), bad)}; check the ledger's class set."
            )
        lengths["labeled_labels"] = ll.shape[0]
    if "labeled_probs" in fields:
        lp = np.asarray(view.labeled_probs)
        if lp.ndim != 2 or lp.shape[1] != (n_classes if n_classes is not None else lp.shape[-1]):
            raise ValueError(f"labeled_probs must have shape (L, {n_classes}), got {lp.shape}")
        check_probabilities(lp, np.arange(lp.shape[0]), field="labeled_probs (rows of the labeled set)")
        lengths["labeled_probs"] = lp.shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(f"labeled fields disagree on the labeled-set size L: {lengths}")


def check_k(k: Any, n: int) -> int:
    """k as an int in [0, n], or a ValueError that says what to change."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer number of points to query, got {k!r}")
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > n:
        raise ValueError(
            f"asked for k={k} points but the pool has only n={n} unlabeled candidates; "
            "lower the query budget or add images to the pool."
        )
    return k


# ----------------------------------------------------------------------------------------------
# top_k
# ----------------------------------------------------------------------------------------------


def top_k(scores: Any, ids: Any, k: int, seed: int = 0) -> np.ndarray:
    """Positions of the k highest scores, highest first; equal scores in the order of a seeded hash of
    their ids (`ids.tie_keys`), then by id (a hash collision).

    O(n) to find the candidates (argpartition-like threshold), then sorts only those tied with or
    above the k-th value, so it stays cheap for n in the millions and small k.
    """
    s = np.asarray(scores, dtype=np.float64)
    ids = sortable_ids(ids)  # the sort keys proper (unicode for string ids) only for the candidates, below
    if s.ndim != 1 or s.shape[0] != ids.shape[0]:
        raise ValueError(f"scores must have shape (n,) = ({ids.shape[0]},), got {s.shape}")
    n = s.shape[0]
    k = check_k(k, n)
    nan = np.isnan(s)
    if nan.any():
        raise ValueError(
            f"scores are NaN for ids {describe_ids(ids, nan)}; the inputs of the score were invalid."
        )
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = np.partition(s, n - k)[n - k]  # k-th largest value
        cand = np.flatnonzero(s >= kth)  # every point tied with it competes for the last places
    else:
        cand = np.arange(n)
    # last key is primary: score desc, then the seeded id hash, then the id itself
    order = np.lexsort((id_sort_keys(ids[cand]), tie_keys(ids[cand], seed), -s[cand]))
    return cand[order[:k]].astype(np.int64)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

# options every diversity strategy accepts: uncertainty pre-filter, see dispatch.prefiltered_select
PREFILTER_OPTIONS = frozenset({"prefilter", "prefilter_factor", "prefilter_options"})


@dataclass(frozen=True)
class Strategy:
    """One registered acquisition function.

    kind == "score":  fn(view, **options) -> (n,) scores, higher = query first; select = top_k.
    kind == "select": fn(view, k, seed, **options) -> (k,) positions in selection order.
    required: PoolView fields it cannot run without; optional: fields it uses when present.
    """

    name: str
    kind: Literal["score", "select"]
    fn: Callable[..., np.ndarray]
    required: frozenset[str] = frozenset({"probs"})
    optional: frozenset[str] = frozenset()
    options: frozenset[str] = frozenset()
    summary: str = ""

    @property
    def fields(self) -> frozenset[str]:
        return self.required | self.optional


# name -> Strategy; filled by the strategy modules when ray_al.acquisition is imported
# "auto" (auto.py, the policy of policy.py) registers like every strategy
ACQUISITIONS: Registry[Strategy] = Registry("acquisition method", "select.method")


def register(strategy: Strategy) -> Strategy:
    unknown = strategy.fields - set(POOL_FIELDS)
    if unknown:
        raise ValueError(f"{strategy.name}: unknown PoolView fields {sorted(unknown)}")
    return ACQUISITIONS.add(strategy.name, strategy)


def get(method: str) -> Strategy:
    """The registered strategy, or an UnknownNameError listing the valid names."""
    return ACQUISITIONS.get(method)


def on_field(fn: Callable[[Any], np.ndarray], field: str = "probs") -> Callable[[PoolView], np.ndarray]:
    """A score of one PoolView field as a strategy fn, view -> fn(view.<field>) (a partial: picklable)."""
    return functools.partial(_apply_to_field, fn, field)


def _apply_to_field(fn: Callable[[Any], np.ndarray], field: str, view: PoolView) -> np.ndarray:
    return fn(getattr(view, field))


def on_rows(fn: Callable[[Any], np.ndarray], field: str = "probs") -> Callable[[PoolView], np.ndarray]:
    """A per-row score of one (n, ...) PoolView field as a strategy fn, computed ROW_CHUNK rows at a time:
    the same scores as fn(view.<field>), without fn's whole-pool temporaries (margin's float64 copy and
    partition of a million rows x C would be twice 8C MB)."""
    return functools.partial(_apply_by_rows, fn, field)


def _apply_by_rows(fn: Callable[[Any], np.ndarray], field: str, view: PoolView) -> np.ndarray:
    rows = getattr(view, field)
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), ROW_CHUNK):
        out[start:start + ROW_CHUNK] = fn(rows[start:start + ROW_CHUNK])
    return out


def recording(select_fn: Callable[..., tuple[np.ndarray, dict]]) -> Callable[..., np.ndarray]:
    """A strategy fn from `select_fn(view, k, seed, **options) -> (positions, record)`: it returns the
    positions, and fills the caller's `info={}` option with the record (what the method decided and why)."""
    return functools.partial(_record_into, select_fn)


def _record_into(select_fn, view: PoolView, k: int, seed: int, info: dict | None = None, **options: Any) -> np.ndarray:
    positions, record = select_fn(view, k, seed, **options)
    if info is not None:
        info.update(record)
    return positions
