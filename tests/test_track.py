"""Experiment tracking (track.* keys, README "Tracking"): a `cycle` run logs to a real MLflow file store and
to W&B offline files, and what was logged is read back from both. The two-trial sweep's tracking is read
back in tests/test_sweep.py, from the uninterrupted sweep the killed-sweep test compares with.

MLflow is read with its own client; W&B offline runs are read from their `.wandb` files (LevelDB-log framed
protobuf `Record`s; wandb 0.31 ships no reader for them, so `wandb_records` below decodes the framing).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ray_al.core import config as config_mod
from ray_al.core.config import ConfigError
from ray_al.run.track import Tracker, flat_params, mlflow_uri
from tests.rayhead import shared_env


REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--smoke-test", "al.rounds=1", "al.initial_size=20", "al.budget=15"]  # test_cycle's smallest cycle
PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- reading back
def wandb_records(path: Path) -> list:
    """The protobuf Records of one offline `.wandb` file: a 7-byte ':W&B' header, then LevelDB-log blocks
    of 32 KiB, each record framed by crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, buf = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos = 7
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wandb_runs(wandb_dir: Path) -> dict[str, dict]:
    """run name -> {config, history (list of dicts, one per step), artifacts {name: [paths]}, exit_code}."""
    runs = {}
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run: dict = {"config": {}, "history": [], "artifacts": {}, "exit_code": None}
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.update(name=r.run.display_name, project=r.run.project, group=r.run.run_group)
                run["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in r.history.item})
            elif kind == "artifact":
                run["artifacts"][r.artifact.name] = sorted(m.path for m in r.artifact.manifest.contents)
            elif kind == "exit":
                run["exit_code"] = r.exit.exit_code
        runs[run["name"]] = run
    return runs


def mlflow_runs(store: Path, experiment: str) -> dict[str, dict]:
    """run name -> {params, tags, metrics {key: [(step, value)]}, artifacts [paths], status}."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(str(store)))
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {store}"
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        rid = run.info.run_id
        metrics = {k: sorted((m.step, m.value) for m in client.get_metric_history(rid, k)) for k in run.data.metrics}
        artifacts = _artifact_paths(client, rid, "")
        out[run.info.run_name] = {"params": run.data.params, "tags": run.data.tags, "metrics": metrics,
                                  "artifacts": artifacts, "status": run.info.status,
                                  "artifact_dir": Path(run.info.artifact_uri.removeprefix("file://"))}
    return out


def _artifact_paths(client, run_id: str, under: str) -> list[str]:
    paths = []
    for f in client.list_artifacts(run_id, under or None):
        paths += _artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return sorted(paths)


def results_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


@pytest.fixture()
def wandb_offline(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "wandb_files"
    folder.mkdir()
    for key, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(folder)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(key, value)
    return folder


# ----------------------------------------------------------------------------- no Ray
def test_config_keys_and_flat_params():
    cfg = config_mod.load(None, ["track.mlflow=/tmp/mlruns", "track.wandb=proj", "train.milestones=[0.5]"])
    assert (cfg.track.mlflow, cfg.track.wandb, cfg.track.experiment) == ("/tmp/mlruns", "proj", "")
    params = flat_params(cfg)
    assert params["track.wandb"] == "proj" and params["al.rounds"] == 5 and params["train.milestones"] == "[0.5]"
    assert len(params) == sum(len(v) for v in cfg.to_dict().values())
    with pytest.raises(ConfigError, match="track.mlflw"):
        config_mod.load(None, ["track.mlflw=x"])


def test_untracked_run_logs_nothing(tmp_path):
    with Tracker.of(config_mod.load(), str(tmp_path), past=[{"round": 0, "labels": 1, "accuracy": 0.5}]) as t:
        assert t.sinks == []
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_is_marked_failed_without_artifacts(tmp_path, wandb_offline):
    store = tmp_path / "mlruns"
    cfg = config_mod.load(None, [f"track.mlflow={store}", "track.wandb=p", "track.experiment=fails"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text("{}\n")
    with pytest.raises(RuntimeError):
        with Tracker.of(cfg, str(tmp_path / "run")) as tracker:
            tracker.round({"round": 0, "labels": 10, "accuracy": 0.25, "seconds": {"train": 1.5},
                           "selected_by": "typiclust", "why": "few labels"})
            raise RuntimeError("the round failed")
    run = mlflow_runs(store, "fails")["run"]
    assert run["status"] == "FAILED" and run["artifacts"] == []
    assert run["metrics"]["train_s"] == [(0, 1.5)] and run["tags"]["round.0.selected_by"] == "typiclust"
    logged = wandb_runs(wandb_offline)["run"]
    assert logged["exit_code"] == 1 and logged["artifacts"] == {} and logged["group"] == "fails"
    assert logged["history"][0]["why"] == "few labels"


# ----------------------------------------------------------------------------- Ray: a cycle and a sweep
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cycle_logs_config_rounds_and_artifacts_to_mlflow_and_wandb(tmp_path, wandb_offline):
    store, run_dir = tmp_path / "mlruns", tmp_path / "tracked"
    proc = subprocess.run([sys.executable, "-m", "ray_al.cycle", *SMOKE, f"run.dir={run_dir}",
                           f"track.mlflow={store}", "track.wandb=ray-al-test", "track.experiment=cycle-test"],
                          cwd=REPO, capture_output=True, text=True, timeout=540, env={**os.environ, **shared_env()})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = results_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1]

    run = mlflow_runs(store, "cycle-test")["tracked"]
    assert run["status"] == "FINISHED"
    assert run["params"]["al.budget"] == "15" and run["params"]["data.pool_size"] == "400"
    assert run["params"]["track.wandb"] == "ray-al-test" and run["tags"]["run_dir"] == str(run_dir)
    assert [s for s, _ in run["metrics"]["accuracy"]] == [0, 1]  # one step per round
    assert [v for _, v in run["metrics"]["accuracy"]] == pytest.approx([r["accuracy"] for r in rows])
    assert run["metrics"]["labels"] == [(0, 20.0), (1, 35.0)]
    assert {k for k in run["metrics"] if k.endswith("_s")} == {"train_s", "embed_s", "select_s", "label_s"}
    assert run["metrics"]["select_s"][0][1] == pytest.approx(rows[0]["seconds"]["select"])
    assert run["tags"]["round.0.selected_by"] == rows[0]["selected_by"] and rows[0]["why"]
    assert run["tags"]["round.0.why"] == rows[0]["why"] and "round.1.selected_by" not in run["tags"]
    assert run["artifacts"] == ["learning_curve.png", "results.jsonl"]
    assert (run["artifact_dir"] / "results.jsonl").read_text() == (run_dir / "results.jsonl").read_text()
    assert (run["artifact_dir"] / "learning_curve.png").read_bytes()[:8] == PNG

    logged = wandb_runs(wandb_offline)["tracked"]
    assert (logged["project"], logged["group"], logged["exit_code"]) == ("ray-al-test", "cycle-test", 0)
    assert logged["config"]["al.budget"] == 15 and logged["config"]["select.method"] == "auto"
    history = logged["history"]
    assert [h["_step"] for h in history] == [0, 1]
    assert [h["accuracy"] for h in history] == pytest.approx([r["accuracy"] for r in rows])
    assert [h["labels"] for h in history] == [20, 35] and history[0]["selected_by"] == rows[0]["selected_by"]
    assert history[0]["why"] == rows[0]["why"] and history[1]["train_s"] == pytest.approx(rows[1]["seconds"]["train"])
    assert logged["artifacts"] == {"tracked-results": ["learning_curve.png", "results.jsonl"]}
