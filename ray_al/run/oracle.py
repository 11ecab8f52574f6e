"""Oracles: where the labels of a query batch come from.

* :class:`SimulatedOracle` answers from the pool's ``label`` column (benchmarks, tests); a pool row
  labelled -1 is out of distribution and is answered "none of these classes" (``OOD_LABEL``).
* The file oracle is a round trip through people: :func:`export_queries` writes the pending batch as a
  CSV (``id,uri,label`` with ``label`` left blank), annotators fill in ``label`` (a class index, a
  class name, or ``none`` for an image in none of the classes), and :func:`import_labels` validates the
  whole file and commits it to the ledger. It is exposed as ``python -m ray_al.label export|import|status``.

The queries selected in round ``r`` are stored in the ledger with ``round = r + 1``: a ledger row's round
is the first training round that uses the label (DEVELOPERS.md).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_al.core import faults, storage
from ray_al.run.ledger import OOD_LABEL, Ledger, LedgerError, name_rows
from ray_al.run.rundir import RunDir, batch_name

__all__ = ["NONE_ANSWER", "PoolOracle", "SimulatedOracle", "OracleError", "LabelImportError", "export_queries", "import_labels",
           "import_answers", "load_image_bytes", "write_query_images", "pending_round", "query_uris", "read_pool_rows"]

# What annotators write in the labels CSV for "none of these classes" (case-insensitive; -1 too).
NONE_ANSWER = "none"


class OracleError(ValueError):
    """An oracle cannot answer (no labels, no pending queries, no images to show)."""


class LabelImportError(LedgerError):
    """A labels file was rejected; the message names the CSV lines and what to do."""


# ----------------------------------------------------------------------------- simulated
class SimulatedOracle:
    """Answers queries with the pool's ground-truth labels (``labels_by_id``: id -> int label); an id
    labelled OOD_LABEL (-1) is answered "none of these classes", which the ledger records as such."""

    def __init__(self, labels_by_id: dict):
        self.labels_by_id = labels_by_id

    @classmethod
    def from_table(cls, table: pa.Table, id_column: str = "id", label_column: str = "label") -> "SimulatedOracle":
        """Build from a pool table; rows with a null label are left out (asking for them is an error)."""
        if label_column not in table.column_names:
            raise OracleError(f"the pool has no {label_column!r} column (columns: {table.column_names}), so a "
                              "simulated oracle cannot answer. Use al.oracle=file to label with annotators "
                              "(python -m ray_al.label export / import).")
        ids = table.column(id_column).to_pylist()
        labels = table.column(label_column).to_pylist()
        return cls({i: int(l) for i, l in zip(ids, labels) if l is not None})

    def answer(self, ids: Any) -> np.ndarray:
        """int64 labels for ``ids`` in the same order."""
        return _answer(_id_list(ids), self.labels_by_id)


class PoolOracle:
    """The run's simulated oracle: answers from the pool's `label` column, reading only the asked rows
    (a dict of every label, as SimulatedOracle holds, would grow the driver with the pool)."""

    def __init__(self, pool_uri: str):
        self.pool_uri = pool_uri

    def answer(self, ids: Any) -> np.ndarray:
        """int64 labels for ``ids`` in the same order (rows with a null label have none)."""
        ids = _id_list(ids)
        rows = read_pool_rows(self.pool_uri, ids, ["id", "label"])
        known = {i: int(y) for i, y in zip(rows.column("id").to_pylist(), rows.column("label").to_pylist())
                 if y is not None}
        return _answer(ids, known)


def _id_list(ids: Any) -> list:
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids.to_pylist()
    return list(ids.tolist() if isinstance(ids, np.ndarray) else ids)


def _answer(ids: list, labels_by_id: dict) -> np.ndarray:
    missing = [i for i in ids if i not in labels_by_id]
    if missing:
        raise OracleError(
            f"the simulated oracle has no label for {len(missing)} queried ids {name_rows(missing)}: "
            "the pool has no `label` column or these rows have none. Use al.oracle=file to label "
            "them with annotators (python -m ray_al.label export / import).")
    return np.asarray([labels_by_id[i] for i in ids], dtype=np.int64)


# ----------------------------------------------------------------------------- file oracle
def _rundir(run: Any) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir.open(str(run))


def pending_round(run: RunDir) -> int:
    r = run.pending_query_round()
    if r is None:
        committed = run.committed_rounds()
        raise OracleError(
            f"{run.uri} has no pending query batch (no round with a finished selection awaiting labels; "
            f"committed rounds: {committed or 'none'}). Run `python -m ray_al.cycle --config ... "
            "al.oracle=file` (or --resume) until it stops for labels, then export.")
    return r


def _image_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


def _safe_name(v: Any) -> str:
    # ids become file names: keep them readable but never let them escape the folder
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(v)).lstrip(".") or "_"


def read_pool_rows(uri: str, ids: list, columns: list[str], id_column: str = "id") -> pa.Table:
    """`columns` of the pool rows whose id is in `ids`: a filtered Parquet read, so a query batch never
    loads the rest of the pool. Columns the pool lacks are an OracleError naming them."""
    import pyarrow.dataset as pads  # imported here: it pulls in pandas, slow for the other commands

    fs, path = storage.pyarrow_fs(uri)
    try:
        ds = pads.dataset(path, filesystem=fs, format="parquet")
    except OSError as e:
        raise storage._translate(uri, e) from e
    missing = [c for c in columns if c not in ds.schema.names]
    if missing:
        raise OracleError(f"the pool {uri} has no column {missing} (columns: {ds.schema.names})")
    value_set = pa.array(list(ids), ds.schema.field(id_column).type)
    return ds.to_table(columns=columns, filter=pc.field(id_column).isin(value_set))


def query_uris(pool_uri: str, image_column: str, ids: list) -> list:
    """Where annotators find each queried image: the pool's `path`; in a pool that holds the bytes, the
    source's URI when it is remote (`ingest` of an s3:// prefix records it: Label Studio's S3 storage serves
    it), else None (the export writes the bytes to --images-dir)."""
    if image_column != "path" and not _remote_paths(pool_uri):
        return [None] * len(ids)  # no filtered read of a large pool for nothing
    table = read_pool_rows(pool_uri, ids, ["id", "path"])
    by_id = dict(zip(table.column("id").to_pylist(), table.column("path").to_pylist()))
    if image_column == "path":
        return [by_id.get(i) for i in ids]
    return [by_id.get(i) if storage.is_remote(by_id.get(i)) else None for i in ids]


def _remote_paths(pool_uri: str) -> bool:
    """Whether the pool's `path` column holds remote URIs, judged by its first row (one row group read)."""
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_fs(pool_uri)
    ds = pads.dataset(path, filesystem=fs, format="parquet")
    if "path" not in ds.schema.names:
        return False
    first = ds.head(1, columns=["path"]).column("path").to_pylist()
    return bool(first) and storage.is_remote(first[0])


