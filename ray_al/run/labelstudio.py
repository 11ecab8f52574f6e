"""Label Studio round trip: the pending query batch as Label Studio tasks, its JSON export back into the ledger.

Export (`python -m ray_al.label export RUN_DIR --format label-studio --out tasks.json`) writes:
- tasks.json: one task per query, in acquisition order (the order the round selected them), each with
  ``data.image`` (a URL Label Studio can show: ``/data/local-files/?d=<path under the document root>`` for
  local files, served when LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true with a Local Files storage on that
  root; ``s3://bucket/key`` as is, resolved by a connected S3 source storage; http(s) URLs as is),
  ``data.ray_al_id`` (the pool id), ``data.acquisition_rank`` (1 = picked first) and ``data.acquisition_score``
  (the method's own score where it has one per image, e.g. margin, else 1 - (rank - 1) / batch size; which
  one is in ``data.acquisition_score_kind``), and ``predictions`` with the round model's top class and its
  probability when the round has a model (its embeddings hold ``probs``);
- tasks.label_config.xml (next to it, or --label-config): an Image and single-choice Choices over the run's
  classes plus NONE_CHOICE ("none of these classes").

Import (`python -m ray_al.label import RUN_DIR export.json`) reads Label Studio's JSON export (a list of tasks
with ``annotations``) with the CSV's validation (ray_al.run.oracle.import_answers): unknown ids, an id in two
tasks, unknown classes, and conflicting annotations are refused, nothing is half-written.
Several annotators per task (AGREEMENT rules): "majority" (default) takes the choice more annotators gave than
any other and refuses a tie, naming the task and the votes; "unanimous" refuses any disagreement. Cancelled
(skipped) annotations and annotations without a choice count for nothing; a task with none left is unanswered.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from ray_al.core import storage
from ray_al.run.ledger import OOD_LABEL, Ledger
from ray_al.run.oracle import (LabelImportError, OracleError, import_answers, pending_round,
                               write_query_images)
from ray_al.run.rundir import RunDir

__all__ = ["AGREEMENT", "NONE_CHOICE", "FROM_NAME", "TO_NAME", "export_tasks", "import_export", "label_config",
           "local_files_url"]

NONE_CHOICE = "none of these classes"
FROM_NAME, TO_NAME = "label", "image"  # the Choices and Image tag names of label_config
AGREEMENT = ("majority", "unanimous")


def class_choices(rd: RunDir) -> list[str]:
    """The choice values of the run's classes, in class-index order (class names, else "0", "1", ...)."""
    return list(map(str, rd.class_names)) if rd.class_names else [str(i) for i in range(rd.num_classes)]


