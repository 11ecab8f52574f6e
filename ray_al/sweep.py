"""`python -m ray_al.sweep`: Ray Tune over a grid of experiment settings (methods x budgets x seeds).

    python -m ray_al.sweep --config configs/sweep_digits.yaml [section.key=value ...] [--smoke-test] [--resume]

Sweep file (YAML), two top-level keys:

```yaml
sweep:
  name: digits-methods            # Tune experiment name (default: the file name without .yaml)
  dir: runs/sweeps/digits         # sweep directory, local or s3:// (default: runs/sweeps/<name>)
  grid:                           # dotted config keys -> values; every combination is one trial
    select.method: [random, entropy, kcenter]
    al.budget: [20, 40]
    al.seed: [0, 1]               # seed keys (al.seed, train.seed_offset) are averaged over in the summary;
                                  # train.seed_offset varies the training seeds only (same seed set)
  max_concurrent_trials: 1        # trials at once (default 1; see "Resources" below)
  max_failures: 1                 # Tune retries of a failed trial; a retry resumes from the trial's ledger
  trial_cpus: 0                   # CPUs the trial's own process reserves (default 0)
  trial_gpus: 0
  trial_memory_mb: 512            # memory the trial reserves (Ray needs a non-empty request)
base: configs/default.yaml        # the config every trial starts from: a path (relative to the sweep
                                  # file, then to the working directory) ...
# base:                           # ... or inline sections, as in any config file
#   data: {dataset: digits}
#   al: {rounds: 4, initial_size: 20}
```

`section.key=value` arguments on the command line override the base before the grid is applied;
`--smoke-test` applies `ray_al.core.config.smoke` to every trial (note: it caps al.budget at 20).

Each trial builds its Config (base + grid values), runs the active-learning rounds with the round loop
(`ray_al.loop.rounds`: `open_run` + `Cycle`, whose Ray Train `TorchTrainer` and Ray Data actors are started from
inside the trial), and reports every committed round to Tune with `ray.tune.report` (round, labels,
accuracy, area under the curve so far, seconds per stage). Each trial has its own run directory
`SWEEP_DIR/trials/<key=value_...>`, so a restarted trial (`--resume`, or a Tune retry) continues at its
first unfinished step through the ledger instead of starting over.

Resources: a trial is a coordinator. Its heavy work runs in the Ray Train workers (their own placement
group) and in Ray Data tasks and actors (SPREAD scheduling), which request their own CPUs/GPUs
(train.cpus_per_worker, embed.cpus_per_actor, ...) outside the trial's reservation, so by default the
trial reserves only memory (Tune needs a non-empty request). Concurrency is therefore set by
`max_concurrent_trials`: keep it at 1 on a 2-CPU machine, where two trials would each hold a Train
worker's CPU and starve each other's Ray Data tasks; on a cluster raise it to the number of trials
the workers fit, and the autoscaler adds nodes for the pending workers.

Outputs in SWEEP_DIR:
  results.jsonl, results.parquet   one row per (trial, round) (read from the trials' run directories,
                                   so a resumed trial never duplicates rows), grid keys as columns
  summary.csv, summary.txt         final accuracy and area under the learning curve per trial, and their
                                   mean +- std over seeds per setting (AUC also +- standard error); the
                                   accuracy at each labelled-set size per setting, mean +- standard error
  learning_curves.png              accuracy vs labels, mean +- std over seeds, one curve per setting
  tune/<name>/                     Tune's experiment (trial results, TensorBoard event files:
                                   `tensorboard --logdir SWEEP_DIR/tune`)
  sweep.json                       the resolved sweep (base config, grid), checked again by --resume

`--resume` restores the Tune experiment with `Tuner.restore` (unfinished and errored trials run again;
finished ones are kept) and rebuilds the tables.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ray_al.core import config as config_mod
from ray_al.core import faults, storage
from ray_al.cli import experiment_parser, run_main
from ray_al.core.config import Config, ConfigError

SWEEP_KEYS = ("name", "dir", "grid", "max_concurrent_trials", "max_failures", "trial_cpus", "trial_gpus",
              "trial_memory_mb")
SEED_KEYS = ("al.seed", "train.seed_offset")
# Columns the cycle already writes for some grid keys (used for readable curve names).
_ROW_COLUMNS = {"select.method": "select", "al.budget": "budget", "al.seed": "seed", "train.method": "method",
                "train.mode": "mode", "data.dataset": "dataset"}


# ----------------------------------------------------------------------------- the sweep spec
def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False) -> dict:
    """Read a sweep YAML into a plain spec dict (JSON-able): name, dir, grid, base (raw sections), ...

    Every grid combination is built into a Config and checked here, so a typo fails before Tune starts.
    """
    sweep, base = _read_sweep_file(path)
    name = str(sweep.get("name") or Path(path).stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"sweep.name '{name}' may hold only letters, digits, '_', '-' and '.'.")
    spec = {
        "name": name, "dir": _sweep_dir(sweep, name, smoke), "grid": _check_grid(sweep.get("grid"), path),
        "base": config_mod.apply_overrides(_base_sections(base, Path(path)), overrides), "smoke": bool(smoke),
        "max_concurrent_trials": _int(sweep, "max_concurrent_trials", 1, 0),
        "max_failures": _int(sweep, "max_failures", 1, 0),
        "trial_cpus": _num(sweep, "trial_cpus", 0.0), "trial_gpus": _num(sweep, "trial_gpus", 0.0),
        "trial_memory_mb": _num(sweep, "trial_memory_mb", 512.0),
    }
    if spec["trial_cpus"] == 0 and spec["trial_gpus"] == 0 and spec["trial_memory_mb"] <= 0:
        raise ConfigError("a trial must reserve something: set sweep.trial_memory_mb > 0 (or trial_cpus).")
    for values in combinations(spec["grid"]):
        trial_config(spec, values)  # raises ConfigError naming the bad key/value
    return spec


def _read_sweep_file(path: str | Path) -> tuple[dict, Any]:
    """(the `sweep:` section, the raw `base:`) of a sweep file, its top-level keys checked."""
    raw = config_mod.read_yaml(path, "sweep file", "The shipped sweeps are in configs/ (sweep_*.yaml).")
    if not isinstance(raw, dict) or "sweep" not in raw:
        raise ConfigError(f"sweep file '{path}' needs a top-level 'sweep:' section (with a 'grid:') and a "
                          "'base:' (a config path or inline sections); see `python -m ray_al.sweep --help`.")
    unknown = sorted(set(raw) - {"sweep", "base"})
    if unknown:
        raise ConfigError(f"sweep file '{path}': unknown top-level keys {unknown}; valid: sweep, base.")
    sweep = raw["sweep"] or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep file '{path}': 'sweep' must be a mapping.")
    bad = sorted(set(sweep) - set(SWEEP_KEYS))
    if bad:
        raise ConfigError(f"sweep file '{path}': unknown keys {['sweep.' + b for b in bad]}; valid: "
                          f"{', '.join('sweep.' + k for k in SWEEP_KEYS)}.")
    return sweep, raw.get("base")


def _sweep_dir(sweep: dict, name: str, smoke: bool) -> str:
    sweep_dir = str(sweep.get("dir") or Path("runs") / "sweeps" / name)
    if smoke and not sweep.get("dir"):
        sweep_dir += "-smoke"  # never mixed with the full sweep's trials
    if not storage.is_s3(sweep_dir):
        sweep_dir = os.path.abspath(sweep_dir)  # Tune storage and the trial processes need absolute paths
    return sweep_dir


def _int(section: dict, key: str, default: int, minimum: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"sweep.{key} must be an integer >= {minimum}, got {value!r}.")
    return value


def _num(section: dict, key: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"sweep.{key} must be a number >= 0, got {value!r}.")
    return float(value)


def _base_sections(base: Any, sweep_path: Path) -> dict:
    """The base config as raw sections: a path to a config YAML or inline sections."""
    if base is None:
        return {}
    if isinstance(base, str):
        candidates = [sweep_path.parent / base, Path(base)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"base config '{base}' not found (looked in {sweep_path.parent} and the working "
                              "directory).")
        base = config_mod.read_yaml(found, "base config")
    if not isinstance(base, dict):
        raise ConfigError("'base' must be a config path or a mapping of sections (data, model, train, ...).")
    config_mod.from_dict(base)  # unknown sections/keys fail here, naming the key
    return {k: dict(v or {}) for k, v in base.items()}


def _check_grid(grid: Any, path: Any) -> dict[str, list]:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"sweep file '{path}': sweep.grid must map dotted config keys to lists of values, e.g. "
                          "{'select.method': [random, entropy], 'al.seed': [0, 1]}.")
    out = {}
    for key, values in grid.items():
        if not isinstance(key, str) or key.count(".") < 1:
            raise ConfigError(f"sweep.grid key {key!r} must be a dotted config key like al.budget.")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid['{key}'] must be a non-empty list of values, got {values!r}.")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"sweep.grid['{key}'] repeats a value ({values}); each trial needs its own setting.")
        out[key] = values
    return out


def combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every grid point as {dotted key: value}, in a fixed order (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    section, rest = key.split(".", 1)
    target = raw.setdefault(section, {})
    *parents, leaf = rest.split(".")
    for p in parents:  # nested option, e.g. train.ssl_options.temperature
        target = target.setdefault(p, {})
        if not isinstance(target, dict):
            raise ConfigError(f"sweep.grid key '{key}': '{p}' is not a mapping option.")
    target[leaf] = value


def trial_name(values: dict[str, Any]) -> str:
    """Directory-safe, readable and stable: select.method=random_al.budget=20_al.seed=0."""
    parts = [f"{k}={v}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(parts))


def trial_run_dir(spec: dict, values: dict[str, Any]) -> str:
    return storage.join(spec["dir"], "trials", trial_name(values))


def trial_config(spec: dict, values: dict[str, Any]) -> Config:
    """The Config of one grid point: base + grid values (+ smoke), with its own run directory."""
    from ray_al.loop.rounds import check_config

    raw = copy.deepcopy(spec["base"])
    for key, value in values.items():
        _set_dotted(raw, key, value)
    cfg = config_mod.from_dict(raw)
    if spec["smoke"]:
        cfg = config_mod.smoke(cfg)
    if cfg.run.overwrite:
        raise ConfigError("run.overwrite=true would wipe each trial's run directory when it restarts; a sweep "
                          "resumes trials from their ledgers. To start over, delete the sweep directory or "
                          "choose another sweep.dir.")
    if cfg.al.oracle != "simulated":
        raise ConfigError(f"al.oracle={cfg.al.oracle}: a sweep needs al.oracle=simulated (nobody answers "
                          "file-oracle queries inside a Tune trial).")
    cfg = config_mod.replace(cfg, run={"dir": trial_run_dir(spec, values)})
    check_config(cfg)
    return cfg


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


def run_trial(params: dict, spec: dict) -> None:
    """Tune function trainable: the AL rounds of one grid point, each committed round reported to Tune."""
    import ray.data

    from ray_al.loop.rounds import open_run
    from ray_al.run.runlock import RunLock

    # Progress bars of trials interleave into noise in the driver's output; rounds are logged as rows.
    ray.data.DataContext.get_current().enable_progress_bars = False
    values = _values_from_params(params, spec["grid"])
    cfg = trial_config(spec, values)
    with RunLock(cfg.run.dir, purpose="sweep trial") as lock:
        run, pool, cfg = open_run(cfg, cfg.run.dir, resume=False)  # same config: carries on where it stopped
        lock.renew()
        _run_rounds(run, pool, cfg, trial_name(values))


def _run_rounds(run, pool, cfg, name: str) -> None:
    """The trial's rounds, each committed round reported to Tune (again for those committed before a restart)."""
    from ray import tune

    from ray_al.loop.rounds import Cycle, finish
    from ray_al.core.report import area_under_curve

    history: list[dict] = []

    def report(row: dict) -> None:  # after the round's commit, so a reported round is durable
        history.append(row)
        auc = area_under_curve([r["labels"] for r in history], [r["accuracy"] for r in history])
        tune.report(round_metrics(row, auc))

    for row in run.results():  # rounds committed before this (re)start: report them again, in order
        report(row)
    log = lambda m: print(f"[{name}] {m}", flush=True)  # noqa: E731
    Cycle(cfg, run, pool, log=log, on_round_committed=report).run_all()
    finish(run, log=log)