def load_image_bytes(pool: dict, ids: list) -> dict:
    """id -> encoded image bytes for ``ids``, reading only those rows from the pool Parquet.

    ``pool`` is run.json's ``pool`` entry: {"uri", "id_column", "image_column", ...}.
    """
    uri = pool.get("uri")
    id_col = pool.get("id_column", "id")
    img_col = pool.get("image_column", "image")
    if not uri:
        raise OracleError("run.json records no pool URI, so image bytes cannot be exported; the queries "
                          "have no image paths either. Export without --images-dir to get the ids only.")
    table = read_pool_rows(uri, ids, [id_col, img_col], id_column=id_col)
    return dict(zip(table.column(id_col).to_pylist(), table.column(img_col).to_pylist()))


def write_query_images(ids: list, uris: list, image_bytes_by_id: dict | None, images_dir: str | None) -> list:
    """`uris` with each None (a pool that stores bytes) replaced by the image written to
    ``images_dir/<id>.<png|jpg|...>`` when `images_dir` is given; unchanged otherwise."""
    uris = list(uris)
    need = [i for i, u in zip(ids, uris) if u is None]
    if images_dir is None or not need:
        return uris
    if image_bytes_by_id is None:
        raise OracleError("the queries have no image URIs and no image bytes were given")
    lacking = [i for i in need if image_bytes_by_id.get(i) is None]
    if lacking:
        raise OracleError(f"no image bytes for {len(lacking)} queried ids {name_rows(lacking)}: "
                          "check the pool recorded in run.json")
    storage.makedirs(images_dir)
    for k, (i, u) in enumerate(zip(ids, uris)):
        if u is None:
            data = image_bytes_by_id[i]
            target = storage.join(images_dir, _safe_name(i) + _image_ext(data))
            storage.write_bytes_atomic(target, data)
            uris[k] = target if storage.is_s3(target) else os.path.abspath(target)
    return uris


