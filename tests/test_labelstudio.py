"""Label Studio export/import (ray_al/run/labelstudio.py) and the round trip through a real Label Studio.

The round trip starts the `label-studio` package (its own venv: its pins clash with ours) on loopback with
SQLite. It is found through RAY_AL_LABEL_STUDIO (the executable; the Makefile points it at .lsvenv, which
`make test` installs), then PATH, then .lsvenv/bin in the checkout; without it the test fails with the install
command. Figures (2026-12-06, 2 cores, idle): `pip install label-studio==1.23.2` into a fresh python3.11 venv
59 s (146 s under load); the test with a first start (migrating a new SQLite database) 30 s, 136 s under load;
later starts from the migrated database (kept in RAY_AL_TEST_CACHE, else ~/.cache/ray_al-tests) 12-17 s.
"""
from __future__ import annotations

import io as pyio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_al.core import storage
from ray_al.core.embeddings import fixed_list
from ray_al.run import labelstudio
from ray_al.run.labelstudio import NONE_CHOICE, export_tasks, import_export, label_config, local_files_url
from ray_al.run.ledger import OOD_LABEL, Ledger
from ray_al.run.oracle import LabelImportError, OracleError
from ray_al.run.rundir import RunDir
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "bird", "cat"]
QUERIES = [12, 10, 11]  # acquisition order: not sorted, so the export must keep it
PROBS = {10: [0.1, 0.7, 0.2], 11: [0.5, 0.45, 0.05], 12: [0.2, 0.2, 0.6], 13: [1.0, 0.0, 0.0]}


def _png(value: int) -> bytes:
    buf = pyio.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(tmp_path: Path, *, method: str = "margin", with_model: bool = True, uris=None) -> RunDir:
    """A run paused for labels: labels {1, 2} committed, round 1 queried QUERIES by `method`, pool of PNG bytes."""
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2, 10, 11, 12, 13], pa.int64()),
                             "image": [_png(v) for v in (1, 2, 10, 11, 12, 13)]}), pool)
    rd = RunDir.create(str(tmp_path / "run"), {
        "config": {"al": {"oracle": "file"}}, "num_classes": 3, "class_names": CLASSES, "id_type": "int64",
        "pool": {"uri": str(pool), "id_column": "id", "image_column": "image"}})
    Ledger.empty("int64").add([1, 2], [0, 1], 0, "initial", num_classes=3).commit(rd)
    rd.commit_round(0, {"round": 0, "num_labels": 2, "test_accuracy": 0.4})
    if with_model:
        split = Path(rd.round_uri(1, "embeddings")) / "split=unlabeled"
        split.mkdir(parents=True)
        ids = sorted(PROBS)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()),
                                 "probs": fixed_list(np.asarray([PROBS[i] for i in ids], np.float32))}),
                       split / "part-0.parquet")
    rd.write_queries(1, QUERIES, uris or [None] * len(QUERIES))
    rd.mark_done(1, "select", {"k": 3, "selected_by": method, "why": "test"})
    return rd


def ledger_files(rd: RunDir) -> list[str]:
    return storage.listdir(storage.join(rd.uri, "ledger"))


def choice(value: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]


def ls_task(task_id: int, qid, *answers, cancelled: int = 0) -> dict:
    anns = [{"id": 100 * task_id + a, "completed_by": a + 1, "result": choice(v), "was_cancelled": False}
            for a, v in enumerate(answers)]
    anns += [{"id": 999, "completed_by": 9, "result": [], "was_cancelled": True}] * cancelled
    return {"id": task_id, "data": {"image": "/data/local-files/?d=x.png", "ray_al_id": qid}, "annotations": anns}


def write_export(path: Path, tasks: list) -> str:
    path.write_text(json.dumps(tasks))
    return str(path)