# ----------------------------------------------------------------------------- results
def collect_rows(spec: dict) -> list[dict]:
    """One row per (trial, committed round), read from the trials' run directories (the source of truth)."""
    from ray_al.run.rundir import RunDir

    rows = []
    for values in combinations(spec["grid"]):
        uri = trial_run_dir(spec, values)
        if not storage.exists(storage.join(uri, "run.json")):
            continue
        for row in RunDir(uri).results():
            rows.append({"trial": trial_name(values), **values, **row})
    return rows


def _setting_keys(grid: dict) -> list[str]:
    return [k for k in grid if k not in SEED_KEYS]


def _seed_of(row: dict, grid: dict) -> str:
    return ",".join(str(row.get(k)) for k in grid if k in SEED_KEYS) or "-"


def summarize(rows: list[dict], grid: dict) -> tuple[list[dict], list[dict]]:
    """(per trial: final accuracy and AUC; per setting: their mean and std over seeds)."""
    from ray_al.core.report import area_under_curve

    by_trial: dict[str, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial"], []).append(r)
    setting_keys = _setting_keys(grid)
    per_trial = []
    for trial, trows in by_trial.items():
        trows = sorted(trows, key=lambda r: r["round"])
        per_trial.append({
            **{k: trows[0].get(k) for k in setting_keys}, "seed": _seed_of(trows[0], grid), "trial": trial,
            "rounds": len(trows), "final_labels": trows[-1]["labels"], "final_accuracy": trows[-1]["accuracy"],
            "auc": area_under_curve([r["labels"] for r in trows], [r["accuracy"] for r in trows]),
        })
    groups: dict[tuple, list[dict]] = {}
    for t in per_trial:
        groups.setdefault(tuple(json.dumps(t[k]) for k in setting_keys), []).append(t)
    per_setting = []
    for members in groups.values():
        acc = [m["final_accuracy"] for m in members]
        auc = [m["auc"] for m in members]
        per_setting.append({
            **{k: members[0][k] for k in setting_keys}, "seeds": len(members),
            "final_labels": max(m["final_labels"] for m in members),
            "final_accuracy_mean": _mean(acc), "final_accuracy_std": _std(acc),
            "auc_mean": _mean(auc), "auc_std": _std(auc), "auc_se": _se(auc),
        })
    return per_trial, per_setting


def per_budget(rows: list[dict], grid: dict) -> list[dict]:
    """Accuracy at each labelled-set size per setting: mean and standard error over seeds (the
    comparison users read: is a method above random at the budgets they have?)."""
    keys = _setting_keys(grid)
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((tuple(json.dumps(r.get(k)) for k in keys), int(r["labels"])), []).append(
            float(r["accuracy"]))
    out = []
    for (setting, labels), acc in sorted(groups.items()):
        out.append({**{k: json.loads(v) for k, v in zip(keys, setting)}, "labels": labels, "seeds": len(acc),
                    "accuracy_mean": _mean(acc), "accuracy_se": _se(acc)})
    return out


def format_per_budget(table: list[dict], grid: dict) -> str:
    """Settings as rows, labelled-set sizes as columns: mean +- standard error of the accuracy."""
    keys = _setting_keys(grid)
    sizes = sorted({t["labels"] for t in table})
    cells: dict[tuple, dict[int, str]] = {}
    for t in table:
        cells.setdefault(tuple(str(t.get(k)) for k in keys), {})[t["labels"]] = (
            f"{t['accuracy_mean']:.3f}+-{t['accuracy_se']:.3f}")
    width = max([len(" / ".join(s)) for s in cells] + [len(" / ".join(keys))])
    lines = ["accuracy by labels, mean +- standard error over seeds:",
             f"{' / '.join(keys):<{width}}  " + "  ".join(f"{n:>13}" for n in sizes)]
    lines.append("-" * len(lines[-1]))
    for setting in sorted(cells):
        lines.append(f"{' / '.join(setting):<{width}}  " + "  ".join(f"{cells[setting].get(n, '-'):>13}"
                                                                     for n in sizes))
    return "\n".join(lines)


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return float(math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)))  # population std, as report.curves