def export_queries(run: Any, out: str, image_bytes_by_id: dict | None = None,
                   images_dir: str | None = None) -> int:
    """Write the pending query batch to CSV ``out`` (``id,uri,label``, label blank); returns the row count.

    Queries without a URI (pools that store image bytes) get their image written to
    ``images_dir/<id>.<png|jpg|...>`` when ``images_dir`` and ``image_bytes_by_id`` are given, and that
    path goes in the ``uri`` column.
    """
    rd = _rundir(run)
    q = rd.read_queries(pending_round(rd))
    ids = q.column("id").to_pylist()
    uris = write_query_images(ids, q.column("uri").to_pylist(), image_bytes_by_id, images_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "uri", "label"])
    for i, u in zip(ids, uris):
        w.writerow([i, u or "", ""])
    storage.write_text_atomic(out, buf.getvalue())
    return len(ids)


def _parse_label(raw: str, num_classes: int, class_names: list[str] | None) -> int | None:
    """Class index for ``raw`` (an int or a class name, case-insensitive fallback), OOD_LABEL for
    ``none`` / ``-1`` ("none of these classes"; a class actually named none keeps its name); None if
    invalid. Parsed, never evaluated."""
    s = raw.strip()
    try:
        v = int(s)
    except ValueError:
        v = None
    if v is not None:
        return v if 0 <= v < num_classes or v == OOD_LABEL else None
    if s.lower() == NONE_ANSWER and not any(c.lower() == NONE_ANSWER for c in class_names or ()):
        return OOD_LABEL
    if class_names:
        if s in class_names:
            return class_names.index(s)
        lower = [c.lower() for c in class_names]
        if s.lower() in lower and lower.count(s.lower()) == 1:
            return lower.index(s.lower())
    return None


@dataclass
class _Answers:
    """A labels CSV read against the pending batch: the answers and every kind of bad line."""

    answers: dict = field(default_factory=dict)  # id -> class index or OOD_LABEL
    bad_id: list = field(default_factory=list)  # "line N: 'x'" / "task N: 'x'": not an id of this run's type
    unknown: list = field(default_factory=list)  # (where, id): not in the pending batch
    dup_lines: list = field(default_factory=list)
    bad_label: list = field(default_factory=list)


def import_labels(run: Any, labels_csv: str, *, allow_partial: bool = False) -> Ledger:
    """Validate a labels CSV (``id,label``) against the pending query batch and commit it.

    Rejected as a whole (nothing is written) when: a line's id is not in the pending batch, an id
    appears twice, a label is neither an index in ``range(num_classes)``, a class name nor ``none``, or some
    queried ids have no answer (unless ``allow_partial``). Blank labels count as unanswered; ``none``
    (or -1) answers "none of these classes" and is recorded as OOD_LABEL (never queried again, never
    trained on, counted in the budget). Then the
    labels are added to the ledger (source 'import', round = the pending round + 1, the first training
    round that uses them), the ledger is committed and the round's ``label`` step is marked done.
    """
    rd = _rundir(run)
    pending_round(rd)  # no pending batch: say so before reading the file
    return import_answers(rd, _csv_rows(labels_csv), labels_csv, allow_partial=allow_partial)


def import_answers(rd: RunDir, rows: list[tuple[str, str, str]], source: str, *, allow_partial: bool = False,
                   problems: list[str] | None = None) -> Ledger:
    """Validate answers ``(where, raw id, raw label)`` (where: "line 3", "task 17") against the pending batch
    and commit them, or raise LabelImportError listing every problem (with `problems` found by the caller)
    and write nothing. The one validation of every labels format (CSV, Label Studio JSON)."""
    r = pending_round(rd)
    qids = rd.read_queries(r).column("id").to_pylist()
    parsed = _read_answers(rows, set(qids), rd)
    unanswered = [i for i in qids if i not in parsed.answers]
    problems = list(problems or []) + _problems(parsed, rd, r)
    if unanswered and not allow_partial and not problems:
        problems.append(f"{len(unanswered)} of the {len(qids)} queried ids have no label: "
                        f"{name_rows(unanswered)}. Fill them in, or pass --allow-partial to import "
                        "what is there (the rest stay unlabeled).")
    if not problems and not parsed.answers:
        problems.append("the file answers none of the queried ids")
    if problems:
        raise LabelImportError(f"rejected {source} (nothing was imported): " + " ".join(problems))
    return _commit_answers(rd, r, parsed.answers, len(unanswered), source)


