"""A sweep's plan: the sweep file read and checked (`load_plan` -> `SweepPlan`) and the Config of each
grid point (`SweepPlan.trial_config`). The file format is in `python -m ray_al.sweep --help`.

No Ray here: every trial's Config is built and checked when the plan loads, so a typo fails before Tune
starts; `ray_al.loop.sweep_tune` runs the plan.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

from ray_al.core import config as config_mod
from ray_al.core import storage
from ray_al.core.config import Config, ConfigError

SWEEP_KEYS = ("name", "dir", "grid", "max_concurrent_trials", "max_failures", "trial_cpus", "trial_gpus",
              "trial_memory_mb")


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A checked sweep file: what `sweep.json` in the sweep directory records (`to_json`)."""

    name: str  # Tune experiment name
    dir: str  # sweep directory: absolute local path or s3:// URI
    grid: dict[str, list]  # dotted config key -> values; every combination is one trial
    base: dict[str, dict]  # the base config's raw sections, command-line overrides applied
    smoke: bool  # apply `config.smoke` to every trial
    max_concurrent_trials: int
    max_failures: int
    trial_cpus: float
    trial_gpus: float
    trial_memory_mb: float

    def to_json(self) -> dict:
        """JSON-able dict of the plan (sweep.json; --resume compares it with the file's)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def points(self) -> list[dict[str, Any]]:
        """Every grid point as {dotted key: value}, in a fixed order (the first key varies slowest)."""
        return combinations(self.grid)

    def trial_run_dir(self, values: dict[str, Any]) -> str:
        return storage.join(self.dir, "trials", trial_name(values))

    def trial_config(self, values: dict[str, Any]) -> Config:
        """The Config of one grid point: base + grid values (+ smoke), with its own run directory."""
        from ray_al.loop.rules import check_config

        raw = copy.deepcopy(self.base)
        for key, value in values.items():
            _set_dotted(raw, key, value)
        cfg = config_mod.from_dict(raw)
        if self.smoke:
            cfg = config_mod.smoke(cfg)
        if cfg.run.overwrite:
            raise ConfigError("run.overwrite=true would wipe each trial's run directory when it restarts; a "
                              "sweep resumes trials from their ledgers. To start over, delete the sweep directory "
                              "or choose another sweep.dir.")
        if cfg.al.oracle != "simulated":
            raise ConfigError(f"al.oracle={cfg.al.oracle}: a sweep needs al.oracle=simulated (nobody answers "
                              "file-oracle queries inside a Tune trial).")
        cfg = config_mod.replace(cfg, run={"dir": self.trial_run_dir(values)})
        if not cfg.embed.features_cache:  # trials on one frozen encoder and pool embed it once between them
            cfg = config_mod.replace(cfg, embed={"features_cache": storage.join(self.dir, "features_cache")})
        check_config(cfg)
        return cfg


def load_plan(path: str | Path, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False) -> SweepPlan:
    """Read a sweep YAML into a SweepPlan; every grid point's Config is built and checked here."""
    sweep, base = _read_sweep_file(path)
    name = str(sweep.get("name") or Path(path).stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"sweep.name '{name}' may hold only letters, digits, '_', '-' and '.'.")
    plan = SweepPlan(
        name=name, dir=_sweep_dir(sweep, name, smoke), grid=_check_grid(sweep.get("grid"), path),
        base=config_mod.apply_overrides(_base_sections(base, Path(path)), overrides), smoke=bool(smoke),
        max_concurrent_trials=_int(sweep, "max_concurrent_trials", 1, 0),
        max_failures=_int(sweep, "max_failures", 1, 0),
        trial_cpus=_num(sweep, "trial_cpus", 0.0), trial_gpus=_num(sweep, "trial_gpus", 0.0),
        trial_memory_mb=_num(sweep, "trial_memory_mb", 512.0),
    )
    if plan.trial_cpus == 0 and plan.trial_gpus == 0 and plan.trial_memory_mb <= 0:
        raise ConfigError("a trial must reserve something: set sweep.trial_memory_mb > 0 (or trial_cpus).")
    for values in plan.points():
        plan.trial_config(values)  # raises ConfigError naming the bad key/value
    return plan


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
