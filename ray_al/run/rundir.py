"""Run directory layout (local path or ``s3://``), step markers and round commits.

```
RUN_DIR/
  run.json                      written once: config snapshot, num_classes, class_names, id_type, pool, created
  ledger/                       see ray_al.run.ledger (ledger-<version>.parquet + MANIFEST.json)
  rounds/0003/
    steps/<step>.json           marker written atomically when a step's outputs are complete
    queries.parquet             the query batch (id, uri) of the round
    ...                         anything else the round produces (embeddings, checkpoints)
    MANIFEST.json               written LAST: the round is committed (holds its result row)
  results.jsonl                 regenerated from the round manifests (so a resume never duplicates rows)
```
A killed run resumes at the first step without a marker; leftovers of an uncommitted round can be
wiped with :meth:`RunDir.clear_round`.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ray_al.core import storage
from ray_al.run.ledger import ID_TYPES, LedgerError, normalize_id_type

__all__ = ["RunDir", "RunDirError"]

RUN_JSON = "run.json"
ROUNDS = "rounds"
ROUND_MANIFEST = "MANIFEST.json"
SEED_ROUND = -1  # the seed set's query batch (al.initial with al.oracle=file): its answers are ledger round 0
_STEP_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _foreign(names: list[str]) -> set[str]:
    """Entries of a directory without run.json that a cycle killed while creating its run would not have
    left: data/ (the built-in datasets, prepared just before), LOCK (its lock) and the temporary files of
    atomic writes it was killed in (seen: a sweep trial killed while taking the lock)."""
    return {n for n in names if n not in ("data", "LOCK") and not n.startswith(storage.TMP_PREFIX)}


def _checked_info(run_info: dict) -> dict:
    """A copy of run.json's content for `RunDir.create`, checked: num_classes, id_type, class_names."""
    info = _plain(dict(run_info))
    info.pop("created", None)
    missing = [k for k in ("num_classes", "id_type") if k not in info]
    if missing:
        raise RunDirError(f"run_info lacks {missing}: pass num_classes and id_type ('int64' or 'string')")
    if not isinstance(info["num_classes"], int) or info["num_classes"] < 1:
        raise RunDirError(f"run_info num_classes must be a positive int, got {info['num_classes']!r}")
    info["id_type"] = normalize_id_type(info["id_type"])
    names = info.get("class_names")
    if names is not None and len(names) != info["num_classes"]:
        raise RunDirError(f"run_info has {len(names)} class_names but num_classes={info['num_classes']}")
    return info


class RunDirError(ValueError):
    """The run directory is missing, belongs to another run, or a round is in an unexpected state."""


def batch_name(r: int) -> str:
    """How messages name round r's query batch."""
    return "the seed set" if r == SEED_ROUND else f"round {r}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(obj: Any) -> Any:
    """JSON round trip so that tuples/numpy values compare like what run.json will hold."""
    return json.loads(json.dumps(obj, sort_keys=True, default=storage._json_default))


