"""The Python API: `ray_al.select` (pure numpy, no Ray) and `ray_al.run` (a whole cycle, as the command line).

    import ray_al
    picks = ray_al.select(embeddings, labeled=[3, 17], budget=10, method="typiclust")
    rows = ray_al.run("configs/digits.yaml", al={"rounds": 1})

Nothing heavy is imported here: `select` imports ray_al.acquisition (numpy/scipy) when called, `run` imports
ray_al.cycle (and so Ray) when called, so `import ray_al` stays light (tests/test_api.py checks it).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["select", "run", "run_cycle", "PROBS_FREE"]

# methods that read no class probabilities: they work on a bare embedding matrix
PROBS_FREE = ("kcenter", "probcover", "random", "typiclust")


def select(embeddings: Any, labeled: Any, budget: int, method: str = "auto", probs: Any = None, seed: int = 0,
           *, ids: Any = None, **options: Any) -> np.ndarray:
    """The `budget` rows to label next, best first: row positions into `embeddings`, or ids when `ids` is given.

    embeddings: (N, d) features of every row (labeled and not). labeled: the rows already labeled, as positions
    (or ids when `ids` is given) or a boolean mask of length N. probs: (N, C) class probabilities (softmax of your
    model), needed by the uncertainty methods (entropy, margin, badge, ...), not by kcenter, probcover, random
    or typiclust. labels: the classes of the `labeled` rows, in their order (weibull reads them; `auto` counts
    labels per class with them; a keyword, `labels=`). method="auto": typiclust until your model's mean top-class
    probability over the unlabeled rows reaches 0.8, then margin (ray_al.acquisition.policy, docs/auto_rule.md);
    switch_per_class=N: the fixed rule, typiclust below N labels per class. Other options go to the method (e.g.
    prefilter="entropy").
    """
    from ray_al import acquisition
    from ray_al.acquisition.policy import AUTO

    labels = options.pop("labels", None)
    emb = _matrix(embeddings, "embeddings")
    n = emb.shape[0]
    row_ids = _row_ids(ids, n)
    lab = _labeled_positions(labeled, row_ids, n, ids is not None)
    p = None if probs is None else _matrix(probs, "probs", rows=n)
    lab_labels = _labels(labels, lab.shape[0])
    if method == AUTO and options.get("switch_per_class") is not None:  # the fixed rule, labels per class
        method = _auto_method(lab_labels, lab.shape[0], p, options.pop("switch_per_class"))
    acquisition.get(method)  # unknown names: the registry's error, listing the valid ones
    if p is None and "probs" in acquisition.needs(method, optional=False, prefilter=options.get("prefilter")):
        raise ValueError(f"method {method!r} needs probs: an (N, C) array of class probabilities for every row "
                         f"of embeddings (the softmax of your model's outputs). Methods that need none: "
                         f"{', '.join(PROBS_FREE)}.")
    unl = np.setdiff1d(np.arange(n), lab)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 0 <= budget <= unl.shape[0]:
        raise ValueError(f"budget must be an integer in 0..{unl.shape[0]} (the unlabeled rows), got {budget!r}")
    view = acquisition.PoolView(
        ids=row_ids[unl], probs=None if p is None else p[unl], embeddings=emb[unl],
        labeled_embeddings=emb[lab] if lab.shape[0] else None,
        labeled_labels=lab_labels if lab.shape[0] and lab_labels is not None else None,
        labeled_probs=p[lab] if p is not None and lab.shape[0] and lab_labels is not None else None)
    view = _only_read_fields(view, acquisition.needs(method, prefilter=options.get("prefilter")))
    picked = unl[acquisition.select(method, view, int(budget), seed=seed, **options)]
    return np.asarray(ids)[picked] if ids is not None else picked


def _matrix(x: Any, name: str, rows: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a 2-D numeric array (rows, columns), got shape {arr.shape} dtype {arr.dtype}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but embeddings has {rows}: give one row per embedding row")
    return arr


def _row_ids(ids: Any, n: int) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"ids must be 1-D with one id per embedding row ({n}), got shape {arr.shape}")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"ids must be unique; repeated: {uniq[counts > 1][:10].tolist()}")
    return arr


def _labeled_positions(labeled: Any, row_ids: np.ndarray, n: int, by_id: bool) -> np.ndarray:
    arr = np.asarray([] if labeled is None else labeled)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"a boolean labeled mask must have one entry per embedding row ({n}), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.ndim != 1:
        raise ValueError(f"labeled must be a 1-D list of {'ids' if by_id else 'row positions'}, got shape {arr.shape}")
    if by_id:
        where = {v: i for i, v in enumerate(row_ids.tolist())}
        unknown = [v for v in arr.tolist() if v not in where]
        if unknown:
            raise ValueError(f"labeled ids not in ids: {unknown[:10]}")
        pos = np.asarray([where[v] for v in arr.tolist()], dtype=np.int64)
    else:
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"labeled must hold integer row positions (or pass ids=), got dtype {arr.dtype}")
        pos = arr.astype(np.int64)
        bad = pos[(pos < 0) | (pos >= n)]
        if bad.size:
            raise ValueError(f"labeled positions outside 0..{n - 1}: {bad[:10].tolist()}")
    uniq, counts = np.unique(pos, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"labeled lists rows twice: positions {uniq[counts > 1][:10].tolist()}")
    return pos


def _labels(labels: Any, n_labeled: int) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.shape != (n_labeled,) or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"labels must be {n_labeled} integer classes, one per labeled row in its order, "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


def _auto_method(labels: np.ndarray | None, n_labeled: int, probs: np.ndarray | None, switch: float) -> str:
    from ray_al.acquisition.policy import auto_choice

    if n_labeled == 0:
        return auto_choice(0, 1, switch).method
    if probs is None and labels is None:
        raise ValueError("method='auto' needs the number of classes once rows are labeled: pass probs (N, C) "
                         "or labels (the classes of the labeled rows), or name a method")
    n_classes = probs.shape[1] if probs is not None else int(labels.max()) + 1
    in_class = n_labeled if labels is None else int((labels >= 0).sum())
    return auto_choice(in_class, n_classes, switch).method


def _only_read_fields(view: Any, fields: set[str]) -> Any:
    """The view without the optional fields the method does not read (they would be validated for nothing)."""
    drop = {f.name: None for f in dataclasses.fields(view) if f.name != "ids" and f.name not in fields}
    return dataclasses.replace(view, **drop)


def run(config_or_path: Any = None, *, run_dir: str | None = None, resume: bool = False, smoke_test: bool = False,
        log: Callable[[str], None] = print, **overrides: Mapping[str, Any]) -> list[dict]:
    """Run an active-learning cycle, as `python -m ray_al.cycle` does, and return its per-round result rows.

    config_or_path: a YAML path, a dict of sections ({"al": {"rounds": 2}}), a ray_al.core.config.Config, or
    None (the embedded default). overrides: sections as keyword arguments, al={"rounds": 1}, applied on top.
    run_dir: where the run lives (default: run.dir, else a name from the config); resume=True continues it.
    """
    from ray_al.core import config as config_mod
    from ray_al.loop.rounds import default_run_dir

    raw = _raw_config(config_or_path, config_mod)
    for section, values in overrides.items():
        if not isinstance(values, Mapping):
            raise config_mod.ConfigError(f"override {section}= must be a mapping of key: value, e.g. "
                                         f"{section}={{'key': value}}; got {values!r}")
        raw.setdefault(section, {}).update(values)
    cfg = config_mod.from_dict(raw)
    if smoke_test:
        cfg = config_mod.smoke(cfg)
    uri = run_dir or (cfg.run.dir if cfg.run.dir != config_mod.RunConfig().dir else default_run_dir(cfg, smoke_test))
    return run_cycle(cfg, str(uri), resume=resume, log=log)


def run_cycle(cfg: Any, uri: str, *, resume: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the rounds of config `cfg` in run directory `uri`; returns the committed rounds' result
    rows. The one code path of `python -m ray_al.cycle` (ray_al/cycle.py) and of `ray_al.run`."""
    from ray_al.core import storage
    from ray_al.loop.rounds import Cycle, finish, open_run
    from ray_al.loop.rules import check_config
    from ray_al.run.runlock import RunLock
    from ray_al.run.track import Tracker
    from ray_al.workers.ray_utils import defer_ray

    check_config(cfg)
    storage.configure_s3(cfg.data.s3_endpoint or None, cfg.data.s3_region or None)
    with RunLock(uri, purpose="cycle") as lock:  # before Ray starts: a second cycle is refused at once
        # Ray starts at the first step that needs it: bad input is refused in a second, not ten
        defer_ray(cfg.run.ray_num_cpus)
        run, pool, cfg = open_run(cfg, uri, resume)
        lock.renew()  # run.overwrite deleted the directory, the lock with it
        defer_ray(cfg.run.ray_num_cpus)  # a resumed run's own setting
        log(f"run directory: {run.uri}  (pool: {pool.pool_rows} images, {pool.num_classes} classes; "
            f"{cfg.train.method}/{cfg.train.mode} + {cfg.select.method})")
        with Tracker.of(cfg, run.uri, past=run.results()) as tracker:  # track.*: MLflow / W&B, else a no-op
            Cycle(cfg, run, pool, log=log, on_round_committed=tracker.round).run_all()
            return finish(run, log=log)


def _raw_config(config_or_path: Any, config_mod: Any) -> dict:
    if config_or_path is None:
        return {}
    if isinstance(config_or_path, (str, Path)):
        raw = config_mod.read_yaml(config_or_path)
        if not isinstance(raw, dict):
            raise config_mod.ConfigError(f"config file '{config_or_path}' must be a mapping of sections")
        return {k: dict(v or {}) for k, v in raw.items()}
    if isinstance(config_or_path, config_mod.Config):
        return {f.name: dataclasses.asdict(getattr(config_or_path, f.name)) for f in dataclasses.fields(config_or_path)}
    if isinstance(config_or_path, Mapping):
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in config_or_path.items()}
    raise TypeError(f"ray_al.run takes a YAML path, a dict of sections or a Config, got {type(config_or_path).__name__}")
