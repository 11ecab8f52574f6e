"""`python -m ray_al.cycle`: the command line of the active-learning loop (ray_al.loop.rounds runs the rounds).

Each round: train (Ray Train) -> embed + evaluate (Ray Data) -> select -> label (oracle) -> commit. A killed
run resumes (`--resume RUN_DIR`) at the first step without a marker, so no label is lost or duplicated.
"""
from __future__ import annotations

import argparse
import sys

import ray_al.core.arrow_pool  # noqa: F401  first: before anything loads pyarrow (core/arrow_pool.py says why)
import ray_al.core.malloc_arenas  # noqa: F401  first too: the driver's glibc arenas (core/malloc_arenas.py)
from ray_al.core import config as config_mod
from ray_al.cli import experiment_parser, run_main
from ray_al.core.config import Config, ConfigError
from ray_al.api import run_cycle
from ray_al.loop.rounds import default_run_dir


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
    if args.resume and args.overrides:
        raise ConfigError("--resume continues a run with its own saved config; drop the overrides "
                          f"({' '.join(args.overrides)}) or start a new run directory.")
    run_cycle(cfg, run_uri(cfg, args), resume=bool(args.resume), log=lambda m: print(m, flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: cycle(args))


if __name__ == "__main__":
    sys.exit(main())
