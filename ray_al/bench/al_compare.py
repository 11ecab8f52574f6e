"""CIFAR-10 check: do joint-MoBY features make k-center selections at least as good as random ones?

    python -m ray_al.bench.al_compare --seeds 0 --out runs/al_compare [--extra train.epochs=6 ...]

Runs `python -m ray_al.cycle` once per (arm, seed), each in its own process and run directory, with the
same pool subsample, test subsample, initial labeled set (al.seed) and training settings:
* kcenter+moby: train.method=moby (joint CE + MoBY), select.method=kcenter (the claim under test);
* kcenter_cosine+moby: the same with embed.normalize=true (k-center in cosine distance);
* random+moby: same learner, random selection (isolates the selection);
* random+none: supervised learner, random selection (the plain baseline).
A finished run directory is reused as is (the cycle resumes it), so an interrupted comparison continues.
Prints per-round accuracy per arm (mean over seeds) and, as the last line, JSON with the table and
whether kcenter+moby >= random+moby at every round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = {
    "kcenter+moby": ["train.method=moby", "select.method=kcenter"],
    # the same on unit-length embeddings: cosine distance, the geometry the contrastive loss trains
    "kcenter_cosine+moby": ["train.method=moby", "select.method=kcenter", "embed.normalize=true"],
    "random+moby": ["train.method=moby", "select.method=random"],
    "random+none": ["train.method=none", "select.method=random"],
}
DEFAULTS = [
    "data.dataset=cifar10", "data.pool_size=2000", "data.test_size=2000", "model.backbone=small_cnn",
    "al.initial_size=100", "al.budget=100", "al.rounds=3", "train.epochs=4", "train.batch_size=64",
    "train.unlabeled_batch_size=64",
]


def command(arm: str, seed: int, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "ray_al.cycle", *DEFAULTS, *ARMS[arm], f"al.seed={seed}",
            f"run.dir={out / f'{arm}-seed{seed}'}", *extra]


def read_results(run_dir: Path) -> list[dict]:
    path = run_dir / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_logged(cmd: list[str], log: Path, name: str) -> float:
    """Run one cycle command with its output appended to `log` (a rerun resumes the run, and keeps the
    first run's log); its wall seconds. A failure stops the benchmark, naming the log."""
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    return round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=["kcenter+moby", "random+moby", "random+none"], choices=list(ARMS))
    p.add_argument("--out", default="runs/al_compare")
    p.add_argument("--extra", nargs="*", default=[], help="more section.key=value overrides for every arm")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    out = Path(args.out)
    seconds: dict[str, float] = {}
    for seed in args.seeds:
        for arm in args.arms:
            cmd = command(arm, seed, out, args.extra)
            print("$ python " + " ".join(cmd[1:]), flush=True)
            if args.dry_run:
                continue
            seconds[f"{arm}-seed{seed}"] = run_logged(cmd, out / f"{arm}-seed{seed}.log", f"{arm} seed {seed}")
    if args.dry_run:
        return {}
    table: dict[str, dict[int, list[float]]] = {}
    labels: dict[int, int] = {}
    for arm in args.arms:
        for seed in args.seeds:
            for row in read_results(out / f"{arm}-seed{seed}"):
                table.setdefault(arm, {}).setdefault(row["round"], []).append(row["accuracy"])
                labels[row["round"]] = row["labels"]
    rounds = sorted(labels)
    print(f"\n{'round':>5} {'labels':>7} " + " ".join(f"{a:>14}" for a in args.arms))
    for r in rounds:
        print(f"{r:>5} {labels[r]:>7} " + " ".join(
            f"{statistics.mean(table[a][r]):>14.4f}" if r in table.get(a, {}) else f"{'-':>14}" for a in args.arms))
    mean = {a: {r: statistics.mean(v) for r, v in table.get(a, {}).items()} for a in args.arms}
    ok = {}
    if "random+moby" in mean:
        # round 0: the same initial set and learner, so the same model; selection shows from round 1 on
        for arm in (a for a in args.arms if a.startswith("kcenter") and a in mean):
            ok[arm] = all(mean[arm][r] >= mean["random+moby"][r] for r in rounds)
            print(f"{arm} >= random+moby at every round: {ok[arm]}")
    result = {"bench": "al_compare", "seeds": args.seeds, "labels": [labels[r] for r in rounds],
              "accuracy": {a: [round(mean[a].get(r, float("nan")), 4) for r in rounds] for a in args.arms},
              "per_seed": {a: {r: table[a][r] for r in rounds} for a in args.arms if a in table},
              "kcenter_ge_random_every_round": ok, "seconds": seconds, "extra": args.extra}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