def label_config(choices: list[str]) -> str:
    """Label Studio labelling config: one image, one choice among `choices` and NONE_CHOICE."""
    lines = ["<View>", f'  <Image name="{TO_NAME}" value="$image"/>',
             f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">']
    lines += [f"    <Choice value={quoteattr(c)}/>" for c in [*choices, NONE_CHOICE]]
    lines += ["  </Choices>", "</View>", ""]
    return "\n".join(lines)


def local_files_url(path: str, document_root: str) -> str:
    """Label Studio's URL of a local file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."""
    path, root = os.path.abspath(path), os.path.abspath(document_root)
    rel = os.path.relpath(path, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise OracleError(f"image {path} is outside the Label Studio document root {root}: pass --document-root "
                          "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) at or above the images, or --images-dir under it")
    return "/data/local-files/?d=" + quote(rel)


def _image_url(uri: str | None, qid: Any, document_root: str) -> str:
    if uri is None:
        raise OracleError(f"query {qid!r} has no image path (the pool stores image bytes): pass --images-dir "
                          "to write the images where Label Studio can serve them")
    if storage.is_remote(uri):
        return uri
    return local_files_url(uri, document_root)


def _round_probs(rd: RunDir, r: int, ids: list) -> dict:
    """id -> class probabilities of the round's model for the queried ids ({} when the round has no model)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    uri = storage.join(rd.round_uri(r, "embeddings"), "split=unlabeled")
    if r < 0 or not storage.exists(uri):
        return {}
    fs, path = storage.pyarrow_fs(uri)
    ds = pads.dataset(path, filesystem=fs, format="parquet")
    if "probs" not in ds.schema.names:
        return {}
    t = ds.to_table(columns=["id", "probs"], filter=pc.field("id").isin(pa.array(ids, ds.schema.field("id").type)))
    return dict(zip(t.column("id").to_pylist(), t.column("probs").to_pylist()))


def _scores(rd: RunDir, r: int, ids: list, probs: dict) -> tuple[list[float], str]:
    """The acquisition score of each query and its kind: the method's own per-image score when it has one and
    the round's probabilities give it, else the rank (1 - (rank - 1) / k: higher = picked earlier)."""
    from ray_al import acquisition

    method = (rd.step_payload(r, "select") or {}).get("selected_by")
    k = len(ids)
    rank = [1.0 - i / k for i in range(k)]
    if method not in acquisition.ACQUISITIONS or not probs or any(i not in probs for i in ids):
        return rank, "rank"
    strategy = acquisition.get(method)
    if strategy.kind != "score" or not strategy.required <= {"probs"}:
        return rank, "rank"
    view = acquisition.PoolView(ids=np.asarray(ids), probs=np.asarray([probs[i] for i in ids], dtype=np.float32))
    return [float(s) for s in acquisition.score(method, view)], method


def export_tasks(run: Any, out: str, *, config_out: str | None = None, document_root: str = "/",
                 image_bytes_by_id: dict | None = None, images_dir: str | None = None) -> tuple[int, str]:
    """Write the pending batch as Label Studio tasks to `out` and the labelling config to `config_out`
    (default: next to `out`, ``<stem>.label_config.xml``); returns (tasks written, config path)."""
    rd = run if isinstance(run, RunDir) else RunDir.open(str(run))
    r = pending_round(rd)
    q = rd.read_queries(r)
    ids = q.column("id").to_pylist()
    uris = write_query_images(ids, q.column("uri").to_pylist(), image_bytes_by_id, images_dir)
    choices = class_choices(rd)
    probs = _round_probs(rd, r, ids)
    scores, kind = _scores(rd, r, ids, probs)
    tasks = []
    for rank, (qid, uri, score) in enumerate(zip(ids, uris, scores), start=1):
        task: dict = {"data": {"image": _image_url(uri, qid, document_root), "ray_al_id": qid, "ray_al_round": r,
                               "acquisition_rank": rank, "acquisition_score": score,
                               "acquisition_score_kind": kind}}
        if qid in probs:
            p = np.asarray(probs[qid], dtype=np.float64)
            top = int(np.argmax(p))
            task["predictions"] = [{"model_version": f"ray_al round {r}", "score": float(p[top]), "result": [
                {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [choices[top]]}}]}]
        tasks.append(task)
    if config_out is None:
        stem = out[:-5] if out.endswith(".json") else out
        config_out = stem + ".label_config.xml"
    storage.write_text_atomic(config_out, label_config(choices))
    storage.write_text_atomic(out, json.dumps(tasks, indent=1) + "\n")
    return len(tasks), config_out


def import_export(run: Any, export_json: str, *, allow_partial: bool = False, agreement: str = "majority") -> Ledger:
    """Commit Label Studio's JSON export of the pending batch's tasks (see the module docstring's rules)."""
    if agreement not in AGREEMENT:
        raise LabelImportError(f"agreement must be one of {AGREEMENT}, got {agreement!r}")
    rd = run if isinstance(run, RunDir) else RunDir.open(str(run))
    pending_round(rd)
    tasks = _read_export(export_json)
    rows, problems = [], []
    for n, task in enumerate(tasks, start=1):
        where = f"task {task.get('id', '#' + str(n))}" if isinstance(task, dict) else f"entry {n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or "ray_al_id" not in task["data"]:
            problems.append(f"{where} has no data.ray_al_id: it was not exported by `python -m ray_al.label export "
                            "--format label-studio`; remove it from the export or import only ray_al's tasks.")
            continue
        answer, problem = _task_answer(task, where, agreement)
        if problem:
            problems.append(problem)
            continue
        label = "" if answer is None else (str(OOD_LABEL) if answer == NONE_CHOICE else answer)
        rows.append((where, str(task["data"]["ray_al_id"]), label))
    return import_answers(rd, rows, export_json, allow_partial=allow_partial, problems=problems)


def _read_export(export_json: str) -> list:
    try:
        tasks = json.loads(storage.read_text(export_json))
    except json.JSONDecodeError as e:
        raise LabelImportError(f"{export_json} is not JSON ({e}): export the project from Label Studio as JSON "
                               "(Export > JSON), not JSON-MIN or CSV") from None
    if not isinstance(tasks, list):
        raise LabelImportError(f"{export_json} holds a {type(tasks).__name__}, not Label Studio's list of tasks: "
                               "export the project as JSON (Export > JSON)")
    return tasks


def _task_answer(task: dict, where: str, agreement: str) -> tuple[str | None, str | None]:
    """(the task's answer or None, a problem or None) from its annotations by the agreement rule."""
    votes: list[str] = []
    for a, ann in enumerate(task.get("annotations") or [], start=1):
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        given = [c for res in ann.get("result") or [] if isinstance(res, dict) and res.get("type") == "choices"
                 for c in (res.get("value") or {}).get("choices") or []]
        if len(given) > 1:
            return None, (f"{where}: annotation {ann.get('id', a)} by {_who(ann)} gives {len(given)} choices "
                          f"{given}; a query takes one class. Fix it in Label Studio and export again.")
        votes += given
    if not votes:
        return None, None
    count = Counter(votes).most_common()
    tied = [c for c, v in count if v == count[0][1]]
    if len(tied) > 1 or (agreement == "unanimous" and len(count) > 1):
        rule = "a tie for the most votes" if len(tied) > 1 else "annotators disagree (agreement=unanimous)"
        return None, (f"{where} (id {task['data']['ray_al_id']!r}): {rule}: votes {dict(count)}. Resolve it in "
                      "Label Studio (another annotation or a fixed one) and export again.")
    return count[0][0], None


def _who(ann: dict) -> str:
    user = ann.get("completed_by")
    if isinstance(user, dict):
        return str(user.get("email") or user.get("id"))
    return f"user {user}"
