"""CIFAR-10 with foreign images: how much of each method's budget goes on images in none of the classes?

    python -m ray_al.bench.ood_mix --seeds 0 1 2 --out runs/ood_mix [--methods random kcenter ...] [--extra k=v ...]

Builds one mixed pool: a seeded sample of the CIFAR-10 train Parquet plus `--foreign-fraction` (default
20%) foreign images, scikit-learn's 8x8 digits upscaled to 32x32 RGB and JPEG-encoded like the CIFAR
images, labelled -1 (out of distribution: the simulated oracle answers "none of these classes"). The test
split is CIFAR-10 test images only. Then runs `python -m ray_al.cycle` once per (method, seed), each in its
own process and run directory, with the same pool, seed set (al.seed) and training. Foreign answers are
kept in the ledger (never queried again, never trained on) and count in the budget.

Reports per method, mean and standard error over seeds: the share of the queried budget (ledger rows of
source `query`) that went on foreign images, read from each run's ledger, against the pool's own share
(what random selection spends in expectation, and random is run as the reference); and the test accuracy
per round. The last line is JSON. A finished run directory is reused (the cycle resumes it), so use a new
--out for new sizes.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_al.bench.al_compare import read_results, run_logged
from ray_al.data import builtin
from ray_al.run.ledger import OOD_LABEL, Ledger

METHODS = ["random", "kcenter", "margin", "typiclust", "auto"]
FOREIGN_ID_START = 1_000_000  # foreign ids follow CIFAR's row numbers (0..49,999) without meeting them
DEFAULTS = ["model.backbone=small_cnn", "train.method=moby", "al.initial_size=100", "al.budget=100", "al.rounds=3",
            "train.epochs=4", "train.batch_size=64", "train.unlabeled_batch_size=64"]


# ----------------------------------------------------------------------------- the mixed pool
def foreign_digits(n: int, size: int, seed: int) -> pa.Table:
    """n foreign images (ids from FOREIGN_ID_START, label OOD_LABEL): distinct digits, bilinear-upscaled
    to size x size, grey in three channels, JPEG like the CIFAR Parquet."""
    from PIL import Image

    pixels, _ = builtin.digits_pixels()
    if n > len(pixels):
        raise SystemExit(f"{n} foreign images asked for but scikit-learn has {len(pixels)} digits: lower "
                         "--pool-size or --foreign-fraction.")
    picks = np.sort(np.random.default_rng(seed).choice(len(pixels), n, replace=False))
    images = []
    for i in picks:
        buf = io.BytesIO()
        Image.fromarray(pixels[i]).resize((size, size), Image.BILINEAR).convert("RGB").save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return pa.table({"id": pa.array(np.arange(n) + FOREIGN_ID_START, pa.int64()),
                     "image": pa.array(images, pa.binary()), "label": pa.array([OOD_LABEL] * n, pa.int64())})


def write_mixed_pool(out: Path, cifar: str, pool_size: int, fraction: float, test_size: int, seed: int) -> dict:
    """out/pool/ (CIFAR + foreign, with the CIFAR class names) and out/test/ (CIFAR only); returns their
    URIs and counts. Written once: an existing pool is reused."""
    meta_path = out / "mix.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    pool, test, names = builtin.cifar10(cifar)
    n_foreign = int(round(pool_size * fraction))
    columns = ["id", "image", "label"]
    in_dist = builtin.subsample(pool.select(columns), pool_size - n_foreign, seed)
    mixed = pa.concat_tables([in_dist, foreign_digits(n_foreign, 32, seed)])
    for split, table in (("pool", mixed), ("test", builtin.subsample(test.select(columns), test_size, seed + 1))):
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / split / "part-0.parquet")
    (out / "pool" / "_classes.json").write_text(json.dumps({"classes": names}))  # read like an ingest's
    meta = {"pool": str(out / "pool"), "test": str(out / "test"), "rows": mixed.num_rows, "foreign": n_foreign,
            "fraction": n_foreign / mixed.num_rows}
    meta_path.write_text(json.dumps(meta))
    return meta


# ----------------------------------------------------------------------------- one run's figures
def command(method: str, seed: int, mix: dict, run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "ray_al.cycle", "data.dataset=parquet", f"data.pool={mix['pool']}",
            f"data.test={mix['test']}", *DEFAULTS, f"select.method={method}", f"al.seed={seed}",
            f"run.dir={run_dir}", *extra]


def run_figures(run_dir: Path) -> dict:
    """Accuracy and labels per round (results.jsonl) and the foreign share of the queried budget,
    overall and per ledger round (the ledger)."""
    rows = read_results(run_dir)
    table = Ledger.load(str(run_dir)).table.to_pydict()
    queried: dict[int, list[bool]] = {}
    for r, y, s in zip(table["round"], table["label"], table["source"]):
        if s == "query":
            queried.setdefault(r, []).append(y == OOD_LABEL)
    spent = [f for r in sorted(queried) for f in queried[r]]
    initial = [y == OOD_LABEL for y, s in zip(table["label"], table["source"]) if s == "initial"]
    return {"accuracy": [row["accuracy"] for row in rows], "labels": [row["labels"] for row in rows],
            "foreign_share": sum(spent) / len(spent) if spent else 0.0,
            "foreign_share_by_round": [sum(queried[r]) / len(queried[r]) for r in sorted(queried)],
            "queried": len(spent), "seed_set_foreign": sum(initial)}


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error over seeds (se None with one seed)."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return statistics.mean(values), se


# ----------------------------------------------------------------------------- the report
def summarize(figures: dict[str, list[dict]]) -> dict:
    """Per method: foreign share (mean, se, per seed), its per-round means, accuracy mean and se per round."""
    out = {}
    for method, runs in figures.items():
        n_rounds = min(len(f["accuracy"]) for f in runs)
        n_query = min(len(f["foreign_share_by_round"]) for f in runs)
        acc = [mean_se([f["accuracy"][r] for f in runs]) for r in range(n_rounds)]
        share = mean_se([f["foreign_share"] for f in runs])
        out[method] = {
            "foreign_share": {"mean": share[0], "se": share[1], "per_seed": [f["foreign_share"] for f in runs]},
            "foreign_share_by_round": [statistics.mean(f["foreign_share_by_round"][r] for f in runs)
                                       for r in range(n_query)],
            "accuracy": {"mean": [a[0] for a in acc], "se": [a[1] for a in acc]},
            "labels": runs[0]["labels"][:n_rounds], "seed_set_foreign": [f["seed_set_foreign"] for f in runs],
        }
    return out


def print_report(summary: dict, mix: dict) -> None:
    def pm(m: float, se: float | None, digits: int = 3) -> str:
        return f"{m:.{digits}f}" + ("" if se is None else f"+-{se:.{digits}f}")

    print(f"\npool: {mix['rows']} images, {mix['foreign']} foreign ({mix['fraction']:.1%}): what random spends "
          "on them in expectation")
    print(f"{'method':>10} {'foreign share of queries':>26} {'by selection round':>24}")
    for method, s in summary.items():
        by_round = " ".join(f"{v:.2f}" for v in s["foreign_share_by_round"])
        print(f"{method:>10} {pm(s['foreign_share']['mean'], s['foreign_share']['se']):>26} {by_round:>24}")
    labels = next(iter(summary.values()))["labels"]
    print(f"\ntest accuracy (mean+-se over seeds)\n{'round':>5} {'labels':>7} "
          + " ".join(f"{m:>16}" for m in summary))
    for r, n in enumerate(labels):
        print(f"{r:>5} {n:>7} " + " ".join(
            f"{pm(s['accuracy']['mean'][r], s['accuracy']['se'][r], 4):>16}" if r < len(s["accuracy"]["mean"])
            else f"{'-':>16}" for s in summary.values()))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--pool-size", type=int, default=2000, help="pool images, foreign ones included")
    p.add_argument("--foreign-fraction", type=float, default=0.2)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the pool and test samples (one pool for all)")
    p.add_argument("--cifar", default="", help="CIFAR-10 Parquet folder (default: RAY_AL_CIFAR10, else the download cache)")
    p.add_argument("--out", default="runs/ood_mix")
    p.add_argument("--extra", nargs="*", default=[], help="more section.key=value overrides for every run")
    p.add_argument("--dry-run", action="store_true", help="build the pool and print the commands only")
    args = p.parse_args(argv)
    if not 0.0 <= args.foreign_fraction < 1.0:
        p.error(f"--foreign-fraction must be in [0, 1), got {args.foreign_fraction}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = Path(args.out)
    mix = write_mixed_pool(out / "data", args.cifar, args.pool_size, args.foreign_fraction, args.test_size,
                           args.data_seed)
    seconds: dict[str, float] = {}
    for seed in args.seeds:
        for method in args.methods:
            name = f"{method}-seed{seed}"
            cmd = command(method, seed, mix, out / name, args.extra)
            print("$ python " + " ".join(cmd[1:]), flush=True)
            if not args.dry_run:
                seconds[name] = run_logged(cmd, out / f"{name}.log", name)
    if args.dry_run:
        return {}
    summary = summarize({m: [run_figures(out / f"{m}-seed{s}") for s in args.seeds] for m in args.methods})
    print_report(summary, mix)
    result = {"bench": "ood_mix", "seeds": args.seeds, "pool": {k: mix[k] for k in ("rows", "foreign", "fraction")},
              "methods": summary, "seconds": seconds, "extra": args.extra}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
