"""`python -m ray_al.cycle`: the command line of the active-learning loop (ray_al.loop.rounds runs the rounds).

Each round: train (Ray Train) -> embed + evaluate (Ray Data) -> select -> label (oracle) -> commit. A killed
run resumes (`--resume RUN_DIR`) at the first step without a marker, so no label is lost or duplicated.
"""
from __future__ import annotations

import argparse
import sys

from ray_al.core import config as config_mod
from ray_al.core import storage
from ray_al.cli import experiment_parser, run_main
from ray_al.core.config import Config, ConfigError
from ray_al.loop.rounds import Cycle, check_config, default_run_dir, finish, open_run
from ray_al.run.runlock import RunLock
from ray_al.run.track import Tracker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(
        "python -m ray_al.cycle",
        "Run active-learning rounds: train, embed, select, label. With no arguments: the embedded "
        "default (digits, small CNN, auto selection: typiclust, then margin) on a local Ray.",
        "Overrides: section.key=value, e.g. al.rounds=3 train.epochs=2. Keys and defaults:\n\n"
        + config_mod.describe(),
        config_help="YAML experiment config (see configs/)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its first unfinished step")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after flags


def run_uri(cfg: Config, args: argparse.Namespace) -> str:
    """--resume's directory, else run.dir when it was set, else a name that says what the run is."""
    if args.resume:
        return args.resume
    if cfg.run.dir != config_mod.RunConfig().dir or any(o.startswith("run.dir=") for o in args.overrides):
        return cfg.run.dir
    return default_run_dir(cfg, args.smoke_test)


def cycle(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config, args.overrides)
    if args.smoke_test:
        cfg = config_mod.smoke(cfg)
    check_config(cfg)
    if args.resume and args.overrides:
        raise ConfigError("--resume continues a run with its own saved config; drop the overrides "
                          f"({' '.join(args.overrides)}) or start a new run directory.")
    from ray_al.workers.ray_utils import defer_ray

    storage.configure_s3(cfg.data.s3_endpoint or None, cfg.data.s3_region or None)
    uri = run_uri(cfg, args)
    with RunLock(uri, purpose="cycle") as lock:  # before Ray starts: a second cycle is refused at once
        # Ray starts at the first step that needs it: bad input is refused in a second, not ten
        defer_ray(cfg.run.ray_num_cpus)
        run, spec, cfg = open_run(cfg, uri, bool(args.resume))
        lock.renew()  # run.overwrite deleted the directory, the lock with it
        defer_ray(cfg.run.ray_num_cpus)  # a resumed run's own setting
        print(f"run directory: {run.uri}  (pool: {spec.pool_rows} images, {spec.num_classes} classes; "
              f"{cfg.train.method}/{cfg.train.mode} + {cfg.select.method})", flush=True)
        with Tracker.of(cfg, run.uri, past=run.results()) as tracker:  # track.*: MLflow / W&B, else a no-op
            Cycle(cfg, run, spec, log=lambda m: print(m, flush=True), on_round_committed=tracker.round).run_all()
            finish(run)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: cycle(args))


if __name__ == "__main__":
    sys.exit(main())
