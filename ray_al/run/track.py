"""Experiment tracking of a `cycle` run in MLflow and/or Weights & Biases (config keys track.*, README
"Tracking"). Sweeps log through Ray Tune's own callbacks instead (ray_al.workers.tune_track).

    with Tracker.of(cfg, run.uri, past=run.results()) as tracker:
        Cycle(cfg, run, spec, on_round_committed=tracker.round).run_all()
        finish(run)

Each tracking run gets the config as params (`section.key`), one step per committed round (labels,
accuracy, seconds per stage as `<stage>_s`, the method that selected and why) and, at the end,
results.jsonl and learning_curve.png as artifacts. mlflow and wandb are imported only when their key is set
(optional extra `track`). No Ray here.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ray_al.core import storage
from ray_al.core.config import Config, ConfigError, TrackConfig

ARTIFACTS = ("results.jsonl", "learning_curve.png")  # written by ray_al.loop.rounds.finish
DEFAULT_EXPERIMENT = "ray_al"


def flat_params(cfg: Config) -> dict[str, Any]:
    """The config as `section.key` -> value; lists and option dicts as JSON text (params are scalars)."""
    out: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            out[f"{section}.{key}"] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    return out


def round_metrics(row: dict) -> dict[str, float]:
    """A results.jsonl row's numbers, named as a sweep reports them to Tune (`train_s`, ...)."""
    out = {"labels": float(row["labels"]), "accuracy": float(row["accuracy"]),
           "corrupt": float(row.get("corrupt", 0))}
    out.update({f"{stage}_s": float(v) for stage, v in (row.get("seconds") or {}).items()})
    return out


def mlflow_uri(uri: str) -> str:
    """track.mlflow as MLflow wants it: a bare directory becomes absolute (the run may chdir). MLflow >= 3.7
    refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set; a user who names a directory asked for it."""
    if "://" in uri and not uri.startswith("file:"):
        return uri  # http(s)://, databricks://, sqlite:/// (needs the full mlflow package)
    if not uri.startswith("file:"):
        uri = os.path.abspath(uri)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def wandb_init_kwargs() -> dict:
    """WANDB_MODE / WANDB_DIR of this process, passed on explicitly: Tune's W&B actors and a run that chdirs
    should log where the user asked."""
    return {k: os.environ[env] for k, env in (("mode", "WANDB_MODE"), ("dir", "WANDB_DIR")) if os.environ.get(env)}


def _import(module: str, key: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ConfigError(f"{key} is set but {module.split('.')[0]} is not installed: pip install "
                          f"'ray_al[track]' (or clear {key}).") from exc


class _Mlflow:
    def __init__(self, track: TrackConfig, name: str, params: dict, tags: dict):
        client_mod = _import("mlflow.tracking", "track.mlflow")
        entities = _import("mlflow.entities", "track.mlflow")
        self.client = client_mod.MlflowClient(tracking_uri=mlflow_uri(track.mlflow))
        experiment = track.experiment or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        items = [entities.Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def round(self, row: dict) -> None:
        step = int(row["round"])
        for key, value in round_metrics(row).items():
            self.client.log_metric(self.run_id, key, value, step=step)
        if "selected_by" in row:  # text: tags, one pair per round (the last round selects nothing)
            self.client.set_tag(self.run_id, f"round.{step}.selected_by", str(row["selected_by"]))
            self.client.set_tag(self.run_id, f"round.{step}.why", str(row.get("why", "")) or "-")

    def end(self, files: list[str], ok: bool) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class _Wandb:
    def __init__(self, track: TrackConfig, name: str, params: dict, tags: dict):
        self.wandb = _import("wandb", "track.wandb")
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        self.run = self.wandb.init(project=track.wandb, group=track.experiment or None, name=name, config=params,
                                   notes=f"run directory {tags['run_dir']}",  # W&B tags hold <= 64 chars
                                   tags=["resumed"] if tags["resumed"] == "true" else None, reinit="create_new",
                                   **wandb_init_kwargs())

    def round(self, row: dict) -> None:
        text = {k: str(row[k]) for k in ("selected_by", "why") if k in row}
        self.run.log({"round": int(row["round"]), **round_metrics(row), **text}, step=int(row["round"]))

    def end(self, files: list[str], ok: bool) -> None:
        if files:
            artifact = self.wandb.Artifact(f"{self.name}-results", type="results")
            for path in files:
                artifact.add_file(path)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if ok else 1)


class Tracker:
    """The tracking runs of one cycle run; a no-op when no track.* key is set."""

    def __init__(self, sinks: list, run_uri: str):
        self.sinks, self.run_uri = sinks, run_uri

    @classmethod
    def of(cls, cfg: Config, run_uri: str, past: list[dict] = ()) -> "Tracker":
        """Open the configured tracking runs and log the rounds committed before (a resumed run)."""
        name = Path(run_uri.rstrip("/")).name or "run"
        params, tags = flat_params(cfg), {"run_dir": run_uri, "resumed": str(bool(past)).lower()}
        sinks: list = []
        if cfg.track.mlflow:
            sinks.append(_Mlflow(cfg.track, name, params, tags))
        if cfg.track.wandb:
            sinks.append(_Wandb(cfg.track, name, params, tags))
        tracker = cls(sinks, run_uri)
        for row in past:
            tracker.round(row)
        return tracker

    def round(self, row: dict) -> None:
        """Cycle's on_round_committed hook: one step per committed round."""
        for sink in self.sinks:
            sink.round(row)

    def close(self, ok: bool = True) -> None:
        """Log results.jsonl and learning_curve.png (those the run has) and end the tracking runs."""
        if not self.sinks:
            return
        with tempfile.TemporaryDirectory(prefix="ray_al_track_") as tmp:
            files = []
            for name in ARTIFACTS:  # the run directory may be on S3: copied locally for the trackers
                uri = storage.join(self.run_uri, name)
                if ok and storage.exists(uri):
                    files.append(os.path.join(tmp, name))
                    Path(files[-1]).write_bytes(storage.read_bytes(uri))
            for sink in self.sinks:
                sink.end(files, ok)
        self.sinks = []

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