# ----------------------------------------------------------------------------- export
def test_export_tasks_in_acquisition_order_with_scores_predictions_and_images(tmp_path):
    rd = make_run(tmp_path)
    root = tmp_path / "docroot"
    out = str(tmp_path / "tasks.json")
    n, config = export_tasks(rd, out, document_root=str(root), images_dir=str(root / "imgs"),
                             image_bytes_by_id={i: _png(i) for i in QUERIES})
    tasks = json.loads(Path(out).read_text())
    assert n == 3 and [t["data"]["ray_al_id"] for t in tasks] == QUERIES
    assert [t["data"]["acquisition_rank"] for t in tasks] == [1, 2, 3]
    # margin's score, 1 - (p1 - p2): 12 -> 0.6, 10 -> 0.5, 11 -> 0.95 (the stored order is kept, not re-sorted)
    assert [t["data"]["acquisition_score_kind"] for t in tasks] == ["margin"] * 3
    assert np.allclose([t["data"]["acquisition_score"] for t in tasks], [0.6, 0.5, 0.95], atol=1e-6)
    for t in tasks:
        qid = t["data"]["ray_al_id"]
        assert t["data"]["image"] == f"/data/local-files/?d=imgs/{qid}.png"
        assert (root / "imgs" / f"{qid}.png").read_bytes() == _png(qid)
        (pred,) = t["predictions"]
        top = int(np.argmax(PROBS[qid]))
        assert pred["result"] == choice(CLASSES[top]) and pred["score"] == pytest.approx(PROBS[qid][top])
    xml = ET.fromstring(Path(config).read_text())
    assert config == str(tmp_path / "tasks.label_config.xml")
    assert [c.get("value") for c in xml.iter("Choice")] == CLASSES + [NONE_CHOICE]
    assert xml.find("Choices").get("toName") == xml.find("Image").get("name") == "image"


def test_export_without_a_model_or_score_has_no_predictions_and_rank_scores(tmp_path):
    rd = make_run(tmp_path, method="typiclust", with_model=False, uris=["s3://b/a.png", "/img/b.png", "http://h/c.png"])
    export_tasks(rd, str(tmp_path / "t.json"), document_root="/img")
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["s3://b/a.png", "/data/local-files/?d=b.png", "http://h/c.png"]
    assert all("predictions" not in t for t in tasks)
    assert [t["data"]["acquisition_score"] for t in tasks] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert {t["data"]["acquisition_score_kind"] for t in tasks} == {"rank"}


def test_export_refuses_images_it_cannot_serve(tmp_path):
    rd = make_run(tmp_path)
    with pytest.raises(OracleError, match="query 12 has no image path.*--images-dir"):
        export_tasks(rd, str(tmp_path / "t.json"))
    with pytest.raises(OracleError, match="outside the Label Studio document root"):
        local_files_url("/data/x/1.png", "/data/y")
    assert not (tmp_path / "t.json").exists()


def test_label_config_escapes_class_names():
    xml = ET.fromstring(label_config(['a "quoted" <class>', "b&c"]))
    assert [c.get("value") for c in xml.iter("Choice")] == ['a "quoted" <class>', "b&c", NONE_CHOICE]


# ----------------------------------------------------------------------------- import
def test_import_majority_none_and_cancelled(tmp_path):
    rd = make_run(tmp_path)
    export = write_export(tmp_path / "e.json", [
        ls_task(1, 12, "cat"), ls_task(2, 10, "bird", "cat", "bird", cancelled=2), ls_task(3, 11, NONE_CHOICE)])
    import_export(rd, export)
    assert Ledger.load(rd).labels_by_id() == {1: 0, 2: 1, 12: 2, 10: 1, 11: OOD_LABEL}
    assert rd.step_payload(1, "label")["rows"] == 3


