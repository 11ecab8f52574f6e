"""Exact k-center greedy (CoreSet; Sener & Savarese, ICLR 2018) that scales to sharded pools.

Pure module: numpy + faiss only, never `import ray` (a test enforces it).

The textbook greedy: with min-distances D[i] = min over centers c of ||x_i - c||^2, pick
argmax D, make it a center, update D, repeat k times. It reads all n x d features once per pick.
Here (docs/ARCHITECTURE.md; docs/RESULTS.md, "k-center against plain greedy"):

- `KCenterShard` holds one shard of the pool. Its initial min-distances to the labeled set come from a
  chunked nearest-center search (faiss), never an n x |L| matrix: memory O(n + chunk).
  Each round it applies many new centers in ONE pass over its features (batched update) and reports
  its top-B candidates (float32 values and vectors), plus an upper bound for all its other points.
- `exact_greedy` (the driver) runs greedy steps on the gathered candidates, updating their values with
  every center it picks, while the picked value is strictly above every shard's bound; then it sends
  the new centers to every shard in one batched update. Same selection as plain greedy, with far fewer
  passes over the features and round trips. The driver talks to any group of objects with the
  shard interface (in-process `LocalShardGroup` here, Ray actors in `distributed.py`); a shard that
  lost its state (a restarted actor) answers `NeedsResync` and gets every center so far re-applied.

Exactness and ties. The value of point i is V[i] = min over centers of fl32(dist64(x_i, c)), where
dist64 is the squared L2 distance of the stored float32 vectors computed in float64 with a fixed
summation order (`exact_sqdist_pairs`) and fl32 rounds it to float32. The greedy picks max V, ties
(float32 equality, e.g. duplicate points) to the lowest global index. V is a pure function of the
vectors, so the selection does not depend on sharding, batching or BLAS. The bulk work runs in float32
faiss/BLAS: those values are within a proven bound `err` of V (`error_bound`), so they only decide
which points are candidates, the shards' bounds and which candidates are contenders (within 2*err of
the float32 max); the driver, which holds every center, computes exact V for the contenders and every
pick is decided on exact V. Near-ties closer than float32 resolution are ties (lowest index wins),
as in the brute-force float64 reference rounded to float32 the tests use.

With `storage="float16"` the features are stored (and distances computed) in float16: the selection is
exact for the float16-rounded features.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ray_al.acquisition.geometry import U32, error_bound, exact_min_sqdist, exact_sqdist_pairs, sqnorms32
from ray_al.core.optional import require_faiss

DEFAULT_CHUNK_ROWS = 65536  # rows per faiss call: bounds temporaries (and fp16->fp32 copies) to ~chunk x d
MIN_BATCH = 64  # smallest number of candidates a shard reports per round
MAX_BATCH = 2048  # default cap; a shard blocked by ties or near-ties still doubles past it
CPU_TASK_ROWS = 16384  # rows per CPU worker task (load balance between threads)
PREFETCH = 128  # exact values computed per batch in the driver (one (PREFETCH x centers) GEMM)
MAX_NAMED_ROWS = 10  # how many offending rows an error message lists


# ----------------------------------------------------------------------------------------------
# faiss backend


_GPU_RES: Any = None


def resolve_use_gpu(use_gpu: bool | None) -> bool:
    """None: faiss GPU when faiss sees a GPU, CPU otherwise."""
    faiss = require_faiss()

    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is None:
        return n_gpus > 0
    if use_gpu and n_gpus == 0:
        raise ValueError(
            "use_gpu=True but faiss sees no GPU (faiss-cpu build or no CUDA device); "
            "install the `gpu` extra (faiss-gpu-cu12) on GPU nodes or pass use_gpu=None/False"
        )
    return bool(use_gpu)


def _knn1(xq: np.ndarray, xb: np.ndarray, use_gpu: bool) -> np.ndarray:
    """(nq,) float32 squared L2 from each query row to its nearest row of xb (faiss, float32)."""
    faiss = require_faiss()

    global _GPU_RES
    if use_gpu:
        if _GPU_RES is None:
            _GPU_RES = faiss.StandardGpuResources()
        dist, _ = faiss.knn_gpu(_GPU_RES, xq, xb, 1)
    else:
        dist, _ = faiss.knn(xq, xb, 1)
    return dist[:, 0]


_POOL: Any = None  # (threads, ThreadPoolExecutor) for CPU chunks


def _cpu_pool(threads: int) -> Any:
    """Worker threads that each run single-threaded faiss on whole chunks: no OpenMP barrier per
    4096-row block, so a core stolen by another process slows one chunk instead of every block."""
    global _POOL
    if _POOL is None or _POOL[0] != threads:
        faiss = require_faiss()
        from concurrent.futures import ThreadPoolExecutor

        _POOL = (threads, ThreadPoolExecutor(threads, initializer=faiss.omp_set_num_threads, initargs=(1,)))
    return _POOL[1]


def update_min_sqdist(
    x: np.ndarray, centers: np.ndarray, dmin: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS,
    use_gpu: bool = False,
) -> None:
    """In place dmin = min(dmin, float32 squared L2 to the nearest of `centers` (M, d)) for x (n, d):
    one pass over x in chunks (nearest-center search), memory O(chunk), never an n x M matrix."""
    faiss = require_faiss()

    n = x.shape[0]
    xb = np.ascontiguousarray(centers, dtype=np.float32)
    if n == 0 or xb.shape[0] == 0:
        return
    threads = 1 if use_gpu else max(1, faiss.omp_get_max_threads())
    rows = chunk_rows if threads == 1 else min(chunk_rows, CPU_TASK_ROWS)

    def work(s: int) -> None:
        e = min(n, s + rows)
        dist = _knn1(np.ascontiguousarray(x[s:e], dtype=np.float32), xb, use_gpu)  # (e - s,)
        np.minimum(dmin[s:e], dist, out=dmin[s:e])  # -inf (done) rows stay -inf

    starts = range(0, n, rows)
    if threads == 1 or len(starts) == 1:
        for s in starts:
            work(s)
    else:
        list(_cpu_pool(threads).map(work, starts))


_CHECKED_BACKENDS: set[bool] = set()


def _check_backend(use_gpu: bool) -> None:
    """Once per process: the backend's float32 distances must respect `error_bound` (e.g. no TF32)."""
    if use_gpu in _CHECKED_BACKENDS:
        return
    rng = np.random.default_rng(0)
    xq = rng.standard_normal((300, 96), dtype=np.float32) + 3.0
    xb = rng.standard_normal((40, 96), dtype=np.float32) + 3.0
    got = _knn1(xq, xb, use_gpu).astype(np.float64)
    want = ((xq[:, None, :].astype(np.float64) - xb[None].astype(np.float64)) ** 2).sum(-1).min(1)
    norm = float(max(np.linalg.norm(xq, axis=1).max(), np.linalg.norm(xb, axis=1).max()))
    worst = float(np.abs(got - want).max())
    if not worst <= error_bound(96, norm) / 2:
        raise RuntimeError(
            f"faiss {'GPU' if use_gpu else 'CPU'} distances are off by {worst:.3g}, more than float32 "
            "allows: reduced-precision math (TF32/fp16) is on; disable it for exact k-center"
        )
    _CHECKED_BACKENDS.add(use_gpu)


