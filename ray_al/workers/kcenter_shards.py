"""k-center over Ray shard actors: each actor loads its own embedding Parquet files, the pure exact
driver (`ray_al.acquisition.kcenter_greedy.exact_greedy`) runs in the caller and talks to them.

Ray plumbing only; the selection logic is in acquisition/kcenter_greedy.py. The caller owns `ray.init()`.

- Global order: the sorted file list, then the row within a file. Each shard gets a contiguous run of
  files (balanced by row count from the Parquet footers), so the selection and its tie-breaking equal
  single-process `kcenter_greedy` over the concatenation of the sorted files.
- Placement: actors are created with scheduling_strategy="SPREAD" so shards land on different nodes.
- Faults: actors have `max_restarts`; a restarted actor reloads its files in `__init__` and answers
  the next step with `NeedsResync`; the driver then re-applies every center picked so far, and the
  selection completes identically (the picks depend only on exact values, not on shard history).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import ray

from ray_al.core.embeddings import decodable, row_group_batches
from ray_al.acquisition.kcenter_greedy import MAX_NAMED_ROWS, KCenterOptions, KCenterShard, exact_greedy

_SHARE_BYTES = 1 << 20  # broadcast arrays larger than this through one ray.put instead of per call


@dataclass(frozen=True)
class EmbeddingFiles:
    """Embedding Parquet files and how to read them: paths (local, or URIs for `filesystem`, a pyarrow or
    fsspec filesystem) whose `id_column` and `embedding_column` hold the pool (rows with a true `corrupt`
    column are left out)."""

    files: Sequence[str]
    filesystem: Any = None
    id_column: str = "id"
    embedding_column: str = "embedding"


@dataclass(frozen=True)
class ShardResources:
    """Each shard actor's Ray resources and how often Ray restarts it (a restarted actor reloads its
    files and is resynced by the driver)."""

    num_cpus: float = 1
    num_gpus: float = 0
    max_restarts: int = 3


# ----------------------------------------------------------------------------------------------
# loading (runs inside the actors)


def load_embeddings(
    files: Sequence[str],
    filesystem: Any = None,
    id_column: str = "id",
    embedding_column: str = "embedding",
    include_ids: Sequence | None = None,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(ids (n,), embeddings (n, d) float32, d or None) of `files` in order; rows outside include_ids dropped,
    and rows whose image could not be decoded (`corrupt` true) too: they must never be selected.

    `embedding` may be a fixed-size list<float> or a list<float> whose rows all have the same length.
    Two passes, a row group at a time: the ids and which rows stay, then the embeddings straight into one
    (n, d) matrix, so an actor's peak is its matrix plus a row group (a whole table, then its numpy copy,
    held 3.6x the matrix: `python -m ray_al.bench.select`, 2026-12-06).
    """
    keep = None if include_ids is None else set(include_ids)
    kept = [(f, *_kept_rows(f, filesystem, id_column, embedding_column, keep)) for f in files]
    ids = np.concatenate([i for _, i, _ in kept]) if kept else np.empty(0, np.int64)
    x, dims, start = None, {}, 0
    for f, _, mask in kept:
        for rows, d in _kept_embeddings(f, filesystem, id_column, embedding_column, mask):
            dims[f] = d
            if len(set(dims.values())) > 1:
                raise ValueError(f"embedding dimensions differ between files: {dims}")
            if x is None:
                x = np.empty((len(ids), d), np.float32)
            x[start:start + len(rows)] = rows
            start += len(rows)
    d = next(iter(dims.values()), None)
    return ids, (x if x is not None else np.empty((0, d or 0), np.float32)), d