@pytest.mark.parametrize("tasks, pattern", [
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "bird"), ls_task(3, 11, "cat"), ls_task(4, 99, "cat")],
     r"1 ids are not in the pending query batch of round 1.*task 4: 99"),
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "bird"), ls_task(3, 11, "cat"), ls_task(4, 10, "cat")],
     r"1 ids appear more than once.*task 4: 10 \(first on task 2\)"),
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "dog"), ls_task(3, 11, "cat")],
     r"1 labels are outside the class set.*task 2: id 10 label 'dog'"),
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "bird", "cat"), ls_task(3, 11, "cat")],
     r"task 2 \(id 10\): a tie for the most votes: votes \{'bird': 1, 'cat': 1\}"),
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "bird"), {"id": 7, "data": {"image": "x"}, "annotations": []},
      ls_task(3, 11, "cat")], r"task 7 has no data.ray_al_id"),
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "bird"), ls_task(3, 11)],
     r"1 of the 3 queried ids have no label: \[11\]"),
    ([ls_task(1, 12, "cat"), ls_task(2, 10, "bird"), ls_task(3, "x", "cat")], r"not integers.*task 3: 'x'"),
])
def test_import_refuses_and_writes_nothing(tmp_path, tasks, pattern):
    rd = make_run(tmp_path)
    before = ledger_files(rd)
    with pytest.raises(LabelImportError, match=pattern) as ei:
        import_export(rd, write_export(tmp_path / "e.json", tasks))
    assert "nothing was imported" in str(ei.value)
    assert ledger_files(rd) == before and not rd.is_done(1, "label") and rd.pending_query_round() == 1


def test_import_refuses_two_choices_in_one_annotation_and_unanimous_disagreement(tmp_path):
    rd = make_run(tmp_path)
    two = ls_task(1, 12, "cat")
    two["annotations"][0]["result"] += choice("bird")
    tasks = [two, ls_task(2, 10, "bird", "bird", "cat"), ls_task(3, 11, "cat")]
    with pytest.raises(LabelImportError, match=r"task 1: annotation 100 by user 1 gives 2 choices \['cat', 'bird'\]"):
        import_export(rd, write_export(tmp_path / "e.json", tasks))
    tasks[0] = ls_task(1, 12, "cat")
    with pytest.raises(LabelImportError, match=r"task 2 \(id 10\): annotators disagree \(agreement=unanimous\)"):
        import_export(rd, write_export(tmp_path / "e.json", tasks), agreement="unanimous")
    import_export(rd, write_export(tmp_path / "e.json", tasks))  # the majority rule takes bird
    assert Ledger.load(rd).labels_by_id()[10] == 1


@pytest.mark.parametrize("text, pattern", [("{not json", "is not JSON"), ('{"tasks": []}', "not Label Studio's list"),
                                           ("[]", r"3 of the 3 queried ids have no label")])
def test_import_refuses_files_that_are_not_an_export(tmp_path, text, pattern):
    rd = make_run(tmp_path)
    (tmp_path / "e.json").write_text(text)
    with pytest.raises(LabelImportError, match=pattern):
        import_export(rd, str(tmp_path / "e.json"))
    with pytest.raises(LabelImportError, match="agreement must be one of"):
        import_export(rd, str(tmp_path / "e.json"), agreement="any")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ray_al.label", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_export_label_studio_then_import_json(tmp_path):
    rd = make_run(tmp_path)
    root = tmp_path / "root"
    p = cli("export", rd.uri, "--format", "label-studio", "--out", str(tmp_path / "tasks.json"),
            "--images-dir", str(root / "q"), "--document-root", str(root))
    assert p.returncode == 0, p.stderr
    assert "wrote 3 Label Studio tasks of round 1" in p.stdout and (tmp_path / "tasks.label_config.xml").is_file()
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=q/12.png"
    bad = write_export(tmp_path / "bad.json", [ls_task(1, 12, "cat"), ls_task(2, 10, "bird", "cat")])
    p = cli("import", rd.uri, bad, "--allow-partial")
    assert p.returncode == 2 and "a tie for the most votes" in p.stderr
    good = write_export(tmp_path / "good.json", [ls_task(1, 12, "cat"), ls_task(2, 10, "bird")])
    p = cli("import", rd.uri, good, "--allow-partial")
    assert p.returncode == 0, p.stderr
    assert Ledger.load(rd).labels_by_id() == {1: 0, 2: 1, 12: 2, 10: 1}


