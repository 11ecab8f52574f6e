"""Experiment tracking of a sweep through Ray Tune's own MLflowLoggerCallback and WandbLoggerCallback.

Tune gives each trial one tracking run: its reported rounds as metrics (one step per round, see
ray_al.sweep.round_metrics) and its grid values as params. The subclasses here add what a `cycle` run's
tracker (ray_al.run.track) logs too: the trial's whole config as `section.key` params, and its run
directory's results.jsonl and learning_curve.png (which also hold each round's `selected_by` and `why`)
as artifacts when the trial ends.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Callable

from ray_al.core import storage
from ray_al.core.config import Config, TrackConfig
from ray_al.run.track import ARTIFACTS, flat_params, mlflow_uri, wandb_init_kwargs

ARTIFACT_DIR = "ray_al"  # under the trial's driver-side directory


def tune_callbacks(track: TrackConfig, sweep_name: str, trial_config: Callable[..., Config]) -> list:
    """Tune callbacks for the track.* keys of the sweep's base config ([] when none is set).

    `trial_config(trial)` is the trial's resolved Config (its run.dir holds the files to log)."""
    callbacks: list = []
    experiment = track.experiment or sweep_name
    if track.mlflow:
        callbacks.append(_mlflow_callback(mlflow_uri(track.mlflow), experiment, trial_config))
    if track.wandb:
        callbacks.append(_wandb_callback(track.wandb, experiment, trial_config))
    return callbacks


def _copy_artifacts(cfg: Config, local_dir: str) -> str:
    """The trial's results.jsonl and learning curve, copied from its run directory (local or S3) into
    local_dir/ray_al/; returns that directory."""
    out = os.path.join(local_dir, ARTIFACT_DIR)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in ARTIFACTS:
        uri = storage.join(cfg.run.dir, name)
        if storage.exists(uri):
            with open(os.path.join(out, name), "wb") as f:
                f.write(storage.read_bytes(uri))
    return out


def _mlflow_callback(uri: str, experiment: str, trial_config: Callable[..., Config]):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class TrialConfigMLflow(MLflowLoggerCallback):
        def log_trial_start(self, trial) -> None:
            super().log_trial_start(trial)
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=flat_params(trial_config(trial)))

        def log_trial_end(self, trial, failed: bool = False) -> None:
            _copy_artifacts(trial_config(trial), trial.local_path)  # save_artifact uploads trial.local_path
            super().log_trial_end(trial, failed=failed)

    return TrialConfigMLflow(tracking_uri=uri, experiment_name=experiment, save_artifact=True)


def _wandb_callback(project: str, group: str, trial_config: Callable[..., Config]):
    from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

    class ResultsActor(_WandbLoggingActor):
        def run(self):
            super().run()  # ends with wandb.finish()
            # Tune kills this actor as soon as run() returns; W&B's service writes the run's last records (its
            # exit code) after finish() returns, so wait for it to shut down (an offline run of a CI sweep
            # under load was left without its exit record)
            self._wandb.teardown()

        def _handle_checkpoint(self, checkpoint_path: str) -> None:  # here: the trial's results directory
            name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self._trial_name}-results")  # W&B's allowed characters
            artifact = self._wandb.Artifact(name=name, type="results")
            artifact.add_dir(checkpoint_path)
            self._wandb.log_artifact(artifact)

    class TrialConfigWandb(WandbLoggerCallback):
        _logger_actor_cls = ResultsActor

        def log_trial_start(self, trial) -> None:
            # wandb.init(config=...) comes from self.kwargs last: the whole config, not only the grid values
            self.kwargs = {**self.kwargs, "config": flat_params(trial_config(trial))}
            super().log_trial_start(trial)

        def log_trial_end(self, trial, failed: bool = False) -> None:
            if trial in self._trial_queues:  # the actor logs it as an artifact before wandb.finish
                folder = _copy_artifacts(trial_config(trial), trial.local_path)
                self._trial_queues[trial].put((_QueueItem.CHECKPOINT, folder))
            super().log_trial_end(trial, failed=failed)

    return TrialConfigWandb(project=project, group=group, **wandb_init_kwargs())