# ----------------------------------------------------------------------------------------------
# one shard


@dataclass(frozen=True)
class NeedsResync:
    """A shard's answer when its state is not the one the driver expects (e.g. a restarted actor)."""

    have: int
    want: int


def nonfinite_scan(x: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, float]:
    """(bad local rows, max row norm) in one chunked pass; a row is bad if its squared norm is not finite
    in float32 (NaN, inf, or values so large that float32 distances overflow)."""
    bad, max_sq = [], 0.0
    for s in range(0, x.shape[0], chunk_rows):
        xc = np.asarray(x[s : s + chunk_rows], dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            sq = sqnorms32(xc)  # (chunk,)
        ok = np.isfinite(sq)
        if not ok.all():
            bad.append(np.flatnonzero(~ok) + s)
        if ok.any():
            max_sq = max(max_sq, float(sq[ok].max()))
    rows = np.concatenate(bad) if bad else np.empty(0, np.int64)
    d = x.shape[1] if x.ndim == 2 else 1
    return rows, math.sqrt(max_sq) * (1 + d * U32 + 1e-7)  # float32 squared norms are off by <= d*u relative


class KCenterShard:
    """One shard: features (n, d) float32 (kept as a view when possible) or float16, its min-distances.

    ids: names of the rows for error messages (an int = global index of row 0, or an (n,) array of ids).
    State: `version` = how many picked centers it has applied (-1 before `prepare`). The shard keeps
    only float32 min-distances (n,); exact values are the driver's business (it holds every center).
    """

    def __init__(
        self,
        features: np.ndarray,
        *,
        ids: int | np.ndarray = 0,
        storage: str = "float32",
        use_gpu: bool | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        x = np.asarray(features)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D (n, d) array, got shape {x.shape}")
        if storage not in ("float32", "float16"):
            raise ValueError(f"storage must be 'float32' or 'float16', got {storage!r}")
        self._x = np.ascontiguousarray(x, dtype=np.float32 if storage == "float32" else np.float16)
        self.n, self.d = self._x.shape
        self._ids = ids
        self._chunk = int(chunk_rows)
        self._gpu = resolve_use_gpu(use_gpu)
        self._bad, self.max_norm = nonfinite_scan(self._x, self._chunk)
        self.version = -1
        self.offset = 0
        self._err = 0.0
        self._dmin = np.empty(0, np.float32)  # (n,) float32 min-distances; -inf = labeled or picked
        self._alive = 0

    # -- helpers
    def _names(self, local: np.ndarray) -> list:
        if isinstance(self._ids, (int, np.integer)):
            return [int(self._ids) + int(i) for i in local]
        return [v.item() if hasattr(v, "item") else v for v in np.asarray(self._ids)[local]]

    def _apply(self, centers: np.ndarray) -> None:
        """Batched update: one pass over the features for all `centers` (c, d)."""
        update_min_sqdist(self._x, centers, self._dmin, self._chunk, self._gpu)

    def _mark_done(self, global_idx: np.ndarray) -> None:
        loc = np.asarray(global_idx, np.int64) - self.offset
        loc = loc[(loc >= 0) & (loc < self.n)]
        if loc.size:
            self._alive -= int(np.count_nonzero(self._dmin[loc] != -np.inf))
            self._dmin[loc] = -np.inf

    # -- the shard interface used by the driver
    def info(self) -> dict:
        return {
            "n": self.n,
            "d": self.d if self.n else None,  # an empty shard never decides the pool's dimension
            "max_norm": self.max_norm,
            "nonfinite_count": int(self._bad.size),
            "nonfinite": self._names(self._bad[:MAX_NAMED_ROWS]),
        }

    def vectors(self, local_idx: np.ndarray) -> np.ndarray:
        """(m, d) float32 stored vectors of local rows."""
        return np.asarray(self._x[np.asarray(local_idx, np.int64)], dtype=np.float32)

    def prepare(
        self, n_expected: int, offset: int, centers: np.ndarray, excluded: np.ndarray, version: int, err: float
    ) -> int:
        """(Re)initialise: min-distances to `centers` (M, d) by chunked nearest-center search (one pass,
        memory O(n + chunk), never n x M), `excluded` global indices (labeled / picked) done, state =
        `version`. Returns n."""
        if self.n != n_expected:
            raise ValueError(f"shard has {self.n} rows, expected {n_expected}: its input changed under the run")
        self.version = int(version)
        if self.n == 0:  # an empty shard only tracks the version
            return 0
        if self._bad.size:
            raise ValueError(f"shard has {self._bad.size} non-finite rows, e.g. {self._names(self._bad[:3])}")
        _check_backend(self._gpu)
        self.offset, self._err = int(offset), float(err)
        self._dmin = np.full(self.n, np.inf, np.float32)
        self._alive = self.n
        self._apply(np.asarray(centers, np.float32).reshape(-1, self.d))
        self._mark_done(excluded)
        return self.n

    def step(self, version: int, new_centers: np.ndarray, new_global: np.ndarray, batch: int) -> Any:
        """Apply the driver's new picks (one pass), then report the top-`batch` candidates.

        Returns NeedsResync if this shard is not at `version`; else a dict with global `idx` (B,) int64,
        float32 min-distances `a` (B,) (within err of exact), vectors `x` (B, d) float32, `bound`
        (every other live point's exact value is <= bound; -inf if none) and `alive` (live points left).
        """
        if version != self.version or self.version < 0:
            return NeedsResync(have=self.version, want=version)
        if self.n == 0:
            self.version += len(new_global)
            return self._candidates(0)
        new_centers = np.asarray(new_centers, np.float32).reshape(-1, self.d)
        if new_centers.shape[0]:
            self._apply(new_centers)
            self._mark_done(new_global)
            self.version += new_centers.shape[0]
        return self._candidates(int(batch))

    def _candidates(self, batch: int) -> dict:
        if self._alive == 0:
            return {"idx": np.empty(0, np.int64), "a": np.empty(0, np.float32),
                    "x": np.empty((0, self.d), np.float32), "bound": -math.inf, "alive": 0}
        if batch >= self._alive:
            cand = np.flatnonzero(self._dmin != -np.inf)  # every live row: nothing left to bound
            bound = -math.inf
        else:
            part = np.argpartition(self._dmin, self.n - batch - 1)  # (n,): top batch+1 at the end
            cand = np.sort(part[self.n - batch :])
            b = float(self._dmin[part[self.n - batch - 1]]) + self._err  # >= any other live exact value
            b32 = np.float32(b)
            bound = float(b32 if float(b32) >= b else np.nextafter(b32, np.float32(np.inf)))
        return {"idx": cand + self.offset, "a": self._dmin[cand], "x": self.vectors(cand), "bound": bound,
                "alive": self._alive}


# ----------------------------------------------------------------------------------------------
# shard groups and the driver


class ShardGroup(Protocol):
    """What the driver needs: call a method on every shard (in parallel where possible) or on one."""

    def __len__(self) -> int: ...

    def call(self, method: str, args: Sequence[tuple]) -> list: ...

    def call_one(self, i: int, method: str, *args: Any) -> Any: ...

    def describe(self, i: int) -> str: ...


class LocalShardGroup:
    """In-process shards, called one after the other."""

    def __init__(self, shards: Sequence[KCenterShard], names: Sequence[str] | None = None) -> None:
        self.shards = list(shards)
        self.names = list(names) if names is not None else [f"shard {i}" for i in range(len(self.shards))]

    def __len__(self) -> int:
        return len(self.shards)

    def call(self, method: str, args: Sequence[tuple]) -> list:
        return [getattr(s, method)(*a) for s, a in zip(self.shards, args)]

    def call_one(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self.shards[i], method)(*args)

    def describe(self, i: int) -> str:
        return self.names[i]


def _default_batch(remaining: int, n_shards: int) -> int:
    # Enough candidates per shard for the rest of the selection in one or two rounds, capped so the
    # per-round exact values (batch x centers x d) stay cheap next to the pass over the features.
    return int(min(MAX_BATCH, max(MIN_BATCH, math.ceil(1.25 * remaining / max(1, n_shards)) + 8)))


class _Centers:
    """Every center so far (labeled, then picks in order) as a growing (M, d) float32 array."""

    def __init__(self, first: np.ndarray, d: int) -> None:
        self.buf = np.empty((max(64, 2 * first.shape[0]), d), np.float32)  # (capacity, d)
        self.sq = np.empty(self.buf.shape[0], np.float32)  # (capacity,) squared norms
        self.m = 0
        self.push(first)

    def push(self, c: np.ndarray) -> None:
        c = c.reshape(-1, self.buf.shape[1])
        if self.m + c.shape[0] > self.buf.shape[0]:
            cap = 2 * (self.m + c.shape[0])
            buf, sq = np.empty((cap, self.buf.shape[1]), np.float32), np.empty(cap, np.float32)
            buf[: self.m], sq[: self.m] = self.buf[: self.m], self.sq[: self.m]
            self.buf, self.sq = buf, sq
        self.buf[self.m : self.m + c.shape[0]] = c
        self.sq[self.m : self.m + c.shape[0]] = sqnorms32(c)
        self.m += c.shape[0]

    @property
    def all(self) -> np.ndarray:
        return self.buf[: self.m]

    def exact(self, rows: np.ndarray, err: float) -> np.ndarray:
        """(P,) exact values of rows (P, d) against every center."""
        return exact_min_sqdist(rows, self.all, err, centers_sq=self.sq[: self.m])


def _argmax_lowest(v: np.ndarray, idx: np.ndarray) -> int:
    """Position of max v, ties to the lowest idx."""
    top = np.flatnonzero(v == v.max())
    return int(top[np.argmin(idx[top])]) if top.size > 1 else int(top[0])


def _greedy_round(res: list[dict], budget: int, cent: _Centers, err: float, d: int) -> list[int]:
    """Greedy steps on the shards' candidates while the pick provably beats every other point.

    a: float32 values (within err of exact); e: exact values, computed (against every center) only
    for contenders, i.e. candidates within 2*err of the float32 max, then kept exact. Picks are pushed
    onto `cent`; returns their global indices.
    """
    idx = np.concatenate([r["idx"] for r in res])  # (P,)
    a = np.concatenate([r["a"] for r in res]).astype(np.float32)  # (P,)
    xs = np.concatenate([r["x"] for r in res if r["x"].shape[0]] or [np.empty((0, d), np.float32)])  # (P, d)
    xs_sq = sqnorms32(xs)  # (P,)
    e = np.full(idx.size, np.nan, np.float32)  # (P,) exact values, NaN = not computed yet
    top_bound = max(r["bound"] for r in res)
    picks: list[int] = []
    while len(picks) < budget and idx.size:
        top = float(a.max())
        if top == -np.inf:
            break
        cont = np.flatnonzero(a >= top - 2 * err)  # every candidate that may hold the exact max
        if np.isnan(e[cont]).any():
            # exact values for the contenders and, in the same GEMM, the next candidates in line
            # (they are likely the next contenders; their values then stay exact through the updates)
            todo = np.flatnonzero(np.isnan(e) & (a != -np.inf))
            if todo.size > PREFETCH:
                todo = np.union1d(todo[np.argpartition(-a[todo], PREFETCH - 1)[:PREFETCH]],
                                  cont[np.isnan(e[cont])])
            e[todo] = cent.exact(xs[todo], err)
        j = int(cont[_argmax_lowest(e[cont], idx[cont])])
        if not e[j] > top_bound:  # a point outside the candidates may be as far: next round
            break
        picks.append(int(idx[j]))
        c = xs[j].copy()
        cent.push(c)
        a[j] = e[j] = -np.inf
        d32 = xs @ c  # (P,) float32 distances to the new center
        d32 *= -2.0
        d32 += xs_sq
        d32 += float(c @ c)
        np.minimum(a, d32, out=a)
        rows = np.flatnonzero(d32 <= e + err)  # exact values that the new center may lower (NaN/-inf: no)
        if rows.size:
            e[rows] = np.minimum(e[rows], exact_sqdist_pairs(xs[rows], c[None, :]))
    return picks


@dataclass(frozen=True)
class GreedyResult:
    """What one k-center greedy returns: the picks, and how it got them."""

    picks: np.ndarray  # (k,) int64 global indices in pick order
    stats: dict[str, Any]  # round_trips, passes, resyncs, rounds, steps_per_round, seconds, error_bound, batch


def exact_greedy(
    group: ShardGroup,
    k: int | None,
    *,
    labeled: np.ndarray | None = None,
    labeled_features: np.ndarray | None = None,
    seed: int = 0,
    batch: int | None = None,
    on_pass: Callable[[int, ShardGroup], None] | None = None,
) -> GreedyResult:
    """Exact batched k-center greedy over `group`: the (k,) global indices in pick order and the stats.

    Global index = shard order, then row (shard i's rows follow shard i-1's). labeled: global indices
    already labeled (centers, never picked); labeled_features (m, d): extra centers outside the pool.
    k=None: the whole unlabeled pool (a full ordering). No centers at all: the first pick is
    `np.random.default_rng(seed).integers(N)`. batch: candidates per shard per round (default adapts
    to what is left; doubles for a shard whose bound blocks progress). on_pass(round, group) is called
    after every round's greedy steps (tests kill actors there).
    """
    t0 = time.perf_counter()
    run = _GreedyRun(group)
    lf, lf_norm = _check_labeled_features(labeled_features, run.d)
    lab = _check_labeled(labeled, run.n_total)
    k = _check_k(k, run.n_total - lab.size, run.n_total)
    if k > 0:
        run.init_centers(lf, lf_norm, lab, seed)
        run.greedy(k, batch, on_pass)
    run.stats["seconds"] = time.perf_counter() - t0
    if k > 0:
        run.stats["batch"] = run.batches
    return GreedyResult(np.asarray(run.picked, np.int64), run.stats)


def _check_shard_infos(group: ShardGroup, infos: list[dict]) -> None:
    """Every shard's features are finite and all shards have one embedding dimension, or ValueError."""
    bad = [(i, inf) for i, inf in enumerate(infos) if inf["nonfinite_count"]]
    if bad:
        total = sum(inf["nonfinite_count"] for _, inf in bad)
        names = [r for _, inf in bad for r in inf["nonfinite"]][:MAX_NAMED_ROWS]
        where = "; ".join(f"{group.describe(i)}: {inf['nonfinite_count']}" for i, inf in bad)
        raise ValueError(f"features contain NaN or inf (or values whose squared norm overflows float32) in "
                         f"{total} rows: {names}{' ...' if total > len(names) else ''} (by shard: {where}). "
                         "Drop or fix these rows before k-center selection")
    dims = {i: inf["d"] for i, inf in enumerate(infos) if inf["d"] is not None}
    if len(set(dims.values())) > 1:
        desc = ", ".join(f"{group.describe(i)} has d={dim}" for i, dim in dims.items())
        raise ValueError(f"shards disagree on the embedding dimension: {desc}; all embeddings must come "
                         "from the same model")


def _check_labeled_features(labeled_features: np.ndarray | None, d: int | None) -> tuple[np.ndarray | None, float]:
    """(float32 (m, d) centers or None, their max norm), or ValueError."""
    if labeled_features is None:
        return None, 0.0
    lf = np.ascontiguousarray(labeled_features, dtype=np.float32)
    if lf.ndim != 2:
        raise ValueError(f"labeled_features must be 2-D (m, d), got shape {lf.shape}")
    if lf.shape[0] and d is not None and lf.shape[1] != d:
        raise ValueError(f"labeled_features have d={lf.shape[1]} but the pool's features have d={d}")
    badl, lf_norm = nonfinite_scan(lf)
    if badl.size:
        raise ValueError(f"labeled_features contain NaN or inf in rows {badl[:MAX_NAMED_ROWS].tolist()}")
    return lf, lf_norm


def _check_labeled(labeled: np.ndarray | None, n_total: int) -> np.ndarray:
    """Sorted unique int64 global indices of the labeled pool points, or ValueError."""
    lab_in = np.asarray(labeled if labeled is not None else [], dtype=None).ravel()
    if lab_in.size and lab_in.dtype.kind not in "iu":
        raise ValueError(f"labeled must be integer indices into the pool, got dtype {lab_in.dtype}")
    lab = np.unique(lab_in.astype(np.int64))
    if lab.size and (lab[0] < 0 or lab[-1] >= n_total):
        out_of_range = lab[(lab < 0) | (lab >= n_total)][:MAX_NAMED_ROWS].tolist()
        raise ValueError(f"labeled indices must lie in [0, {n_total}); got {out_of_range}")
    return lab


def _check_k(k: int | None, unlabeled: int, n_total: int) -> int:
    """k as an int in [0, unlabeled] (None: all of them), or ValueError."""
    k = unlabeled if k is None else int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > unlabeled:
        raise ValueError(f"k={k} is larger than the unlabeled pool ({unlabeled} of {n_total} points); "
                         "ask for at most the pool size")
    return k


class _GreedyRun:
    """One `exact_greedy` call: the shards' layout, every center (the driver holds them all, so it computes
    every exact value), the picks so far and the stats. Every call to the shards goes through here."""

    def __init__(self, group: ShardGroup) -> None:
        """Reads the shards' layout (one round trip); the centers come with `init_centers`."""
        self.group, self.n_sh = group, len(group)
        self.stats: dict[str, Any] = {"round_trips": 0, "passes": 0, "resyncs": 0, "rounds": 0, "steps_per_round": []}
        self.picked: list[int] = []
        self.new_idx: list[int] = []  # the last round's picks, not yet applied by the shards
        self.infos: list[dict] = self.call("info", [()] * self.n_sh)
        _check_shard_infos(group, self.infos)
        dims = [inf["d"] for inf in self.infos if inf["d"] is not None]
        self.d: int | None = dims[0] if dims else None
        self.sizes = [int(inf["n"]) for inf in self.infos]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)  # (S + 1,)
        self.n_total = int(self.offsets[-1])
        self.err = 0.0  # the float32 error bound of every distance, set with the centers
        self.lab = np.empty(0, np.int64)  # labeled global indices (centers, never picked)
        self.cent = _Centers(np.empty((0, self.d or 0), np.float32), self.d or 0)  # every center so far
        self.batches: list[int] = []  # candidates each shard reports per round

    def call(self, method: str, args: Sequence[tuple]) -> list:
        self.stats["round_trips"] += 1
        return self.group.call(method, args)

    def fetch(self, g: np.ndarray) -> np.ndarray:
        """(len(g), d) stored vectors of global indices g (one round trip)."""
        own = np.searchsorted(self.offsets, g, side="right") - 1
        got = self.call("vectors", [(g[own == s] - self.offsets[s],) for s in range(self.n_sh)])
        out = np.empty((g.size, self.d), np.float32)
        for s in range(self.n_sh):
            if got[s].shape[0]:
                out[own == s] = got[s]
        return out

    def init_centers(self, lf: np.ndarray | None, lf_norm: float, lab: np.ndarray, seed: int) -> None:
        """Centers = labeled_features + labeled points (or a seeded first pick); every shard prepares."""
        has_lf = lf is not None and lf.shape[0] > 0
        parts = ([lf] if has_lf else []) + ([self.fetch(lab)] if lab.size else [])
        centers0 = np.concatenate(parts) if parts else np.empty((0, self.d), np.float32)
        self.err = error_bound(self.d, max([inf["max_norm"] for inf in self.infos] + ([lf_norm] if has_lf else [])))
        self.stats["error_bound"] = self.err
        self.lab, self.cent = lab, _Centers(centers0, self.d)
        if centers0.shape[0] == 0:  # cold start: a seeded first center
            g0 = int(np.random.default_rng(seed).integers(self.n_total))
            self.picked, self.new_idx = [g0], [g0]
            self.cent.push(self.fetch(np.array([g0])))
        self.call("prepare", [(self.sizes[s], int(self.offsets[s]), centers0, lab, 0, self.err)
                              for s in range(self.n_sh)])
        self.stats["passes"] += 1 + (centers0.shape[0] > 0)  # the load-time scan (finite check, norms) + the init

    def greedy(self, k: int, batch: int | None, on_pass: Callable[[int, ShardGroup], None] | None) -> None:
        """Rounds of (shards apply the new centers and report candidates; greedy steps) until k picks."""
        self.batches = [batch or _default_batch(k - len(self.picked), self.n_sh)] * self.n_sh
        while len(self.picked) < k:
            res = self.step_all(k, batch)
            self.new_idx = _greedy_round(res, k - len(self.picked), self.cent, self.err, self.d)
            self.picked += self.new_idx
            self.stats["steps_per_round"].append(len(self.new_idx))
            if len(self.picked) >= k:
                break
            if not self.new_idx:
                self.widen(res)
            if on_pass is not None:
                on_pass(self.stats["rounds"], self.group)

    def step_all(self, k: int, batch: int | None) -> list[dict]:
        """One round trip: every shard applies the last round's picks and reports its candidates."""
        version = len(self.picked) - len(self.new_idx)
        nx = self.cent.all[self.cent.m - len(self.new_idx) :]  # (c, d) the last round's picks
        ni = np.asarray(self.new_idx, np.int64)
        if batch is None:
            self.batches = [max(b, _default_batch(k - len(self.picked), self.n_sh)) for b in self.batches]
        res = self.call("step", [(version, nx, ni, self.batches[s]) for s in range(self.n_sh)])
        if self.new_idx:
            self.stats["passes"] += 1
        res = [self.resync(s) if isinstance(r, NeedsResync) else r for s, r in enumerate(res)]
        self.stats["rounds"] += 1
        return res

    def widen(self, res: list[dict]) -> None:
        """No pick was provable: a tie or near-tie (within the float32 error bound) straddles a shard's
        cut, so double that shard's batch."""
        bounds = [r["bound"] for r in res]
        if max(bounds) == -math.inf:
            raise RuntimeError("k-center ran out of points before picking k (shards lost rows?)")
        top = max(float(np.max(r["a"])) for r in res if r["a"].size)
        self.batches = [b * 2 if bd >= top - 2 * self.err else b for b, bd in zip(self.batches, bounds)]

    def resync(self, s: int) -> dict:
        """Shard s lost its state (a restarted actor): re-apply every center so far, then step it."""
        self.stats["resyncs"] += 1
        self.stats["passes"] += 2  # the restarted shard reloads (scan) and re-initialises (one pass each)
        self.stats["round_trips"] += 2
        excl = np.concatenate([self.lab, np.asarray(self.picked, np.int64)])
        self.group.call_one(s, "prepare", self.sizes[s], int(self.offsets[s]), self.cent.all, excl,
                            len(self.picked), self.err)
        r = self.group.call_one(s, "step", len(self.picked), np.empty((0, self.d), np.float32),
                                np.empty(0, np.int64), self.batches[s])
        if isinstance(r, NeedsResync):
            raise RuntimeError(f"{self.group.describe(s)} lost its state again right after a resync ({r})")
        return r


# ----------------------------------------------------------------------------------------------
# public single-process API


def split_rows(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) row ranges of `shards` near-equal shards."""
    cuts = np.linspace(0, n, shards + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


@dataclass(frozen=True)
class KCenterOptions:
    """How k-center runs; none of these change the selection (module docstring), except that
    storage="float16" selects exactly for the float16-rounded features.

    shards: split the pool into this many shards (in-process here, Ray actors in workers.kcenter_shards).
    batch: candidates per shard per round (None: adapts to what is left).
    storage: "float32" or "float16" (half the memory).
    use_gpu: faiss GPU if True, CPU if False, GPU when faiss sees one if None.
    chunk_rows: rows per faiss call (bounds the temporaries).
    on_pass: on_pass(round, group) after every round's greedy steps (tests kill shards there).
    """

    shards: int = 1
    batch: int | None = None
    storage: str = "float32"
    use_gpu: bool | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    on_pass: Callable[[int, ShardGroup], None] | None = None

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")


def kcenter_greedy_run(
    features: np.ndarray,
    k: int,
    labeled: np.ndarray | Sequence[int] | None = None,
    seed: int = 0,
    *,
    labeled_features: np.ndarray | None = None,
    options: KCenterOptions = KCenterOptions(),
) -> GreedyResult:
    """k-center greedy (CoreSet, Sener & Savarese 2018) in this process: the picks and the stats.

    features: (n, d) pool embeddings; float32 C-contiguous input is used in place (no copy).
    labeled: indices into `features` that are already centers (never picked).
    labeled_features: (m, d) extra centers not in the pool (the labeled set embedded separately).
    seed: cold start (no centers at all) picks `np.random.default_rng(seed).integers(n)` first.
    options: shards, batch, storage, use_gpu, ... (`KCenterOptions`; in-process shards give the same
    selection and exercise the driver).
    The selection is exactly the plain greedy's on exact distances (ties to the lowest index); see the
    module docstring. stats: passes over the features, round_trips, seconds, ...
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (n, d) array, got shape {x.shape}")
    o = options
    rows = split_rows(x.shape[0], o.shards)
    parts = [KCenterShard(x[a:b], ids=a, storage=o.storage, use_gpu=o.use_gpu, chunk_rows=o.chunk_rows)
             for a, b in rows]
    group = LocalShardGroup(parts, [f"rows {a}..{b - 1}" for a, b in rows])
    return exact_greedy(
        group, k, labeled=None if labeled is None else np.asarray(labeled), labeled_features=labeled_features,
        seed=seed, batch=o.batch, on_pass=o.on_pass,
    )


def kcenter_greedy(features: np.ndarray, k: int, labeled: np.ndarray | Sequence[int] | None = None, seed: int = 0,
                   *, labeled_features: np.ndarray | None = None, options: KCenterOptions = KCenterOptions()
                   ) -> np.ndarray:
    """(k,) int64 indices into `features` in pick order: `kcenter_greedy_run(...).picks` (same arguments)."""
    return kcenter_greedy_run(features, k, labeled, seed, labeled_features=labeled_features, options=options).picks


def zero_shot_order(
    features: np.ndarray,
    seed: int = 0,
    labeled_features: np.ndarray | None = None,
    options: KCenterOptions = KCenterOptions(),
) -> np.ndarray:
    """(n,) k-center ordering of the whole pool (zero-shot selection: every budget is a prefix)."""
    return kcenter_greedy(features, np.asarray(features).shape[0], None, seed,
                          labeled_features=labeled_features, options=options)
