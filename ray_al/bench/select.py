"""Benchmark: selection-only rounds on a user's own embeddings (data.embeddings) at pool scale.

    python -m ray_al.bench.select --rows 1000000 --dim 128 --methods typiclust probcover kcenter auto

Writes an embeddings Parquet of --rows x --dim float32 (a seeded mixture of --clusters Gaussian blobs, each
row labelled by its blob modulo 10 for the simulated oracle; no `probs`, as a CLIP/DINOv2 export has none),
then runs, per method, the command users run, in its own process:

    python -m ray_al.cycle data.embeddings=FILE select.method=M al.rounds=1 al.initial_size=I al.budget=B

(kcenter on --shards Ray shard actors: select.method=kcenter select.shards=S). Each process is watched
from /proc (ray_al.bench.memwatch): the cycle's driver and the shard actors, peak resident set (rss) and
peak private heap (anon). The reference is the float32 matrix itself (rows x dim x 4 bytes), which the
design allows the driver to hold once: the bench prints each peak as a ratio to it, also above the heap of a
`random` round run first in the same bench (it reads no embedding matrix: a driver that imported Ray and
torch), each shard actor's heap as a ratio to its share of the matrix, and the seconds of the round's
select step (from results.jsonl) next to the whole command's wall time. Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_al.bench.memwatch import MemWatch

ROW_GROUP = 65_536
REFERENCE = "random"  # reads no embedding matrix: the driver's heap without one, run first


def write_embeddings(path: str, rows: int, dim: int, clusters: int, seed: int) -> None:
    """A clustered float32 pool, written row group by row group (never the whole matrix in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(clusters, dim)).astype(np.float32)
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim)), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            blob = rng.integers(0, clusters, n)
            x = centres[blob] + rng.normal(size=(n, dim)).astype(np.float32)
            flat = pa.array(x.reshape(-1), pa.float32())
            writer.write_table(pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                                         "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                                         "label": pa.array(blob % 10, pa.int64())}, schema=schema))


def kind_of(title: str, stage: str) -> str | None:
    """The cycle's own process is the driver; Ray's shard actors are watched too."""
    if "ray_al.cycle" in title and not title.startswith("ray::"):
        return "cycle_driver"
    if title.startswith("ray::") and "ShardActor" in title:
        return "shard_actor"
    return None


def run_method(method: str, emb: str, out: str, args, watch: MemWatch) -> dict:
    shards = ["select.shards=" + str(args.shards)] if method == "kcenter" and args.shards > 1 else []
    command = [sys.executable, "-m", "ray_al.cycle", f"data.embeddings={emb}", f"select.method={method}",
               "al.rounds=1", f"al.initial_size={args.initial}", f"al.budget={args.budget}",
               f"run.dir={out}/{method}", "run.overwrite=true", *shards]
    started = time.perf_counter()
    with watch.stage(method):
        proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        return {"error": (proc.stdout + proc.stderr)[-3000:], "wall_s": round(wall, 1)}
    rows = [json.loads(line) for line in open(f"{out}/{method}/results.jsonl")]
    peaks = watch.peaks(method, kinds=("cycle_driver", "shard_actor"))
    return {"select_s": round(rows[0]["seconds"]["select"], 1), "wall_s": round(wall, 1),
            "selected_by": rows[0].get("selected_by"), "peak_mib": {k: round(v["rss"], 1) for k, v in peaks.items()},
            "heap_mib": {k: round(v["anon"], 1) for k, v in peaks.items()}}


def print_method(method: str, res: dict, reference: dict, matrix_mib: float, shards: int) -> None:
    """One method's line; the driver's heap also above the reference run's (what the round's read and the
    method add to a driver that has imported Ray and torch), as a ratio to the matrix."""
    heap = res["heap_mib"]
    base = reference.get("heap_mib", {}).get("cycle_driver", 0.0)
    res["heap_vs_matrix"] = {k: round(v / matrix_mib, 2) for k, v in heap.items()}
    res["driver_heap_above_reference_vs_matrix"] = round((heap["cycle_driver"] - base) / matrix_mib, 2)
    actor = heap["shard_actor"]
    res["shard_actor_heap_vs_share"] = round(actor / (matrix_mib / shards), 2) if actor else 0.0
    print(f"{method:<10} select {res['select_s']:>7.1f} s  (command {res['wall_s']:.1f} s, {res['selected_by']})  "
          f"driver peak {res['peak_mib']['cycle_driver']:.0f} MiB, heap {heap['cycle_driver']:.0f} MiB = "
          f"{res['heap_vs_matrix']['cycle_driver']:.2f}x the matrix, {res['driver_heap_above_reference_vs_matrix']:.2f}x "
          f"above {REFERENCE}'s; shard actor heap {actor:.0f} MiB = {res['shard_actor_heap_vs_share']:.2f}x its share")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=["typiclust", "probcover", "kcenter", "auto"])
    p.add_argument("--shards", type=int, default=2, help="Ray shard actors of kcenter (1: one process)")
    p.add_argument("--initial", type=int, default=100, help="al.initial_size (random, simulated oracle)")
    p.add_argument("--budget", type=int, default=100, help="al.budget of the one selection round")
    p.add_argument("--out", default="", help="working directory (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="bench_select_")
    os.makedirs(out, exist_ok=True)
    emb = os.path.join(out, "embeddings.parquet")
    started = time.perf_counter()
    write_embeddings(emb, args.rows, args.dim, args.clusters, args.seed)
    matrix_mib = args.rows * args.dim * 4 / 2**20
    print(f"{args.rows} x {args.dim} float32 = {matrix_mib:.0f} MiB, written in {time.perf_counter() - started:.1f} s")
    results = {}
    with MemWatch(kind_of) as watch:
        for method in [REFERENCE] + [m for m in args.methods if m != REFERENCE]:
            results[method] = res = run_method(method, emb, out, args, watch)
            if "error" in res:
                print(f"{method}: FAILED\n{res['error']}")
                continue
            print_method(method, res, results.get(REFERENCE, {}), matrix_mib, args.shards)
    report = {"rows": args.rows, "dim": args.dim, "matrix_mib": round(matrix_mib, 1), "methods": results}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