class RunDir:
    """Handle on a run directory; cheap to construct (no I/O until used)."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/") if storage.is_s3(str(uri)) else str(uri)
        self._info: dict | None = None

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, uri: str, run_info: dict, *, overwrite: bool = False) -> "RunDir":
        """Create the run directory and write ``run.json`` once.

        ``run_info`` needs ``num_classes`` (int) and ``id_type`` ('int64' | 'string'); it usually also
        holds ``config`` (the snapshot), ``class_names`` and ``pool``. If ``run.json`` already exists with
        the same content this returns the existing run (idempotent); with different content it refuses
        unless ``overwrite=True``, which deletes the old run directory first. A non-empty directory
        that is not a run directory is refused too unless ``overwrite=True`` (nothing is deleted then).
        """
        rd, info = cls(uri), _checked_info(run_info)
        run_json = storage.join(rd.uri, RUN_JSON)
        if storage.exists(run_json):
            old = storage.read_json(run_json)
            old_cmp = {k: v for k, v in old.items() if k != "created"}
            if old_cmp == info:
                rd._info = old
                return rd
            if not overwrite:
                diff = sorted(k for k in set(old_cmp) | set(info) if old_cmp.get(k) != info.get(k))
                raise RunDirError(
                    f"{rd.uri} already holds a run with a different setup (differs in {diff}). Use "
                    "--resume to continue that run, choose another run directory, or pass overwrite "
                    "to delete it and start over.")
            storage.remove_tree(rd.uri)
        elif storage.exists(rd.uri) and storage.isdir(rd.uri) and _foreign(storage.listdir(rd.uri)) and not overwrite:
            raise RunDirError(f"{rd.uri} is a non-empty directory that is not a ray_al run directory "
                              f"(no {RUN_JSON}); choose an empty or new directory, or pass overwrite.")
        storage.makedirs(rd.uri, private=True)
        info["created"] = _now()
        storage.write_json_atomic(run_json, info)
        rd._info = info
        return rd

    @classmethod
    def open(cls, uri: str) -> "RunDir":
        """An existing run directory; errors clearly if it is not one."""
        rd = cls(uri)
        run_json = storage.join(rd.uri, RUN_JSON)
        try:
            rd._info = storage.read_json(run_json)
        except FileNotFoundError as e:
            raise RunDirError(f"{rd.uri} is not a ray_al run directory: {run_json} is missing. Check the "
                              f"path (and the S3 endpoint/bucket for s3:// runs); a run directory is created "
                              f"by `python -m ray_al.cycle`. ({e})") from e
        return rd

    def exists(self) -> bool:
        return storage.exists(storage.join(self.uri, RUN_JSON))

    # ------------------------------------------------------------------ run info
    @property
    def info(self) -> dict:
        if self._info is None:
            self._info = RunDir.open(self.uri).info
        return self._info

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def class_names(self) -> list[str] | None:
        return self.info.get("class_names")

    @property
    def id_type(self) -> str:
        return self.info["id_type"]

    @property
    def pool(self) -> dict | None:
        return self.info.get("pool")

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    # ------------------------------------------------------------------ rounds and steps
    def round_uri(self, r: int, *parts: str) -> str:
        """``RUN_DIR/rounds/0003/<parts...>``; SEED_ROUND: ``RUN_DIR/rounds/seed/...``, the seed set's query
        batch when a file oracle labels it (steps select and label only; never a round of results)."""
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < SEED_ROUND:
            raise RunDirError(f"round must be a non-negative int (or SEED_ROUND, {SEED_ROUND}), got {r!r}")
        return storage.join(self.uri, ROUNDS, "seed" if r == SEED_ROUND else f"{int(r):04d}", *parts)

    def _step_uri(self, r: int, step: str) -> str:
        if not _STEP_RE.match(step):
            raise RunDirError(f"step name {step!r} must be letters, digits, '_', '-' or '.'")
        return self.round_uri(r, "steps", f"{step}.json")

    def is_done(self, r: int, step: str) -> bool:
        return storage.exists(self._step_uri(r, step))

    def mark_done(self, r: int, step: str, payload: dict | None = None) -> None:
        """Atomically record that step ``step`` of round ``r`` has complete outputs."""
        storage.write_json_atomic(self._step_uri(r, step),
                             {"round": int(r), "step": step, "time": _now(), "payload": payload or {}})

    def step_payload(self, r: int, step: str) -> dict | None:
        uri = self._step_uri(r, step)
        if not storage.exists(uri):
            return None
        return storage.read_json(uri).get("payload", {})

    def done_steps(self, r: int) -> list[str]:
        d = self.round_uri(r, "steps")
        if not storage.exists(d):
            return []
        return sorted(n[:-5] for n in storage.listdir(d) if n.endswith(".json"))

    def rounds(self) -> list[int]:
        """Every round that has a directory (committed or not)."""
        d = storage.join(self.uri, ROUNDS)
        if not storage.exists(d):
            return []
        return sorted(int(n) for n in storage.listdir(d) if n.isdigit())

    def clear_round(self, r: int) -> None:
        """Delete the leftovers of an uncommitted round (refuses for a committed one)."""
        if self.is_round_committed(r):
            raise RunDirError(f"round {r} of {self.uri} is committed; refusing to delete it")
        storage.remove_tree(self.round_uri(r))

    def commit_round(self, r: int, result_row: dict) -> None:
        """Write ``rounds/<r>/MANIFEST.json`` (the commit point: call it after every other output)."""
        storage.write_json_atomic(self.round_uri(r, ROUND_MANIFEST),
                             {"round": int(r), "committed": _now(), "steps": self.done_steps(r),
                              "result": _plain(result_row)})

    def drop_embeddings_before(self, r: int) -> None:
        """Delete the rounds' embeddings before round r (run.keep_embeddings=last: a resume reads only r's)."""
        for q in self.rounds():
            if q < r and storage.exists(self.round_uri(q, "embeddings")):
                storage.remove_tree(self.round_uri(q, "embeddings"))

    def is_round_committed(self, r: int) -> bool:
        return storage.exists(self.round_uri(r, ROUND_MANIFEST))

    def committed_rounds(self) -> list[int]:
        return [r for r in self.rounds() if self.is_round_committed(r)]

    def results(self) -> list[dict]:
        """Result rows of committed rounds, in round order."""
        return [storage.read_json(self.round_uri(r, ROUND_MANIFEST))["result"] for r in self.committed_rounds()]

    def write_results_jsonl(self) -> str:
        """Regenerate ``RUN_DIR/results.jsonl`` from the round manifests (atomic); returns its URI."""
        uri = storage.join(self.uri, "results.jsonl")
        storage.write_text_atomic(uri, "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.results()))
        return uri

    # ------------------------------------------------------------------ queries
    def write_queries(self, r: int, ids: Any, uris: list[str | None] | None = None) -> str:
        """Write the query batch of round ``r`` as ``rounds/<r>/queries.parquet`` (id, uri)."""
        id_type = self.id_type
        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            id_list = ids.to_pylist()
        else:
            id_list = np.asarray(ids).tolist() if not isinstance(ids, (list, tuple)) else list(ids)
        if uris is None:
            uris = [None] * len(id_list)
        if len(uris) != len(id_list):
            raise RunDirError(f"write_queries got {len(id_list)} ids but {len(uris)} uris")
        if len(set(id_list)) != len(id_list):
            seen: set = set()
            dups = [v for v in id_list if v in seen or seen.add(v)]
            raise RunDirError(f"query batch of round {r} repeats ids {dups[:10]}: selection must return unique ids")
        try:
            id_arr = pa.array(id_list, ID_TYPES[id_type])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise LedgerError(f"query ids of round {r} are not {id_type} like this run's pool ({e})") from e
        table = pa.table({"id": id_arr, "uri": pa.array(list(uris), pa.string())})
        uri = self.round_uri(r, "queries.parquet")
        storage.write_parquet_atomic(uri, table)
        return uri

    def read_queries(self, r: int) -> pa.Table:
        uri = self.round_uri(r, "queries.parquet")
        if not storage.exists(uri):
            raise FileNotFoundError(f"round {r} of {self.uri} has no query batch ({uri}): its selection "
                                    "step has not run yet")
        return storage.read_parquet(uri)

    def pending_query_round(self) -> int | None:
        """The latest uncommitted round whose ``select`` step is done but whose ``label`` step is not."""
        for r in [*reversed(self.rounds()), SEED_ROUND]:
            if (not self.is_round_committed(r) and self.is_done(r, "select")
                    and not self.is_done(r, "label")):
                return r
        return None
