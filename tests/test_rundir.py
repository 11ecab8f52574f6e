"""RunDir: run.json, step markers, round commits, results.jsonl and queries, locally and on S3."""
from __future__ import annotations

import json
import uuid

import pytest

from ray_al.core import storage
from ray_al.run.rundir import RunDir, RunDirError
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

INFO = {"config": {"al": {"rounds": 3, "budget": 10}, "train": {"epochs": 1}}, "num_classes": 3,
        "class_names": ["cat", "dog", "eel"], "id_type": "int64"}


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3").uri(f"rundir-{uuid.uuid4().hex[:8]}")


def test_create_open_and_info(run_uri):
    rd = RunDir.create(run_uri, INFO)
    stored = storage.read_json(storage.join(run_uri, "run.json"))
    assert {k: v for k, v in stored.items() if k != "created"} == INFO and stored["created"]
    again = RunDir.open(run_uri)
    assert again.num_classes == 3 and again.class_names == ["cat", "dog", "eel"]
    assert again.id_type == "int64" and again.info["config"] == INFO["config"]
    # same setup: idempotent, keeps the original creation time
    assert RunDir.create(run_uri, dict(INFO)).info["created"] == stored["created"]


def test_create_refuses_a_different_config(run_uri):
    RunDir.create(run_uri, INFO)
    RunDir(run_uri).mark_done(0, "train", {})
    changed = {**INFO, "config": {"al": {"rounds": 4, "budget": 10}, "train": {"epochs": 1}}}
    with pytest.raises(RunDirError, match=r"different setup \(differs in \['config'\]\).*--resume"):
        RunDir.create(run_uri, changed)
    rd = RunDir.create(run_uri, changed, overwrite=True)
    assert rd.info["config"]["al"]["rounds"] == 4
    assert not rd.is_done(0, "train")  # the old run was wiped


def test_create_validates_info_and_refuses_foreign_dirs(tmp_path):
    with pytest.raises(RunDirError, match="lacks"):
        RunDir.create(str(tmp_path / "a"), {"num_classes": 2})
    with pytest.raises(RunDirError, match="class_names"):
        RunDir.create(str(tmp_path / "a"), {"num_classes": 2, "id_type": "int64", "class_names": ["x"]})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="not a ray_al run directory"):
        RunDir.create(str(tmp_path / "busy"), INFO)
    RunDir.create(str(tmp_path / "busy"), INFO, overwrite=True)
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "precious"  # not deleted


def test_a_run_killed_while_being_created_can_be_created_again(tmp_path):
    """Seen in a sweep: a trial killed while taking its lock left data/ and a temporary file of the lock's
    atomic write, and every retry of the trial was refused as a foreign directory."""
    from ray_al.core.storage import TMP_PREFIX

    half = tmp_path / "trial"
    (half / "data").mkdir(parents=True)
    (half / f"{TMP_PREFIX}LOCK-0ms9qmir").write_text("pid 1")
    assert RunDir.create(str(half), INFO).exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tmp-notes.txt").write_text("mine")  # not our temporary: still foreign
    with pytest.raises(RunDirError, match="not a ray_al run directory"):
        RunDir.create(str(tmp_path / "other"), INFO)


def test_open_missing_is_clear(run_uri):
    with pytest.raises(RunDirError, match="not a ray_al run directory.*run.json is missing"):
        RunDir.open(run_uri)


def test_round_uri_and_steps(run_uri):
    rd = RunDir.create(run_uri, INFO)
    assert rd.round_uri(3, "steps", "x.json") == storage.join(run_uri, "rounds", "0003", "steps", "x.json")
    assert not rd.is_done(3, "train") and rd.step_payload(3, "train") is None
    rd.mark_done(3, "train", {"checkpoint": "c1", "acc": 0.5})
    assert rd.is_done(3, "train") and rd.step_payload(3, "train") == {"checkpoint": "c1", "acc": 0.5}
    assert storage.read_json(rd.round_uri(3, "steps", "train.json"))["step"] == "train"
    rd.mark_done(3, "embed", {})
    assert rd.done_steps(3) == ["embed", "train"]
    with pytest.raises(RunDirError, match="step name"):
        rd.mark_done(3, "../evil", {})
    rd.clear_round(3)
    assert not rd.is_done(3, "train") and rd.rounds() == []


def test_commit_results_and_jsonl_without_duplicates(run_uri):
    rd = RunDir.create(run_uri, INFO)
    for r in (1, 0, 2):
        rd.mark_done(r, "train", {})
    rd.commit_round(1, {"round": 1, "num_labels": 20, "test_accuracy": 0.6})
    rd.commit_round(0, {"round": 0, "num_labels": 10, "test_accuracy": 0.5})
    # round 2 has a marker but no manifest: not committed
    assert rd.committed_rounds() == [0, 1] and rd.is_round_committed(1) and not rd.is_round_committed(2)
    assert [row["round"] for row in rd.results()] == [0, 1]
    uri = rd.write_results_jsonl()
    first = storage.read_text(uri)
    rd.write_results_jsonl()  # a resumed run regenerates: never appends twice
    assert storage.read_text(uri) == first
    assert [json.loads(x)["num_labels"] for x in first.splitlines()] == [10, 20]
    with pytest.raises(RunDirError, match="committed"):
        rd.clear_round(1)
    rd.clear_round(2)
    assert rd.rounds() == [0, 1]
    assert storage.read_json(rd.round_uri(1, "MANIFEST.json"))["steps"] == ["train"]


def test_queries_and_pending_round(run_uri):
    rd = RunDir.create(run_uri, INFO)
    assert rd.pending_query_round() is None
    rd.write_queries(1, [7, 3, 5], ["s3://b/7.png", None, "/data/5.png"])
    t = rd.read_queries(1)
    assert t.column("id").to_pylist() == [7, 3, 5] and t.column("uri").to_pylist()[1] is None
    assert rd.pending_query_round() is None  # select not marked done yet
    rd.mark_done(1, "select", {"n": 3})
    assert rd.pending_query_round() == 1
    rd.mark_done(1, "label", {})
    assert rd.pending_query_round() is None
    with pytest.raises(RunDirError, match="repeats ids"):
        rd.write_queries(2, [1, 1], None)
    with pytest.raises(FileNotFoundError, match="no query batch"):
        rd.read_queries(4)


def test_query_ids_must_match_run_id_type(tmp_path):
    from ray_al.run.ledger import LedgerError

    rd = RunDir.create(str(tmp_path / "r"), INFO)
    with pytest.raises(LedgerError, match="not int64"):
        rd.write_queries(0, ["a", "b"])