def _columns(f: str, filesystem: Any, id_column: str, embedding_column: str) -> list[str]:
    """The file's id and `corrupt` (when it has one) columns, its embedding column checked to be a list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(f, filesystem=filesystem)
    missing = [c for c in (id_column, embedding_column) if c not in schema.names]
    if missing:
        raise ValueError(f"{f}: cannot read columns {id_column!r} and {embedding_column!r}: no {missing}")
    typ = schema.field(embedding_column).type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise ValueError(f"{f}: column {embedding_column!r} must be a (fixed-size) list of floats, got {typ}")
    return [id_column] + (["corrupt"] if "corrupt" in schema.names else [])


def _kept_rows(f: str, filesystem: Any, id_column: str, embedding_column: str, keep: set | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the rows kept, one bool per row of the file): decodable, and in `keep` when given."""
    ids, masks = [], []
    for batch in row_group_batches(f, filesystem, _columns(f, filesystem, id_column, embedding_column)):
        col = batch.column(id_column)
        if col.null_count:
            raise ValueError(f"{f}: column {id_column!r} has {col.null_count} null ids")
        mask = decodable(batch)
        values = col.to_numpy(zero_copy_only=False)
        if keep is not None:
            mask &= np.fromiter((i in keep for i in values.tolist()), bool, len(values))
        ids.append(values[mask])
        masks.append(mask)
    return (np.concatenate(ids) if ids else np.empty(0, np.int64)), (np.concatenate(masks) if masks else np.zeros(0, bool))


def _kept_embeddings(f: str, filesystem: Any, id_column: str, embedding_column: str, mask: np.ndarray):
    """Yields (rows (m, d) float32, d) of the kept rows (`mask`) of one file, a batch at a time, checked."""
    start = 0
    for batch in row_group_batches(f, filesystem, [embedding_column]):
        arr, here = batch.column(embedding_column), mask[start:start + batch.num_rows]
        if arr.null_count:
            nulls = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[:MAX_NAMED_ROWS] + start
            ids = row_group_batches(f, filesystem, [id_column])
            raise ValueError(f"{f}: rows {nulls.tolist()} have a null {embedding_column!r} "
                             f"(ids {_ids_at(ids, id_column, nulls)})")
        d = _list_width(f, arr, embedding_column)
        start += batch.num_rows
        if len(arr) and d is not None:
            yield np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(arr), d)[here], d


def _ids_at(batches: Any, id_column: str, rows: np.ndarray) -> list:
    import pyarrow as pa

    return pa.concat_arrays([b.column(id_column) for b in batches]).take(rows).to_pylist()