def _se(xs: list[float]) -> float:
    """Standard error of the mean (sample std / sqrt(n)); 0 for a single seed."""
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return float(math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)))


def format_summary(per_trial: list[dict], per_setting: list[dict], grid: dict) -> str:
    keys = _setting_keys(grid)
    widths = {k: max([len(k)] + [len(str(t.get(k))) for t in per_trial]) for k in keys}
    head = "  ".join(f"{k:>{widths[k]}}" for k in keys)
    lines = ["per trial (final = last committed round):",
             f"{head}  {'seed':>6}  {'rounds':>6}  {'labels':>6}  {'final acc':>9}  {'AUC':>6}"]
    lines.append("-" * len(lines[-1]))
    for t in sorted(per_trial, key=lambda t: [str(t.get(k)) for k in keys] + [t["seed"]]):
        cells = "  ".join(f"{t.get(k)!s:>{widths[k]}}" for k in keys)
        lines.append(f"{cells}  {t['seed']:>6}  {t['rounds']:>6}  {t['final_labels']:>6}  "
                     f"{t['final_accuracy']:9.4f}  {t['auc']:6.4f}")
    lines += ["", "mean +- std over seeds:",
              f"{head}  {'seeds':>5}  {'labels':>6}  {'final accuracy':>16}  {'AUC':>16}"]
    lines.append("-" * len(lines[-1]))
    for s in sorted(per_setting, key=lambda s: [str(s.get(k)) for k in keys]):
        cells = "  ".join(f"{s.get(k)!s:>{widths[k]}}" for k in keys)
        lines.append(f"{cells}  {s['seeds']:>5}  {s['final_labels']:>6}  "
                     f"{s['final_accuracy_mean']:7.4f} +- {s['final_accuracy_std']:6.4f}  "
                     f"{s['auc_mean']:7.4f} +- {s['auc_std']:6.4f}")
    return "\n".join(lines)