def _csv_rows(labels_csv: str) -> list[tuple[str, str, str]]:
    """("line N", id, label) of every non-blank data line."""
    reader = csv.reader(io.StringIO(storage.read_text(labels_csv)))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise LabelImportError(f"{labels_csv} is empty: expected a header line with columns id,label") from None
    if "id" not in header or "label" not in header:
        raise LabelImportError(f"{labels_csv} needs columns 'id' and 'label' in its header line, found "
                               f"{header}. Start from the file written by `python -m ray_al.label export`.")
    ci, cl = header.index("id"), header.index("label")
    return [(f"line {reader.line_num}", row[ci] if ci < len(row) else "", row[cl] if cl < len(row) else "")
            for row in reader if row and any(c.strip() for c in row)]


def _read_answers(rows: list[tuple[str, str, str]], qset: set, rd: RunDir) -> _Answers:
    out = _Answers()
    first: dict[Any, str] = {}
    for where, raw_id, raw_label in rows:
        raw_id, raw_label = str(raw_id).strip(), str(raw_label).strip()
        try:
            key: Any = int(raw_id) if rd.id_type == "int64" else raw_id
        except ValueError:
            out.bad_id.append(f"{where}: {raw_id!r}")
            continue
        if key not in qset:
            out.unknown.append((where, key))
        elif key in first:
            out.dup_lines.append(f"{where}: {key!r} (first on {first[key]})")
        else:
            first[key] = where
            if raw_label == "":
                continue  # unanswered
            v = _parse_label(raw_label, rd.num_classes, rd.class_names)
            if v is None:
                out.bad_label.append(f"{where}: id {key!r} label {raw_label!r}")
            else:
                out.answers[key] = v
    return out


def _problems(parsed: _Answers, rd: RunDir, r: int) -> list[str]:
    problems = []
    if parsed.bad_id:
        problems.append(f"{len(parsed.bad_id)} ids are not integers like this run's ids: "
                        f"{name_rows(parsed.bad_id, raw=True)}.")
    if parsed.unknown:
        already = Ledger.load(rd).contains([k for _, k in parsed.unknown])
        note = f" ({int(already.sum())} of them are already labeled)" if already.any() else ""
        problems.append(f"{len(parsed.unknown)} ids are not in the pending query batch of {batch_name(r)}{note}: "
                        f"{name_rows([f'{w}: {k!r}' for w, k in parsed.unknown], raw=True)}. "
                        "Only ids from the exported queries can be labeled.")
    if parsed.dup_lines:
        problems.append(f"{len(parsed.dup_lines)} ids appear more than once: "
                        f"{name_rows(parsed.dup_lines, raw=True)}. Keep one answer per id.")
    if parsed.bad_label:
        allowed = f"an integer 0..{rd.num_classes - 1}"
        if rd.class_names:
            allowed += f", a class name {name_rows(rd.class_names, 20)},"
        allowed += f" or {NONE_ANSWER!r} (or {OOD_LABEL}) for an image in none of these classes"
        problems.append(f"{len(parsed.bad_label)} labels are outside the class set: "
                        f"{name_rows(parsed.bad_label, raw=True)}. A label must be {allowed}.")
    return problems


def _commit_answers(rd: RunDir, r: int, answers: dict, unanswered: int, labels_csv: str) -> Ledger:
    # A previous import of this round may have committed the ledger and died before its step marker:
    # start without that round's answers so re-importing is safe instead of "already labeled".
    ledger = Ledger.load(rd).without_round(r + 1)
    ids = list(answers)
    ledger = ledger.add(ids, [answers[i] for i in ids], r + 1, "import", num_classes=rd.num_classes).commit(rd)
    faults.kill_point("import.committed")
    rd.mark_done(r, "label", {"source": "import", "file": str(labels_csv), "rows": len(ids),
                              "unanswered": unanswered, "ledger_version": ledger.version})
    return ledger
