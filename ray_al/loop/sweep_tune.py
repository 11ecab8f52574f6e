"""A sweep on Ray Tune: the trial (one grid point's rounds, each committed round reported to Tune), the
Tuner (new or restored), and the sweep directory's outputs. The plan comes from `sweep_plan`, the tables
from `ray_al.core.report`; this module holds the Ray Tune calls.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from ray_al.core import config as config_mod
from ray_al.core import faults, report, storage
from ray_al.core.config import ConfigError
from ray_al.loop.sweep_plan import SweepPlan, trial_name

OUTPUTS = (("jsonl", "results.jsonl"), ("parquet", "results.parquet"), ("summary_csv", "summary.csv"),
           ("summary_txt", "summary.txt"), ("png", "learning_curves.png"))


# ----------------------------------------------------------------------------- the trial
def _tune_params(grid: dict[str, list]) -> dict:
    """Tune param_space: nested dicts (select -> method -> grid_search([...])), one grid_search per key."""
    from ray import tune

    space: dict = {}
    for key, values in grid.items():
        target = space
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = tune.grid_search(values)
    return space


def _values_from_params(params: dict, grid: dict[str, list]) -> dict[str, Any]:
    out = {}
    for key in grid:
        node: Any = params
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def round_metrics(row: dict, auc: float) -> dict:
    """What a trial reports to Tune per round (numbers only: Tune's TensorBoard logger plots them)."""
    seconds = row.get("seconds", {})
    out = {"round": int(row["round"]), "labels": int(row["labels"]), "accuracy": float(row["accuracy"]),
           "auc": float(auc)}
    out.update({f"{stage}_s": float(v) for stage, v in seconds.items()})
    return out


def run_trial(params: dict, plan: SweepPlan) -> None:
    """Tune function trainable: the AL rounds of one grid point, each committed round reported to Tune."""
    import ray.data

    from ray_al.loop.rounds import open_run
    from ray_al.run.runlock import RunLock

    # Progress bars of trials interleave into noise in the driver's output; rounds are logged as rows.
    ray.data.DataContext.get_current().enable_progress_bars = False
    values = _values_from_params(params, plan.grid)
    cfg = plan.trial_config(values)
    with RunLock(cfg.run.dir, purpose="sweep trial") as lock:
        run, pool, cfg = open_run(cfg, cfg.run.dir, resume=False)  # same config: carries on where it stopped
        lock.renew()
        _run_rounds(run, pool, cfg, trial_name(values))


def _run_rounds(run, pool, cfg, name: str) -> None:
    """The trial's rounds, each committed round reported to Tune (again for those committed before a restart)."""
    from ray import tune

    from ray_al.loop.rounds import Cycle, finish

    history: list[dict] = []

    def report_round(row: dict) -> None:  # after the round's commit, so a reported round is durable
        history.append(row)
        auc = report.area_under_curve([r["labels"] for r in history], [r["accuracy"] for r in history])
        tune.report(round_metrics(row, auc))

    for row in run.results():  # rounds committed before this (re)start: report them again, in order
        report_round(row)
    log = lambda m: print(f"[{name}] {m}", flush=True)  # noqa: E731
    Cycle(cfg, run, pool, log=log, on_round_committed=report_round).run_all()
    finish(run, log=log)


# ----------------------------------------------------------------------------- results
def collect_rows(plan: SweepPlan) -> list[dict]:
    """One row per (trial, committed round), read from the trials' run directories (the source of truth)."""
    from ray_al.run.rundir import RunDir

    rows = []
    for values in plan.points():
        uri = plan.trial_run_dir(values)
        if not storage.exists(storage.join(uri, "run.json")):
            continue
        for row in RunDir(uri).results():
            rows.append({"trial": trial_name(values), **values, **row})
    return rows


def write_outputs(plan: SweepPlan, rows: list[dict], log=print) -> dict[str, str]:
    """results.jsonl/.parquet, summary.csv/.txt and learning_curves.png in the sweep directory."""
    out = {k: storage.join(plan.dir, f) for k, f in OUTPUTS}
    storage.write_text_atomic(out["jsonl"], "".join(json.dumps(r, sort_keys=True, default=storage._json_default)
                                                    + "\n" for r in rows))
    if not rows:
        log("no trial committed a round yet: nothing to tabulate.")
        return out
    storage.write_bytes_atomic(out["parquet"], report.parquet_bytes(rows))
    text, csv = report.sweep_summary(rows, plan.grid)
    storage.write_text_atomic(out["summary_txt"], text + "\n")
    storage.write_text_atomic(out["summary_csv"], csv)
    group_by = tuple(report.setting_keys(plan.grid)) or ("select",)
    title = f"{plan.name}: accuracy vs labels (mean +- std over seeds)"
    storage.write_bytes_atomic(out["png"], report.learning_curve_png(rows, title, group_by=group_by))
    log("\n" + text)
    log("\n" + "\n".join(f"{k + ':':13} {v}" for k, v in out.items())
        + f"\ntensorboard:  tensorboard --logdir {storage.join(plan.dir, 'tune')}")
    return out


# ----------------------------------------------------------------------------- Tune
def _trainable(plan: SweepPlan):
    from ray import tune

    resources: dict[str, float] = {"memory": plan.trial_memory_mb * 2**20}
    if plan.trial_cpus:
        resources["CPU"] = plan.trial_cpus
    if plan.trial_gpus:
        resources["GPU"] = plan.trial_gpus
    resources = {k: v for k, v in resources.items() if v}
    return tune.with_resources(tune.with_parameters(run_trial, plan=plan), resources)


def _storage(plan: SweepPlan) -> tuple[Any, str]:
    """(pyarrow filesystem or None, path) of the Tune storage under the sweep directory."""
    uri = storage.join(plan.dir, "tune")
    if storage.is_s3(uri):
        return storage.pyarrow_fs(uri)
    return None, uri


def _check_same_sweep(plan: dict, saved: dict) -> None:
    diff = sorted(k for k in set(plan) | set(saved) if plan.get(k) != saved.get(k))
    if diff:
        raise ConfigError(f"--resume: this sweep file differs from the one the sweep in {plan['dir']} was started "
                          f"with (in {diff}). Resume with the same file and overrides, or start a new sweep "
                          "(another sweep.dir).")


def run_sweep(plan: SweepPlan, resume: bool = False, log=print) -> tuple[list[dict], int]:
    """Run (or resume) the Tune experiment, then write the tables; returns (rows, number of errored trials)."""
    # Trials must see the working directory the paths were written for, not their Tune trial directory.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    tuner = _restored_tuner(plan) if resume else _new_tuner(plan)
    started = time.perf_counter()
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    log(f"\nsweep '{plan.name}': {len(grid)} trials in {time.perf_counter() - started:.0f} s, "
        f"{len(errors)} errored")
    for e in errors:
        log(f"  trial error: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
    rows = collect_rows(plan)
    write_outputs(plan, rows, log=log)
    return rows, len(errors)


def _restored_tuner(plan: SweepPlan):
    """Tuner.restore of the sweep's experiment, after checking the sweep file is the one it started with."""
    from ray import tune

    fs, path = _storage(plan)
    plan_uri = storage.join(plan.dir, "sweep.json")
    if not storage.exists(plan_uri):
        raise ConfigError(f"--resume: no sweep was started in {plan.dir} ({plan_uri} is missing); run "
                          "without --resume to start it.")
    _check_same_sweep(plan.to_json(), storage.read_json(plan_uri))
    exp_path = f"{path.rstrip('/')}/{plan.name}"  # with an S3 filesystem Tune wants the path without scheme
    if not tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        raise ConfigError(f"--resume: no Tune experiment to restore at "
                          f"{storage.join(plan.dir, 'tune', plan.name)}; run without --resume.")
    return tune.Tuner.restore(exp_path, trainable=_trainable(plan), resume_errored=True, storage_filesystem=fs)


def _new_tuner(plan: SweepPlan):
    from ray import tune

    plan_uri = storage.join(plan.dir, "sweep.json")
    if storage.exists(plan_uri):
        raise ConfigError(f"{plan.dir} already holds a sweep: add --resume to continue it (finished trials "
                          "are kept), or choose another sweep.dir / delete that directory to start over.")
    storage.makedirs(plan.dir)
    storage.write_json_atomic(plan_uri, plan.to_json())
    fs, path = _storage(plan)
    name_of = lambda t: trial_name(_values_from_params(t.config, plan.grid))  # noqa: E731
    config_of = lambda t: plan.trial_config(_values_from_params(t.config, plan.grid))  # noqa: E731
    return tune.Tuner(
        _trainable(plan),
        param_space=_tune_params(plan.grid),
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent_trials or None,
                                    trial_name_creator=name_of, trial_dirname_creator=name_of),
        run_config=tune.RunConfig(name=plan.name, storage_path=path, storage_filesystem=fs, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                  callbacks=_kill_point_callbacks() + _track_callbacks(plan, config_of)),
    )


def _track_callbacks(plan: SweepPlan, config_of) -> list:
    """Ray Tune's MLflow / W&B logger callbacks for the base config's track.* keys (ray_al.workers.tune_track)."""
    from ray_al.workers.tune_track import tune_callbacks

    return tune_callbacks(config_mod.from_dict(plan.base).track, plan.name, config_of)


def _kill_point_callbacks() -> list:
    """The sweep driver's fault-drill kill point (`ray_al.core.faults`) at each round a trial reports; none
    unless a drill arms it."""
    from ray import tune

    if faults.armed("sweep.result") is None:
        return []

    class KillPoint(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            faults.kill_point("sweep.result")

    return [KillPoint()]