def _list_width(f: str, arr: Any, embedding_column: str) -> int | None:
    """The one length of the embedding lists (None for an empty variable-length column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_fixed_size_list(arr.type):
        return arr.type.list_size
    if not len(arr):
        return None
    lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if (lens != lens[0]).any():
        raise ValueError(f"{f}: rows of {embedding_column!r} have different lengths "
                         f"({sorted(set(lens.tolist()))[:5]}); all embeddings must have one dimension")
    return int(lens[0])


class ShardActor:
    """A KCenterShard over its files (`source`: this shard's run of them). Load errors are reported by
    `info()` (a raising __init__ would be retried by Ray's restarts and hide the message). Of `options`
    it uses storage, use_gpu and chunk_rows."""

    def __init__(self, source: EmbeddingFiles, include_ids: Sequence | None, options: KCenterOptions) -> None:
        self.files = list(source.files)
        self.incarnation = uuid.uuid4().hex  # changes on every (re)start
        self.error = None
        o = options
        try:
            self.ids, x, _ = load_embeddings(self.files, source.filesystem, source.id_column,
                                             source.embedding_column, include_ids)
            self.shard = KCenterShard(x, ids=self.ids, storage=o.storage, use_gpu=o.use_gpu, chunk_rows=o.chunk_rows)
        except (ValueError, OSError) as e:
            self.error = f"{type(e).__name__}: {e}"
            self.ids = np.empty(0, np.int64)
            self.shard = KCenterShard(np.empty((0, 1), np.float32), storage=o.storage, use_gpu=False)

    def info(self) -> dict:
        out = self.shard.info()  # an empty shard reports d=None: it never decides the pool's dimension
        out.update(error=self.error, node_id=ray.get_runtime_context().get_node_id(), pid=os.getpid(),
                   incarnation=self.incarnation)
        return out

    def vectors(self, local_idx: np.ndarray) -> np.ndarray:
        return self.shard.vectors(local_idx)

    def prepare(self, *args: Any) -> int:
        return self.shard.prepare(*args)

    def step(self, *args: Any) -> Any:
        return self.shard.step(*args)

    def find(self, wanted: Sequence) -> np.ndarray:
        """Local rows whose id is in `wanted`."""
        s = set(wanted)
        return np.flatnonzero(np.fromiter((i in s for i in self.ids.tolist()), bool, len(self.ids)))

    def ids_of(self, local_idx: np.ndarray) -> list:
        return self.ids[np.asarray(local_idx, np.int64)].tolist()


# ----------------------------------------------------------------------------------------------
# the group the driver talks to


class RayShardGroup:
    """Shard actors; `call` issues one call per actor at once and waits for all (one round trip)."""

    def __init__(self, handles: list, names: list[str], retries: int = 4) -> None:
        self.handles, self.names, self.retries = handles, names, retries

    def __len__(self) -> int:
        return len(self.handles)

    def describe(self, i: int) -> str:
        return self.names[i]

    def _share(self, args: Sequence[tuple]) -> list[tuple]:
        """Put big arrays that every shard receives (the same object) into the object store once."""
        args = [list(a) for a in args]
        if len(args) > 1:
            for j, v in enumerate(args[0]):
                if isinstance(v, np.ndarray) and v.nbytes > _SHARE_BYTES and all(a[j] is v for a in args):
                    ref = ray.put(v)
                    for a in args:
                        a[j] = ref
        return [tuple(a) for a in args]

    def call(self, method: str, args: Sequence[tuple]) -> list:
        args = self._share(args)
        refs = [getattr(h, method).remote(*a) for h, a in zip(self.handles, args)]
        return [self._get(i, method, args[i], ref) for i, ref in enumerate(refs)]

    def call_one(self, i: int, method: str, *args: Any) -> Any:
        return self._get(i, method, args, getattr(self.handles[i], method).remote(*args))

    def _get(self, i: int, method: str, args: tuple, ref: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as e:  # died / restarting: a restarted actor asks to resync
                if attempt == self.retries:
                    raise RuntimeError(f"{self.describe(i)}: `{method}` failed {attempt + 1} times; the actor "
                                       "keeps dying (out of memory? unreadable files?)") from e
                time.sleep(min(2.0, 0.25 * 2**attempt))
                ref = getattr(self.handles[i], method).remote(*args)


# ----------------------------------------------------------------------------------------------
# public API


def partition_files(files: Sequence[str], shards: int, filesystem: Any = None) -> list[list[str]]:
    """Sorted files cut into <= `shards` contiguous runs of near-equal row counts (from Parquet footers)."""
    import pyarrow.parquet as pq

    files = sorted(files)
    rows = np.array([pq.read_metadata(f, filesystem=filesystem).num_rows for f in files], np.float64)
    cum = np.concatenate([[0.0], np.cumsum(rows)])  # (F + 1,)
    total = cum[-1]
    cuts = [0]
    for s in range(1, shards):
        target = total * s / shards
        b = int(np.argmin(np.abs(cum - target)))
        cuts.append(max(cuts[-1], b))
    cuts.append(len(files))
    parts = [files[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    return [p for p in parts if p]


def kcenter_select_distributed(
    source: EmbeddingFiles, k: int | None, *, labeled_features: np.ndarray | None = None, seed: int = 0,
    labeled_ids: Sequence | None = None, include_ids: Sequence | None = None,
    options: KCenterOptions = KCenterOptions(), resources: ShardResources = ShardResources(),
) -> tuple[list, dict]:
    """Exact k-center greedy over the round's embedding Parquet with `options.shards` Ray actors.

    Returns (pool ids in pick order, stats: passes, round_trips, seconds, nodes, resyncs, ...).
    source: the embedding files (`EmbeddingFiles`; rows with a true `corrupt` column are left out of the
    pool). labeled_features (m, d): the labeled set's embeddings (centers).
    labeled_ids: ids in the files that are already labeled (centers, never picked; ids not found are
    ignored and counted in stats["labeled_ids_missing"]). include_ids: only these ids form the pool
    (e.g. an uncertainty pre-filter). k=None orders the whole pool (zero-shot).
    options: shards, batch, storage, ... (`KCenterOptions`); resources: each actor's (`ShardResources`).
    Same picks as `kcenter_greedy` over the concatenated sorted files (ties to the lowest global index).
    """
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call ray.init() first (the caller owns the connection)")
    files = sorted(str(f) for f in source.files)
    if not files:
        raise ValueError("no embedding files given")
    t0 = time.perf_counter()
    parts = partition_files(files, options.shards, source.filesystem)
    actor_options = dict(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                         max_restarts=resources.max_restarts, max_task_retries=resources.max_restarts,
                         scheduling_strategy="SPREAD")  # SPREAD: shards on different nodes
    shard_options = replace(options, on_pass=None)  # the driver's hook stays in the driver
    group = _start_shards([replace(source, files=p) for p in parts], (include_ids, shard_options), actor_options)
    try:
        infos = _loaded_infos(group)
        labeled, missing = _labeled_indices(group, infos, labeled_ids)
        result = exact_greedy(group, k, labeled=labeled, labeled_features=labeled_features, seed=seed,
                              batch=options.batch, on_pass=options.on_pass)
        ids = _ids_of(group, infos, result.picks)
    finally:
        for h in group.handles:
            ray.kill(h)
    stats = dict(result.stats)
    stats["round_trips"] += 2 + (labeled is not None)  # info and ids_of, and find when given labeled ids
    stats.update(
        seconds=time.perf_counter() - t0, shards=len(group), nodes=[inf["node_id"] for inf in infos],
        rows_per_shard=[inf["n"] for inf in infos], files_per_shard=[len(p) for p in parts],
        labeled_ids_missing=missing,
    )
    return ids, stats


def _start_shards(parts: list[EmbeddingFiles], shard_args: tuple, actor_options: dict) -> RayShardGroup:
    """One ShardActor per run of files; a restarted actor gets one retry more than its restarts."""
    actor_cls = ray.remote(ShardActor).options(**actor_options)
    handles = [actor_cls.remote(part, *shard_args) for part in parts]
    names = [f"shard {i} ({len(p.files)} files: {p.files[0]} .. {p.files[-1]})" for i, p in enumerate(parts)]
    return RayShardGroup(handles, names, retries=actor_options["max_restarts"] + 1)


def _loaded_infos(group: RayShardGroup) -> list[dict]:
    """Every shard's info, or a ValueError naming the shards whose files could not be loaded."""
    infos = group.call("info", [()] * len(group))
    errors = [f"{group.describe(i)}: {inf['error']}" for i, inf in enumerate(infos) if inf["error"]]
    if errors:
        raise ValueError("cannot load embeddings: " + "; ".join(errors))
    return infos


def _offsets(infos: list[dict]) -> np.ndarray:
    """(S + 1,) global index of each shard's first row (shard order, then row)."""
    return np.cumsum([0] + [inf["n"] for inf in infos])


def _labeled_indices(group: RayShardGroup, infos: list[dict], labeled_ids: Sequence | None
                     ) -> tuple[np.ndarray | None, int]:
    """(global indices of the labeled ids found in the shards, how many ids were not found); (None, 0)
    without labeled ids, else one round trip."""
    if labeled_ids is None or not len(labeled_ids):
        return None, 0
    wanted = list(dict.fromkeys(labeled_ids))
    found = group.call("find", [(wanted,)] * len(group))
    labeled = np.concatenate([f + o for f, o in zip(found, _offsets(infos)[:-1])]).astype(np.int64)
    return labeled, len(wanted) - labeled.size


def _ids_of(group: RayShardGroup, infos: list[dict], picks: np.ndarray) -> list:
    """The pool ids of global indices `picks`, in their order (one round trip)."""
    offsets = _offsets(infos)
    own = np.searchsorted(offsets, picks, side="right") - 1
    ids_parts = group.call("ids_of", [(picks[own == s] - offsets[s],) for s in range(len(group))])
    ids: list = [None] * picks.size
    for s, part_ids in enumerate(ids_parts):
        for pos, v in zip(np.flatnonzero(own == s), part_ids):
            ids[pos] = v
    return ids
