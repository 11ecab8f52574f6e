"""Pool ids: the one home for hashing and ordering them (pure numpy, no Ray).

Ids are int64 or strings (the pool contract, README "Your own data"). Everything that needs a per-id
number (augmentation
seeds, MC-dropout masks) goes through `id_keys`, and everything that orders ids (tie-breaks, seeded draws)
through `id_sort_keys`, so a given id means the same thing in every process and every module.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

MAX_IDS_IN_ERROR = 5  # ids listed in an error message before "..."


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a cheap, well-mixed counter hash (wrap-around is the point)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def id_keys(ids: Any) -> np.ndarray:
    """(n,) uint64: a stable, well-mixed key per id, the same in every process.

    Integer ids are mixed by splitmix64; other ids (strings) by an 8-byte blake2b of their text
    (Python's hash() is salted per process, so it would differ between Ray workers).
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return splitmix64(ids.astype(np.int64).view(np.uint64))
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                        for i in ids.tolist()), dtype=np.uint64, count=len(ids))


def id_sort_keys(ids: Any) -> np.ndarray:
    """`ids` as a 1-D array numpy can sort: int64 for integer ids, unicode for string ids.

    Object arrays (what pyarrow/pandas give for strings) are converted; mixed int/str ids are an
    error because they have no order we could tie-break on.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D array of pool ids, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind in "US":
        return arr
    if arr.dtype.kind == "O":
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in arr):
            return arr.astype(np.int64)
        if all(isinstance(x, str) for x in arr):
            return arr.astype(str)
        found = sorted({type(x).__name__ for x in arr})
        raise ValueError(
            f"ids must be all int64 or all str; got a mix of {found}. "
            "Fix the pool's `id` column so it has one type."
        )
    raise ValueError(f"ids must be int64 or str, got dtype {arr.dtype}; cast the pool's `id` column.")


def sortable_ids(ids: Any) -> np.ndarray:
    """`ids` as a 1-D array that np.sort orders as it orders id_sort_keys(ids), without copying string ids
    into fixed-width unicode (4 bytes per character of the longest id, for every id: ~108 MB for a million
    27-character paths): an object array of str is sorted as it is."""
    arr = np.asarray(ids)
    if arr.ndim == 1 and arr.dtype.kind == "O" and all(isinstance(x, str) for x in arr):
        return arr
    return id_sort_keys(arr)


def tie_keys(ids: Any, seed: int) -> np.ndarray:
    """(n,) uint64: a seeded hash of each id, the order in which tied candidates are taken.

    Ascending ids would follow the pool's layout (`ingest` numbers images class folder by class folder,
    and CIFAR-10's Parquet is sorted by class), so a tie of a whole batch (uniform probabilities before
    any label, saturated coverage) would come from one class. A hash has no such structure, is still
    the same in every process for a seed, and does not depend on row order."""
    salt = splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return splitmix64(id_keys(ids) ^ salt)


_SAMPLE_SALT = 0x5A3F_0C1D_77E2_9B41  # keeps sample draws apart from tie-breaks of the same seed


def seeded_sample(ids: Any, seed: int, fraction: float) -> np.ndarray:
    """(n,) bool: whether each id belongs to the seeded sample of about `fraction` of the pool. A pure
    function of (id, seed): every reader, batch and process keeps the same rows, so a sample can be
    taken while streaming, one batch at a time."""
    if fraction >= 1.0:
        return np.ones(len(np.asarray(ids)), dtype=bool)
    threshold = np.uint64(min(int(max(fraction, 0.0) * 2.0 ** 64), 2 ** 64 - 1))
    return tie_keys(ids, int(seed) ^ _SAMPLE_SALT) < threshold


def canonical_order(ids: Any) -> np.ndarray:
    """Positions that sort the ids ascending (stable); randomised strategies draw in this order."""
    return np.argsort(id_sort_keys(ids), kind="stable")


def describe_ids(ids: np.ndarray, mask: np.ndarray) -> str:
    """'[3, 7, 9] (3 in all)' for the ids where `mask` holds, listing at most MAX_IDS_IN_ERROR."""
    bad = np.asarray(ids)[np.asarray(mask, dtype=bool)]
    shown = ", ".join(repr(x.item() if hasattr(x, "item") else x) for x in bad[:MAX_IDS_IN_ERROR])
    more = ", ..." if bad.shape[0] > MAX_IDS_IN_ERROR else ""
    return f"[{shown}{more}] ({bad.shape[0]} in all)"


def duplicated(ids) -> tuple[int, str]:
    """(how many ids occur more than once, up to ten of them shown) of an Arrow id column: pool and
    embeddings checks name them in their errors."""
    import pyarrow.compute as pc

    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    return len(dup), ", ".join(repr(v.as_py()) for v in dup.field("values")[:10])