def _flat_row(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k != "seconds"}
    out.update({f"seconds_{stage}": float(v) for stage, v in (row.get("seconds") or {}).items()})
    return out


def _results_table(rows: list[dict]):
    """pyarrow table of the flat rows; a column with mixed value types (grid of 0.1 and 1) becomes text."""
    import pyarrow as pa

    flat = [_flat_row(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    arrays = {}
    for c in columns:
        values = [r.get(c) for r in flat]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else str(v) for v in values]
        arrays[c] = pa.array(values)
    return pa.table(arrays)


def write_outputs(spec: dict, rows: list[dict], log=print) -> dict[str, str]:
    """results.jsonl/.parquet, summary.csv/.txt and learning_curves.png in the sweep directory."""
    from ray_al.core.report import learning_curve_png

    out = {k: storage.join(spec["dir"], f) for k, f in (
        ("jsonl", "results.jsonl"), ("parquet", "results.parquet"), ("summary_csv", "summary.csv"),
        ("summary_txt", "summary.txt"), ("png", "learning_curves.png"))}
    storage.write_text_atomic(out["jsonl"], "".join(json.dumps(r, sort_keys=True, default=storage._json_default)
                                                    + "\n" for r in rows))
    if not rows:
        log("no trial committed a round yet: nothing to tabulate.")
        return out
    storage.write_bytes_atomic(out["parquet"], _parquet_bytes(_results_table(rows)))
    per_trial, per_setting = summarize(rows, spec["grid"])
    text = format_summary(per_trial, per_setting, spec["grid"]) + "\n\n" + format_per_budget(
        per_budget(rows, spec["grid"]), spec["grid"])
    storage.write_text_atomic(out["summary_txt"], text + "\n")
    storage.write_text_atomic(out["summary_csv"], _csv_text(per_setting))
    group_by = tuple(_setting_keys(spec["grid"])) or ("select",)
    title = f"{spec['name']}: accuracy vs labels (mean +- std over seeds)"
    storage.write_bytes_atomic(out["png"], learning_curve_png(rows, title, group_by=group_by))
    log("\n" + text)
    log("\n" + "\n".join(f"{k + ':':13} {v}" for k, v in out.items())
        + f"\ntensorboard:  tensorboard --logdir {storage.join(spec['dir'], 'tune')}")
    return out


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for s in rows for k in s)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------- Tune
def _trainable(spec: dict):
    from ray import tune

    resources: dict[str, float] = {"memory": spec["trial_memory_mb"] * 2**20}
    if spec["trial_cpus"]:
        resources["CPU"] = spec["trial_cpus"]
    if spec["trial_gpus"]:
        resources["GPU"] = spec["trial_gpus"]
    resources = {k: v for k, v in resources.items() if v}
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)


