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

Code: `ray_al.loop.sweep_plan` reads and checks the file (`SweepPlan`), `ray_al.loop.sweep_tune` runs the
trials on Ray Tune, `ray_al.core.report` makes the tables.
"""
from __future__ import annotations

import argparse
import sys

from ray_al.cli import experiment_parser, run_main
from ray_al.core import config as config_mod
from ray_al.loop.sweep_plan import load_plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser("python -m ray_al.sweep", __doc__.split("\n\n")[0], __doc__.split("\n", 3)[3],
                               config_help="sweep YAML (see configs/sweep_digits.yaml)", config_required=True)
    parser.add_argument("--resume", action="store_true", help="continue the sweep in its sweep.dir (Tuner.restore)")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after flags


def sweep(args: argparse.Namespace) -> int:
    from ray_al.loop.sweep_tune import run_sweep
    from ray_al.workers.ray_utils import init_ray

    plan = load_plan(args.config, args.overrides, smoke=args.smoke_test)
    init_ray(config_mod.from_dict(plan.base).run.ray_num_cpus)
    sizes = " x ".join(f"{k}[{len(v)}]" for k, v in plan.grid.items())
    print(f"sweep '{plan.name}': {len(plan.points())} trials ({sizes}) in {plan.dir}", flush=True)
    _rows, errors = run_sweep(plan, resume=args.resume)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: sweep(args))


if __name__ == "__main__":
    sys.exit(main())
