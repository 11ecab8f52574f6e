"""ray_al.sweep: the sweep file format (ray_al.loop.sweep_plan, no Ray) and one real Ray Tune sweep of two
trials whose Ray Train / Ray Data stages run inside the trials, then --resume."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ray_al.core import config, storage
from ray_al.core.config import ConfigError
from ray_al.loop.sweep_plan import load_plan, trial_name
from ray_al.sweep import main
from tests.faults.drill import kill_at


def write_sweep(tmp_path: Path, sweep: dict, base) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep, "base": base}, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- the file format
def test_grid_points_become_trial_configs_with_their_own_run_dirs(tmp_path):
    (tmp_path / "base.yaml").write_text("al: {rounds: 3, initial_size: 30}\ntrain: {epochs: 4}\n")
    path = write_sweep(tmp_path, {"name": "s", "dir": str(tmp_path / "out"),
                                  "grid": {"select.method": ["random", "kcenter"], "al.budget": [10, 20],
                                           "train.ssl_options.temperature": [0.1]}},
                       "base.yaml")  # relative to the sweep file
    plan = load_plan(path, overrides=["train.epochs=2"])
    points = plan.points()
    assert len(points) == 4 and points[0] == {"select.method": "random", "al.budget": 10,
                                              "train.ssl_options.temperature": 0.1}
    cfgs = [plan.trial_config(p) for p in points]
    assert [(c.select.method, c.al.budget) for c in cfgs] == [("random", 10), ("random", 20), ("kcenter", 10),
                                                              ("kcenter", 20)]
    assert all(c.al.rounds == 3 and c.train.epochs == 2 and c.train.ssl_options == {"temperature": 0.1}
               for c in cfgs)  # base + command-line override + nested grid key
    dirs = [c.run.dir for c in cfgs]
    assert len(set(dirs)) == 4 and all(d.startswith(str(tmp_path / "out" / "trials")) for d in dirs)
    assert dirs[0] == plan.trial_run_dir(points[0]) and trial_name(points[0]) in dirs[0]
    assert trial_name({"select.method": "random", "al.seed": 1}) == "select.method=random_al.seed=1"


def test_smoke_test_shrinks_every_trial(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"al.seed": [0, 1]}}, {"al": {"budget": 50, "rounds": 6}})
    plan = load_plan(path, smoke=True)
    cfg = plan.trial_config({"al.seed": 1})
    assert cfg == config.replace(config.smoke(config.from_dict({"al": {"budget": 50, "rounds": 6, "seed": 1}})),
                                 run={"dir": cfg.run.dir}, embed={"features_cache": cfg.embed.features_cache})
    assert plan.dir.endswith("-smoke")  # default dir: never mixed with the full sweep's trials
    # the trials share one frozen-features cache in the sweep directory, unless the base config names one
    assert cfg.embed.features_cache == storage.join(plan.dir, "features_cache")
    own = load_plan(write_sweep(tmp_path, {"grid": {"al.seed": [0, 1]}}, {"embed": {"features_cache": "/x/cache"}}))
    assert own.trial_config({"al.seed": 0}).embed.features_cache == "/x/cache"


@pytest.mark.parametrize("sweep, base, match", [
    ({"grid": {"select.methd": ["random"]}}, {}, "select.methd"),  # unknown key, named
    ({"grid": {"select.method": ["nope"]}}, {}, "nope"),  # unknown acquisition, named
    ({"grid": {"al.budget": [10, 10]}}, {}, "repeats a value"),
    ({"grid": {"al.budget": []}}, {}, "non-empty list"),
    ({"grid": {}}, {}, "sweep.grid must map"),
    ({"grid": {"al.seed": [0]}, "max_concurent_trials": 2}, {}, "sweep.max_concurent_trials"),
    ({"grid": {"al.seed": [0]}}, {"al": {"oracle": "file"}}, "al.oracle=simulated"),
    ({"grid": {"al.seed": [0]}}, {"run": {"overwrite": True}}, "run.overwrite"),
    ({"grid": {"al.seed": [0]}}, "missing.yaml", "base config 'missing.yaml' not found"),
])
def test_bad_sweep_files_fail_before_tune_with_a_clear_error(tmp_path, sweep, base, match):
    with pytest.raises(ConfigError, match=match):
        load_plan(write_sweep(tmp_path, sweep, base))


# ----------------------------------------------------------------------------- a real Tune sweep
def tensorboard_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of one TensorBoard event file (TFRecord framing + tensorboardX's Event proto)."""
    from tensorboardX.proto import event_pb2

    data, i, out = path.read_bytes(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():  # another test's Ray: a sweep starts its own (RAY_ADDRESS=local)
        ray.shutdown()


@pytest.fixture()
def fresh_ray():
    _shutdown_ray()
    yield
    _shutdown_ray()


# The Tune sweep of both tests below: two trials of two rounds each on 200 digits
TINY_BASE = {"data": {"dataset": "digits", "pool_size": 200, "test_size": 100},
             "train": {"epochs": 1, "batch_size": 32},
             "embed": {"batch_size": 128},
             "al": {"initial_size": 10, "budget": 10, "rounds": 1}}
TINY_GRID = {"select.method": ["random", "entropy"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny sweep run once, undisturbed, logging to an MLflow file store and W&B offline files (Tune's
    own callbacks): what the killed sweep must end equal to, and what the tracking test reads back.
    (out dir, MLflow store, W&B folder)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    out, store, wandb_dir = tmp / "sweep", tmp / "mlruns", tmp / "wandb_files"
    wandb_dir.mkdir()
    path = write_sweep(tmp, {"name": "tiny", "dir": str(out), "max_failures": 0, "grid": TINY_GRID}, TINY_BASE)
    _shutdown_ray()
    with pytest.MonkeyPatch.context() as env:
        for key, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(wandb_dir)), ("WANDB_SILENT", "true")):
            env.setenv(key, value)
        assert main(["--config", str(path), f"track.mlflow={store}", "track.wandb=ray-al-sweep"]) == 0
    _shutdown_ray()
    return out, store, wandb_dir


def committed_rounds(trial_dir: Path) -> dict[str, float]:
    """round directory -> mtime of its MANIFEST.json (the round's commit)."""
    return {m.parent.name: m.stat().st_mtime for m in trial_dir.glob("rounds/*/MANIFEST.json")}


def newest_event_file(trial_dir: Path) -> Path:
    """A trial restarted by --resume writes a new event file holding every round it reports again."""
    return sorted(trial_dir.glob("events.out.tfevents.*"))[-1]


# Tune's per-round scalars that depend on the rounds' results only (not on timings or the trial's process)
SAME_SCALARS = ("ray/tune/round", "ray/tune/labels", "ray/tune/accuracy", "ray/tune/auc")


def sweep_outputs(out: Path) -> dict:
    """What a sweep hands its user, without timings: rows, summaries, the plot's data and bytes, and each
    trial's TensorBoard values of SAME_SCALARS in order (the newest event file: a restarted trial writes a new
    one; its step numbers are Tune's iteration count, not compared)."""
    from ray_al.core.report import curves

    keep = ("trial", "select.method", "round", "labels", "accuracy")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    rows = sorted(({k: r[k] for k in keep} for r in rows), key=lambda r: (r["trial"], r["round"]))
    points = curves(rows, ("select.method",))
    return {
        "rows": rows, "summary.csv": sorted((out / "summary.csv").read_text().splitlines()),
        "summary.txt": (out / "summary.txt").read_text(),
        "plot data": {k: [np.asarray(a).tolist() for a in v] for k, v in points.items()},
        "learning_curves.png": (out / "learning_curves.png").read_bytes(),
        "tensorboard": {t.name: {k: [value for _, value in v]
                                 for k, v in tensorboard_scalars(newest_event_file(t)).items() if k in SAME_SCALARS}
                        for t in sorted((out / "tune" / "tiny").glob("select.method=*"))},
    }


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tune_sweep_killed_mid_trial_resumes_and_writes_tables_plot_and_tensorboard(
        tmp_path, uninterrupted, fresh_ray, capsys):
    out = tmp_path / "sweep"
    path = write_sweep(tmp_path, {"name": "tiny", "dir": str(out), "max_failures": 0, "grid": TINY_GRID}, TINY_BASE)
    # The sweep driver dies when the third round is reported (trials run one at a time): one trial
    # finished, the other killed after its round 0, while it trains round 1.
    kill_at("sweep.result", "ray_al.sweep", "--config", str(path), tmp=tmp_path, nth=3)
    trials = {m: out / "trials" / f"select.method={m}" for m in ("random", "entropy")}
    before = {m: committed_rounds(d) for m, d in trials.items()}
    assert sorted(len(r) for r in before.values()) == [1, 2], before

    # starting the same sweep again is refused; --resume restores it (Tuner.restore) without redoing a round
    assert main(["--config", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--config", str(path), "--resume"]) == 0
    for m, d in trials.items():
        after = committed_rounds(d)
        assert set(after) == {"0000", "0001"} and all(after[r] == t for r, t in before[m].items()), m

    # one row per (trial, round), read back from the trials' run directories
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["select.method"], r["round"], r["labels"]) for r in rows) == [
        ("entropy", 0, 10), ("entropy", 1, 20), ("random", 0, 10), ("random", 1, 20)]
    assert all(r["select"] == r["select.method"] and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 4 and {"trial", "round", "labels", "accuracy", "seconds_train"} <= set(table.column_names)
    # each trial's rounds went through its own run directory and ledger, each round once
    for d in trials.values():
        assert [json.loads(ln)["labels"] for ln in (d / "results.jsonl").read_text().splitlines()] == [10, 20]
    csv_lines = (out / "summary.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    summary = {c[0]: dict(zip(header, c)) for c in (line.split(",") for line in csv_lines[1:])}
    for method in ("random", "entropy"):
        last = max((r for r in rows if r["select.method"] == method), key=lambda r: r["round"])
        assert float(summary[method]["final_accuracy_mean"]) == pytest.approx(last["accuracy"])
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean +- std over seeds" in capsys.readouterr().out

    # Tune's TensorBoard files hold the same accuracies, one step per round
    for method in ("random", "entropy"):
        event_file = newest_event_file(out / "tune" / "tiny" / f"select.method={method}")
        logged = [v for _, v in tensorboard_scalars(event_file)["ray/tune/accuracy"]]
        expected = [r["accuracy"] for r in sorted((r for r in rows if r["select.method"] == method),
                                                  key=lambda r: r["round"])]
        assert logged == pytest.approx(expected, abs=1e-6)

    # and all of it as the uninterrupted sweep of the same file wrote it (the same name, another directory;
    # that one also logged to MLflow and W&B, which changes none of these)
    got, want = sweep_outputs(out), sweep_outputs(uninterrupted[0])
    assert len(want["rows"]) == 4 and len(want["tensorboard"]) == 2, want
    assert all(len(t["ray/tune/accuracy"]) == 2 for t in want["tensorboard"].values()), want["tensorboard"]
    for what in want:
        assert got[what] == want[what], f"the resumed sweep's {what} differs from an uninterrupted sweep's"

    # a changed sweep file is not resumed silently
    changed = write_sweep(tmp_path, {"name": "tiny", "dir": str(out), "grid": {"select.method": ["random"]}}, {})
    assert main(["--config", str(changed), "--resume"]) == 2


@pytest.mark.slow
def test_the_uninterrupted_sweep_logs_through_tune_callbacks(uninterrupted):
    """track.mlflow / track.wandb on a sweep (README "Tracking"): each trial is an MLflow run and a W&B
    offline run (Tune's MLflowLoggerCallback / WandbLoggerCallback) with the config as params, a metric
    per round and ray_al's results.jsonl and curve as artifacts."""
    from tests.test_track import mlflow_runs, results_rows, wandb_runs

    out, store, wandb_dir = uninterrupted
    runs = mlflow_runs(store, "tiny")  # the experiment defaults to the sweep's name
    logged = wandb_runs(wandb_dir)
    for method in ("random", "entropy"):
        name = f"select.method={method}"
        rows = results_rows(out / "trials" / name)
        run = runs[name]
        assert run["status"] == "FINISHED" and run["params"]["select.method"] == method
        assert run["params"]["al.budget"] == "10" and run["params"]["track.mlflow"] == str(store)
        assert [v for _, v in run["metrics"]["accuracy"]] == pytest.approx([r["accuracy"] for r in rows])
        assert [v for _, v in run["metrics"]["labels"]] == [10, 20] and "train_s" in run["metrics"]
        assert {"ray_al/results.jsonl", "ray_al/learning_curve.png", "result.json"} <= set(run["artifacts"])
        assert (run["artifact_dir"] / "ray_al" / "results.jsonl").read_text() == (
            out / "trials" / name / "results.jsonl").read_text()

        wb = logged[name]
        assert (wb["project"], wb["group"], wb["exit_code"]) == ("ray-al-sweep", "tiny", 0)
        assert wb["config"]["select.method"] == method and wb["config"]["al.rounds"] == 1
        accuracies = [h["accuracy"] for h in wb["history"] if "accuracy" in h]
        assert accuracies == pytest.approx([r["accuracy"] for r in rows])
        (artifact,) = wb["artifacts"].values()
        assert artifact == ["learning_curve.png", "results.jsonl"]