def test_cli_on_s3_keeps_s3_uris_for_label_studio_storage(s3):
    uri = s3.uri(f"lsrun-{uuid.uuid4().hex[:8]}")
    rd = RunDir.create(uri, {"config": {}, "num_classes": 3, "class_names": CLASSES, "id_type": "int64"})
    Ledger.empty("int64").add([1], [0], 0, "initial", num_classes=3).commit(rd)
    images = [s3.uri("images", f"{q}.png") for q in QUERIES]
    rd.write_queries(1, QUERIES, images)
    rd.mark_done(1, "select", {"k": 3, "selected_by": "kcenter"})
    out = s3.uri("exports", f"t-{uuid.uuid4().hex[:6]}.json")
    p = cli("export", rd.uri, "--format", "label-studio", "--out", out, "--s3-endpoint", s3.endpoint)
    assert p.returncode == 0, p.stderr
    tasks = json.loads(storage.read_text(out))
    assert [t["data"]["image"] for t in tasks] == images  # an S3 source storage in Label Studio signs them
    assert "Choice value=\"none of these classes\"" in storage.read_text(out[:-5] + ".label_config.xml")
    export = s3.uri("exports", f"e-{uuid.uuid4().hex[:6]}.json")
    storage.write_text_atomic(export, json.dumps([ls_task(i, q, "bird") for i, q in enumerate(QUERIES, 1)]))
    p = cli("import", rd.uri, export, "--s3-endpoint", s3.endpoint)
    assert p.returncode == 0, p.stderr
    assert Ledger.load(rd.uri).labels_by_id() == {1: 0, 10: 1, 11: 1, 12: 1}