def _storage(spec: dict) -> tuple[Any, str]:
    """(pyarrow filesystem or None, path) of the Tune storage under the sweep directory."""
    uri = storage.join(spec["dir"], "tune")
    if storage.is_s3(uri):
        return storage.pyarrow_fs(uri)
    return None, uri


def _check_same_sweep(spec: dict, saved: dict) -> None:
    diff = sorted(k for k in set(spec) | set(saved) if spec.get(k) != saved.get(k))
    if diff:
        raise ConfigError(f"--resume: this sweep file differs from the one the sweep in {spec['dir']} was started "
                          f"with (in {diff}). Resume with the same file and overrides, or start a new sweep "
                          "(another sweep.dir).")


def run_sweep(spec: dict, resume: bool = False, log=print) -> tuple[list[dict], int]:
    """Run (or resume) the Tune experiment, then write the tables; returns (rows, number of errored trials)."""
    # Trials must see the working directory the paths were written for, not their Tune trial directory.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    tuner = _restored_tuner(spec) if resume else _new_tuner(spec)
    started = time.perf_counter()
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    log(f"\nsweep '{spec['name']}': {len(grid)} trials in {time.perf_counter() - started:.0f} s, "
        f"{len(errors)} errored")
    for e in errors:
        log(f"  trial error: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
    rows = collect_rows(spec)
    write_outputs(spec, rows, log=log)
    return rows, len(errors)


def _restored_tuner(spec: dict):
    """Tuner.restore of the sweep's experiment, after checking the sweep file is the one it started with."""
    from ray import tune

    fs, path = _storage(spec)
    spec_uri = storage.join(spec["dir"], "sweep.json")
    if not storage.exists(spec_uri):
        raise ConfigError(f"--resume: no sweep was started in {spec['dir']} ({spec_uri} is missing); run "
                          "without --resume to start it.")
    _check_same_sweep(json.loads(json.dumps(spec)), storage.read_json(spec_uri))
    exp_path = f"{path.rstrip('/')}/{spec['name']}"  # with an S3 filesystem Tune wants the path without scheme
    if not tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        raise ConfigError(f"--resume: no Tune experiment to restore at "
                          f"{storage.join(spec['dir'], 'tune', spec['name'])}; run without --resume.")
    return tune.Tuner.restore(exp_path, trainable=_trainable(spec), resume_errored=True, storage_filesystem=fs)


def _new_tuner(spec: dict):
    from ray import tune

    from ray_al.workers.tune_track import tune_callbacks

    spec_uri = storage.join(spec["dir"], "sweep.json")
    if storage.exists(spec_uri):
        raise ConfigError(f"{spec['dir']} already holds a sweep: add --resume to continue it (finished trials "
                          "are kept), or choose another sweep.dir / delete that directory to start over.")
    storage.makedirs(spec["dir"])
    storage.write_json_atomic(spec_uri, json.loads(json.dumps(spec)))
    fs, path = _storage(spec)
    name_of = lambda t: trial_name(_values_from_params(t.config, spec["grid"]))  # noqa: E731
    return tune.Tuner(
        _trainable(spec),
        param_space=_tune_params(spec["grid"]),
        tune_config=tune.TuneConfig(max_concurrent_trials=spec["max_concurrent_trials"] or None,
                                    trial_name_creator=name_of, trial_dirname_creator=name_of),
        run_config=tune.RunConfig(name=spec["name"], storage_path=path, storage_filesystem=fs, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=spec["max_failures"]),
                                  callbacks=_kill_point_callbacks() + tune_callbacks(
                                      config_mod.from_dict(spec["base"]).track, spec["name"],
                                      lambda t: trial_config(spec, _values_from_params(t.config, spec["grid"])))),
    )


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser("python -m ray_al.sweep", __doc__.split("\n\n")[0], __doc__.split("\n", 3)[3],
                               config_help="sweep YAML (see configs/sweep_digits.yaml)", config_required=True)
    parser.add_argument("--resume", action="store_true", help="continue the sweep in its sweep.dir (Tuner.restore)")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after flags


def sweep(args: argparse.Namespace) -> int:
    from ray_al.workers.ray_utils import init_ray

    spec = load_spec(args.config, args.overrides, smoke=args.smoke_test)
    init_ray(config_mod.from_dict(spec["base"]).run.ray_num_cpus)
    n = len(combinations(spec["grid"]))
    print(f"sweep '{spec['name']}': {n} trials ({' x '.join(f'{k}[{len(v)}]' for k, v in spec['grid'].items())})"
          f" in {spec['dir']}", flush=True)
    _rows, errors = run_sweep(spec, resume=args.resume)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: sweep(args))


if __name__ == "__main__":
    sys.exit(main())
