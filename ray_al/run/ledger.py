"""The labeled set: one row per labeled id (``id``, ``label``, ``round``, ``source``).

A :class:`Ledger` is immutable: :meth:`Ledger.add` validates a batch and returns a new ledger, and
:meth:`Ledger.commit` writes the whole ledger to a *new* file ``RUN_DIR/ledger/ledger-<version>-<token>.parquet``,
then creates ``commit-<version>.json`` ({version, file, rows, sha256}) exclusively: that is the commit
point, and of two writers committing the same version only one can create it (the other is refused and
loses nothing it had committed). ``MANIFEST.json`` is then replaced as a pointer for readers. A file is
never edited in place, so a crash before the marker leaves a stray parquet that no marker names:
:meth:`Ledger.load` ignores it and returns the previous committed state.
Older versions are kept (they are small) as an audit trail.

A label of ``OOD_LABEL`` (-1) records an answer of "none of these classes" (an out-of-distribution image):
the id stays in :attr:`Ledger.ids`, so it is never queried again, and counts in the budget, but
:meth:`Ledger.in_class` (what training and per-class statistics use) leaves it out.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ray_al.core import storage

__all__ = ["Ledger", "LedgerError", "OOD_LABEL", "SOURCES", "ID_TYPES", "name_rows", "normalize_id_type"]

OOD_LABEL = -1  # "none of these classes": the only negative label a ledger accepts
SOURCES = ("initial", "query", "import")
ID_TYPES = {"int64": pa.int64(), "string": pa.string()}
LEDGER_DIR = "ledger"
MANIFEST = "MANIFEST.json"


def _commit_uri(ledger_dir: str, version: int) -> str:
    return storage.join(ledger_dir, f"commit-{version:06d}.json")


def _head(root: str) -> tuple[str, dict | None]:
    """(where it was read, the newest committed manifest) or (MANIFEST uri, None) before any commit.
    MANIFEST.json points at a committed version and may lag one behind (a commit that died between its
    marker and the pointer swap): the commit-NNNNNN.json markers after it are the truth."""
    ldir = storage.join(root, LEDGER_DIR)
    where = storage.join(ldir, MANIFEST)
    manifest = storage.read_json(where) if storage.exists(where) else None
    version = _version(where, manifest)
    while storage.exists(_commit_uri(ldir, version + 1)):
        version += 1
        where = _commit_uri(ldir, version)
        manifest = storage.read_json(where)
    return where, manifest


def _ours(marker: str, fname: str) -> bool:
    """Whether the existing commit marker is this writer's own: an S3 PUT that landed while its answer
    was lost, then retried, finds its own marker there."""
    try:
        return storage.read_json(marker).get("file") == fname
    except (OSError, ValueError):
        return False


def _version(where: str, manifest: dict | None) -> int:
    if manifest is None:
        return 0
    try:
        return int(manifest["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise LedgerError(f"{where} is malformed ({e!r}); restore it from a backup") from e


class LedgerError(ValueError):
    """A batch of labels (or a stored ledger) is invalid; the message names the rows and what to do."""


def name_rows(values: Iterable[Any], limit: int = 10, *, raw: bool = False) -> str:
    """'[a, b, c]' or '[a, ..., j] and 5 more (15 in all)': keeps error messages short.

    Strings are quoted (they are ids) unless ``raw`` (they are already descriptions).
    """
    values = list(values)
    head = ", ".join(repr(v) if isinstance(v, str) and not raw else str(v) for v in values[:limit])
    if len(values) > limit:
        return f"[{head}] and {len(values) - limit} more ({len(values)} in all)"
    return f"[{head}]"


def normalize_id_type(id_type: Any) -> str | None:
    """'int64' | 'string' from a name, a pyarrow type or a python type; None stays None (undecided)."""
    if id_type is None:
        return None
    if id_type in (int, np.int64) or (isinstance(id_type, pa.DataType) and pa.types.is_integer(id_type)):
        return "int64"
    if id_type is str or (isinstance(id_type, pa.DataType)
                          and (pa.types.is_string(id_type) or pa.types.is_large_string(id_type))):
        return "string"
    name = str(id_type).lower()
    if name in ("int", "int64", "integer"):
        return "int64"
    if name in ("str", "string", "large_string", "utf8"):
        return "string"
    raise LedgerError(f"unsupported id type {id_type!r}: pool ids must be int64 or string")


def _schema(id_type: str | None) -> pa.Schema:
    return pa.schema([("id", ID_TYPES[id_type or "int64"]), ("label", pa.int64()),
                      ("round", pa.int64()), ("source", pa.string())])


def _uri(run_dir: Any) -> str:
    """Accept a URI/path or anything with a ``.uri`` (a RunDir)."""
    return getattr(run_dir, "uri", None) or os.fspath(run_dir)


def _as_id_array(ids: Any, id_type: str | None) -> tuple[pa.Array, str]:
    """Convert ids to a typed pyarrow array, inferring the type when the ledger has none yet."""
    ids = _to_arrow_ids(ids, id_type)
    got = normalize_id_type(ids.type) if (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type)
                                          or pa.types.is_large_string(ids.type)) else None
    if got is None and len(ids) == 0:
        got = id_type or "int64"
    if got is None:
        raise LedgerError(f"ids must be integers or strings, got {ids.type}: check the pool's id column")
    if id_type is not None and len(ids) and got != id_type:
        raise LedgerError(f"this ledger holds {id_type} ids but the batch has {got} ids "
                          f"(e.g. {name_rows(ids.to_pylist(), 3)}): ids must keep one type for a whole run")
    id_type = id_type or got
    if ids.null_count:
        pos = np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))
        raise LedgerError(f"{ids.null_count} ids are null at batch positions {name_rows(pos.tolist())}: "
                          "every labeled row needs an id")
    return ids.cast(ID_TYPES[id_type]), id_type


def _to_arrow_ids(ids: Any, id_type: str | None) -> pa.Array:
    """ids (pyarrow, numpy or a list) as a pyarrow array, not yet checked."""
    if isinstance(ids, pa.ChunkedArray):
        return ids.combine_chunks()
    if isinstance(ids, pa.Array):
        return ids
    if isinstance(ids, (list, tuple)):
        return _ids_from_values(list(ids), id_type)
    arr = np.asarray(ids).reshape(-1)
    if arr.dtype.kind in "iu":
        return pa.array(arr.astype(np.int64), pa.int64())
    if arr.dtype.kind in "UO" or arr.size == 0:
        return _ids_from_values(arr.tolist(), id_type)
    raise LedgerError(f"ids must be integers or strings, got dtype {arr.dtype}: check the id column of your pool")


def _ids_from_values(values: list, id_type: str | None) -> pa.Array:
    # inspect python values directly: np.asarray([1, "a"]) would silently turn 1 into "1"
    kinds = {type(v) for v in values}
    if not values:
        return pa.array([], ID_TYPES[id_type or "int64"])
    if kinds <= {int, np.int64, np.int32}:
        return pa.array([int(v) for v in values], pa.int64())
    if kinds <= {str}:
        return pa.array(values, pa.string())
    raise LedgerError(f"ids must all be integers or all be strings, got types "
                      f"{sorted(k.__name__ for k in kinds)}: check the id column of your pool")


def _as_labels(labels: Any, n: int, num_classes: int) -> np.ndarray:
    if isinstance(labels, (pa.Array, pa.ChunkedArray)):
        labels = labels.to_numpy(zero_copy_only=False)
    arr = np.asarray(labels)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if len(arr) != n:
        raise LedgerError(f"got {n} ids but {len(arr)} labels: pass one label per id")
    if arr.dtype.kind in "iu":
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                       for v in arr.tolist()):
        out = np.asarray(arr.tolist(), dtype=np.int64)
    else:
        bad = [i for i, v in enumerate(arr.tolist())
               if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_))]
        raise LedgerError(
            f"labels must be integers in range({num_classes}); got dtype {arr.dtype} with non-integer "
            f"values at batch positions {name_rows(bad or range(len(arr)))} "
            f"(e.g. {name_rows([arr.tolist()[i] for i in bad[:3]] if bad else arr.tolist()[:3], 3)}). "
            f"Map class names to their index first (and 'none of these classes' to {OOD_LABEL}).")
    return out


def _check_add_args(round: Any, source: str, num_classes: Any) -> None:
    if source not in SOURCES:
        raise LedgerError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
        raise LedgerError(f"round must be a non-negative integer, got {round!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise LedgerError(f"num_classes must be a positive integer, got {num_classes!r}")


def _duplicates(id_list: list) -> str:
    """Ids that appear more than once in a batch, with their positions ('' if none)."""
    seen: dict[Any, list[int]] = {}
    for i, v in enumerate(id_list):
        seen.setdefault(v, []).append(i)
    dups = {v: p for v, p in seen.items() if len(p) > 1}
    if not dups:
        return ""
    desc = [f"{v!r} at positions {p}" for v, p in list(dups.items())[:10]]
    return (f"{len(dups)} ids appear more than once in the batch: {'; '.join(desc)}"
            + (f" and {len(dups) - 10} more" if len(dups) > 10 else "") + ". Keep one answer per id.")


def _out_of_range(id_list: list, lab: np.ndarray, num_classes: int) -> str:
    bad = np.flatnonzero(((lab < 0) & (lab != OOD_LABEL)) | (lab >= num_classes))
    if not bad.size:
        return ""
    desc = [f"{id_list[i]!r}->{int(lab[i])}" for i in bad]
    return (f"{bad.size} labels are outside range({num_classes}) (id->label): {name_rows(desc, raw=True)}. "
            f"Labels are class indices 0..{num_classes - 1}, or {OOD_LABEL} for 'none of these classes'.")


def _outside_pool(id_list: list, pool_ids: set | None) -> str:
    missing = [v for v in id_list if v not in pool_ids] if pool_ids is not None else []
    if not missing:
        return ""
    return (f"{len(missing)} ids are not in the pool: {name_rows(missing)}. "
            "Check that the labels belong to this run's pool.")


def _read_committed(root: str, manifest_uri: str, manifest: dict) -> tuple[int, pa.Table]:
    """(version, table) of the ledger file the manifest names, its sha256, rows and columns checked."""
    try:
        version, fname = int(manifest["version"]), str(manifest["file"])
        rows, sha = int(manifest["rows"]), str(manifest["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise LedgerError(f"{manifest_uri} is malformed ({e!r}); restore it from a backup or point it "
                          f"at the last good ledger-*.parquet in {storage.join(root, LEDGER_DIR)}") from e
    data_uri = storage.join(root, LEDGER_DIR, fname)
    data = storage.read_bytes(data_uri)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha:
        raise LedgerError(
            f"ledger file {data_uri} does not match its manifest (sha256 {digest[:12]}... != "
            f"{sha[:12]}...): the file was changed or damaged after commit. Earlier versions are kept "
            f"in {storage.join(root, LEDGER_DIR)}; point MANIFEST.json at the last good one.")
    table = pq.read_table(pa.BufferReader(data))
    if table.num_rows != rows:
        raise LedgerError(f"ledger file {data_uri} has {table.num_rows} rows, manifest says {rows}")
    missing = {"id", "label", "round", "source"} - set(table.column_names)
    if missing:
        raise LedgerError(f"ledger file {data_uri} lacks columns {sorted(missing)}")
    return version, table


@dataclass(frozen=True)
class Ledger:
    """Immutable labeled set. ``version`` is the committed manifest version it derives from (0: none)."""

    _table: pa.Table
    id_type: str | None = None
    version: int = 0
    _meta: dict = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, id_type: Any = None) -> "Ledger":
        """An empty ledger; ``id_type`` ('int64' | 'string'), or None to take it from the first batch."""
        id_type = normalize_id_type(id_type)
        return cls(_schema(id_type).empty_table(), id_type, 0)

    @classmethod
    def load(cls, run_dir: Any, id_type: Any = None) -> "Ledger":
        """The committed ledger of ``run_dir`` (a URI or RunDir); empty if nothing was committed yet.

        Only the file named by the manifest is read, and its sha256 and row count are checked: a
        parquet written by a commit that died before its manifest swap is ignored.
        ``id_type`` for an empty ledger defaults to ``run.json``'s ``id_type`` when present.
        """
        root = _uri(run_dir)
        manifest_uri, manifest = _head(root)
        if manifest is None:
            if id_type is None and storage.exists(storage.join(root, "run.json")):
                id_type = storage.read_json(storage.join(root, "run.json")).get("id_type")
            return cls.empty(id_type)
        version, table = _read_committed(root, manifest_uri, manifest)
        id_t = normalize_id_type(table.schema.field("id").type)
        table = table.select(["id", "label", "round", "source"]).cast(_schema(id_t))
        return cls(table, id_t, version, {"manifest": manifest})

    # ------------------------------------------------------------------ views
    @property
    def table(self) -> pa.Table:
        return self._table

    @property
    def ids(self) -> np.ndarray:
        """int64 array, or an object array of str for string ids."""
        return self._table.column("id").to_numpy()

    @property
    def labels(self) -> np.ndarray:
        return self._table.column("label").to_numpy().astype(np.int64, copy=False)

    @property
    def rounds(self) -> np.ndarray:
        return self._table.column("round").to_numpy().astype(np.int64, copy=False)

    @property
    def sources(self) -> np.ndarray:
        return self._table.column("source").to_numpy()

    def __len__(self) -> int:
        return self._table.num_rows

    def labels_by_id(self) -> dict:
        """id -> label, OOD_LABEL included."""
        return dict(zip(self._table.column("id").to_pylist(), self._table.column("label").to_pylist()))

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which of ``ids`` are labeled."""
        arr, _ = _as_id_array(ids, self.id_type)
        if len(self) == 0 or len(arr) == 0:
            return np.zeros(len(arr), dtype=bool)
        return pc.is_in(arr, value_set=self._table.column("id").combine_chunks()).to_numpy(
            zero_copy_only=False)

    def up_to_round(self, r: int) -> "Ledger":
        """Rows with ``round <= r`` (what the run knew after round ``r``), same base version."""
        mask = pc.less_equal(self._table.column("round"), pa.scalar(int(r), pa.int64()))
        return Ledger(self._table.filter(mask), self.id_type, self.version, self._meta)

    def in_class(self) -> "Ledger":
        """The rows with a class label (OOD answers left out): what training and per-class counts use.
        Selection still excludes every id of the full ledger."""
        mask = pc.not_equal(self._table.column("label"), pa.scalar(OOD_LABEL, pa.int64()))
        return Ledger(self._table.filter(mask), self.id_type, self.version, self._meta)

    def counts(self) -> dict[str, Any]:
        """Small summary for status output: rows per source and per round, and how many of them (and
        of each source's) were answered 'none of these classes' (``ood``; they count in the budget)."""
        by_source: dict[str, int] = {}
        by_round: dict[int, int] = {}
        ood_by_source: dict[str, int] = {}
        for s, r, y in zip(self._table.column("source").to_pylist(), self._table.column("round").to_pylist(),
                           self._table.column("label").to_pylist()):
            by_source[s] = by_source.get(s, 0) + 1
            by_round[r] = by_round.get(r, 0) + 1
            if y == OOD_LABEL:
                ood_by_source[s] = ood_by_source.get(s, 0) + 1
        return {"rows": len(self), "ood": sum(ood_by_source.values()), "by_source": by_source,
                "by_round": dict(sorted(by_round.items())), "ood_by_source": ood_by_source}

    # ------------------------------------------------------------------ changes
    def add(self, ids: Any, labels: Any, round: int, source: str, *, num_classes: int,
            pool_ids: set | None = None) -> "Ledger":
        """A new ledger with this batch appended, after validating it as a whole.

        Rejected (``LedgerError`` naming the rows): ids duplicated within the batch, ids already
        labeled, labels that are neither integers in ``range(num_classes)`` nor ``OOD_LABEL``, ids
        absent from ``pool_ids``.
        """
        _check_add_args(round, source, num_classes)
        id_arr, id_type = _as_id_array(ids, self.id_type)
        lab = _as_labels(labels, len(id_arr), int(num_classes))
        id_list = id_arr.to_pylist()
        problems = [p for p in (_duplicates(id_list), self._already_labeled(id_arr, id_list),
                                _out_of_range(id_list, lab, num_classes), _outside_pool(id_list, pool_ids)) if p]
        if problems:
            raise LedgerError(f"rejected {len(id_list)} labels for round {round} ({source}): " + " ".join(problems))
        n = len(id_list)
        batch = pa.table({"id": id_arr, "label": pa.array(lab, pa.int64()),
                          "round": pa.array(np.full(n, int(round), np.int64), pa.int64()),
                          "source": pa.array([source] * n, pa.string())}, schema=_schema(id_type))
        base = self._table.cast(_schema(id_type)) if self.id_type is None else self._table
        return Ledger(pa.concat_tables([base, batch]), id_type, self.version, self._meta)

    def _already_labeled(self, id_arr: pa.Array, id_list: list) -> str:
        if not len(self) or not id_list:
            return ""
        already = pc.is_in(id_arr, value_set=self._table.column("id").combine_chunks()).to_numpy(
            zero_copy_only=False)
        if not already.any():
            return ""
        bad = [id_list[i] for i in np.flatnonzero(already)]
        return (f"{len(bad)} ids are already labeled: {name_rows(bad)}. "
                "A label is never overwritten: drop them from the batch.")

    def without_round(self, r: int, sources: tuple[str, ...] = ("query", "import")) -> "Ledger":
        """Rows except those of round ``r`` from ``sources`` (same base version; files are untouched).

        For redoing a label step after a crash between the ledger commit and the step marker: start
        from ``Ledger.load(run).without_round(r)`` and add the round's answers again. Initial labels
        (source 'initial') are kept by default.
        """
        drop = pc.and_(pc.equal(self._table.column("round"), pa.scalar(int(r), pa.int64())),
                       pc.is_in(self._table.column("source"), value_set=pa.array(list(sources), pa.string())))
        return Ledger(self._table.filter(pc.invert(drop)), self.id_type, self.version, self._meta)

    def commit(self, run_dir: Any) -> "Ledger":
        """Write this ledger as a new version; returns it with its new ``version``.

        Refuses if another commit landed since this ledger was loaded (its base version is stale),
        so two writers cannot silently drop each other's labels.
        """
        root = _uri(run_dir)
        ldir = storage.join(root, LEDGER_DIR)
        storage.makedirs(ldir)
        on_disk = _version(*_head(root))
        if on_disk != self.version:
            raise LedgerError(
                f"the ledger in {root} is at version {on_disk} but this ledger was derived from version "
                f"{self.version}: another process committed labels meanwhile. Reload with Ledger.load() "
                "and apply the batch again.")
        version = on_disk + 1
        fname = f"ledger-{version:06d}-{uuid.uuid4().hex[:8]}.parquet"  # never a name another writer uses
        sink = pa.BufferOutputStream()
        pq.write_table(self._table, sink)
        data = sink.getvalue().to_pybytes()
        storage.write_bytes_atomic(storage.join(ldir, fname), data)
        manifest = {"version": version, "file": fname, "rows": len(self),
                    "sha256": hashlib.sha256(data).hexdigest(), "id_type": self.id_type,
                    "committed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        # The commit point: exactly one writer can create this version's marker.
        marker = _commit_uri(ldir, version)
        if not storage.create_exclusive(marker, json.dumps(manifest).encode()) and not _ours(marker, fname):
            storage.remove_tree(storage.join(ldir, fname))
            raise LedgerError(
                f"another process committed version {version} of the ledger in {root} at the same moment; "
                "this batch was not written. Reload with Ledger.load() and apply it again.")
        storage.write_json_atomic(storage.join(ldir, MANIFEST), manifest)  # the pointer readers start from
        return Ledger(self._table, self.id_type, version, {"manifest": manifest})

    def to_csv(self, path: str) -> None:
        """Write ``id,label,round,source`` as CSV (local path or s3://) for people to read."""
        buf = io.BytesIO()
        pacsv.write_csv(self._table, buf)
        storage.write_bytes_atomic(path, buf.getvalue())