# ----------------------------------------------------------------------------- a real Label Studio
def _label_studio() -> str | None:
    for candidate in (os.environ.get("RAY_AL_LABEL_STUDIO"), shutil.which("label-studio"),
                      str(REPO / ".lsvenv" / "bin" / "label-studio")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class LabelStudio:
    """A Label Studio server on loopback (SQLite in a temporary data dir), driven through its REST API."""

    TOKEN = "ray-al-test-token-0123456789"

    def __init__(self, exe: str, data_dir: Path, document_root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite",
               "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
        env.pop("PYTHONPATH", None)
        self.log = open(data_dir.parent / "label-studio.log", "w")
        self.proc = subprocess.Popen(
            [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port), "--data-dir",
             str(data_dir), "--username", "annotator@ray-al.test", "--password", "ray-al-test",
             "--user-token", self.TOKEN, "--enable-legacy-api-token"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, limit_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"label-studio not up after {limit_s} s; see {self.log.name}")

    def api(self, method: str, path: str, body=None, raw: bool = False):
        req = urllib.request.Request(self.url + path, method=method, headers={
            "Authorization": f"Token {self.TOKEN}", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        return data if raw else json.loads(data or b"null")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def label_studio(tmp_path):
    exe = _label_studio()
    if exe is None:
        pytest.fail("label-studio not installed: `make test-labelstudio` installs it into .lsvenv (or set "
                    "RAY_AL_LABEL_STUDIO to its executable)")
    # the version from the venv's metadata: `label-studio --version` migrates a database in ~ and asks PyPI
    dist = sorted(Path(exe).resolve().parents[1].glob("lib/python*/site-packages/label_studio-*.dist-info"))
    version = dist[-1].name[:-len(".dist-info")].split("-")[-1] if dist else "unknown"
    cache = Path(os.environ.get("RAY_AL_TEST_CACHE", Path.home() / ".cache" / "ray_al-tests"))
    template = cache / f"label-studio-{version}-data"
    data, root = tmp_path / "ls" / "data", tmp_path / "docroot"
    root.mkdir()
    if template.is_dir():  # a database migrated by an earlier run: starts in ~17 s instead of ~136 s
        shutil.copytree(template, data)
    else:
        data.mkdir(parents=True)
    server = LabelStudio(exe, data, root)
    try:
        server.wait(600)
        yield server, root
    finally:
        server.stop()
    if not template.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        partial = template.parent / (template.name + ".partial")
        shutil.copytree(data, partial, dirs_exist_ok=True)
        os.replace(partial, template)  # whole or absent: a killed copy is never taken for a template


@pytest.mark.labelstudio
def test_round_trip_through_a_real_label_studio(tmp_path, label_studio):
    server, root = label_studio
    rd = make_run(tmp_path)
    p = cli("export", rd.uri, "--format", "label-studio", "--out", str(tmp_path / "tasks.json"),
            "--images-dir", str(root / "round1"), "--document-root", str(root))
    assert p.returncode == 0, p.stderr
    config = (tmp_path / "tasks.label_config.xml").read_text()
    project = server.api("POST", "/api/projects", {"title": "ray_al round 1", "label_config": config})
    pid = project["id"]
    server.api("POST", "/api/storages/localfiles", {"project": pid, "path": str(root / "round1"), "title": "queries",
                                                    "use_blob_urls": False})
    server.api("POST", f"/api/projects/{pid}/import", json.loads((tmp_path / "tasks.json").read_text()))
    tasks = server.api("GET", f"/api/tasks?project={pid}&page_size=100&fields=all")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    by_qid = {t["data"]["ray_al_id"]: t for t in tasks}
    assert sorted(by_qid) == sorted(QUERIES)
    assert [t["data"]["ray_al_id"] for t in sorted(tasks, key=lambda t: t["id"])] == QUERIES  # acquisition order
    for qid, t in by_qid.items():  # Label Studio serves each image and kept the model's guess
        assert server.api("GET", t["data"]["image"], raw=True) == _png(qid)
    preds = server.api("GET", f"/api/predictions?task={by_qid[12]['id']}")
    assert preds[0]["result"][0]["value"]["choices"] == ["cat"] and preds[0]["score"] == pytest.approx(0.6)
    posted = {12: ["cat"], 10: ["bird", "cat", "bird"], 11: [NONE_CHOICE]}  # 10: two of three annotators say bird
    for qid, answers in posted.items():
        for a in answers:
            server.api("POST", f"/api/tasks/{by_qid[qid]['id']}/annotations", {"result": choice(a)})
    export = server.api("GET", f"/api/projects/{pid}/export?exportType=JSON", raw=True)
    (tmp_path / "export.json").write_bytes(export)
    p = cli("import", rd.uri, str(tmp_path / "export.json"))
    assert p.returncode == 0, p.stderr
    assert Ledger.load(rd).labels_by_id() == {1: 0, 2: 1, 12: 2, 10: 1, 11: OOD_LABEL}
    assert labelstudio.AGREEMENT[0] == "majority"


def test_the_seed_batch_exports_without_predictions_and_imports_as_round_0(tmp_path):
    from ray_al.run.rundir import SEED_ROUND

    rd = RunDir.create(str(tmp_path / "run"), {"num_classes": 3, "id_type": "int64"})  # no class names
    rd.write_queries(SEED_ROUND, [5, 6, 7], ["/imgs/5.png", "/imgs/6.png", "/imgs/7.png"])
    rd.mark_done(SEED_ROUND, "select", {"k": 3, "selected_by": "typiclust"})
    n, config = export_tasks(rd, str(tmp_path / "t.json"), document_root="/")
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert n == 3 and all("predictions" not in t and t["data"]["ray_al_round"] == SEED_ROUND for t in tasks)
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=imgs/5.png"
    assert [c.get("value") for c in ET.fromstring(Path(config).read_text()).iter("Choice")] == ["0", "1", "2", NONE_CHOICE]
    import_export(rd, write_export(tmp_path / "e.json", [ls_task(1, 5, "0"), ls_task(2, 6, "2"), ls_task(3, 7, NONE_CHOICE)]))
    assert [(r["id"], r["label"], r["round"]) for r in Ledger.load(rd).table.to_pylist()] == [(5, 0, 0), (6, 2, 0), (7, -1, 0)]
