"""`python -m ray_al.bench.soak`: many rounds in one process, looking for leaks
(docs/RELIABILITY.md, "Long runs (leaks)").

Two streams on one local Ray: `--rounds` rounds (default 100) of the embedded default (digits; a small
budget, al.initial_size=10 al.budget=10, so the pool lasts), then `--per-round-rounds` rounds (default 30)
on the per-round path (train.resident=never). After every committed round (Cycle's on_round_committed)
it records the round's seconds, the peak resident memory of the driver and of the largest Ray worker
(MemWatch, one stage per round), the object store's peak bytes used, Ray's live actors, and the driver's
threads and open files; and it checks the ledger: no id twice, as many rows as the budget gave, every
query of the round in it. At the end it prints, per stream, the least-squares slope of each measure
against the round number: a leak shows as a slope that is not flat.

    python -m ray_al.bench.soak                      # 100 + 30 rounds (tens of minutes)
    python -m ray_al.bench.soak --rounds 4 --per-round-rounds 3 --smoke --json soak.json
"""
from __future__ import annotations

import ray_al.core.arrow_pool  # noqa: F401  first, as in `python -m ray_al.cycle`: the driver's Arrow pool
import ray_al.core.malloc_arenas  # noqa: F401  first too: the driver's glibc arenas (core/malloc_arenas.py)
import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

from ray_al.bench.memwatch import MemWatch, ray_worker_kinds
from ray_al.core import config as config_mod
from ray_al.run.ledger import Ledger

MEASURES = ("seconds", "driver_mib", "driver_end_mib", "worker_mib", "store_mib", "actors", "threads", "native_threads", "open_files")


def stream_config(rounds: int, smoke: bool, extra: list[str]) -> config_mod.Config:
    """The embedded default (or its smoke size) with `rounds` rounds of 10 labels from a seed set of 10."""
    cfg = config_mod.load(None, extra)
    if smoke:
        cfg = config_mod.smoke(cfg)
    return config_mod.replace(cfg, al={"rounds": rounds, "initial_size": 10, "budget": 10, "budgets": ()},
                              run={"overwrite": True})


def live_actors() -> int:
    """Ray's live actors, asked of this driver's own cluster: without the address the State API refuses to
    choose when another Ray runs on the machine ("Found multiple active Ray instances")."""
    import ray
    from ray.util.state import list_actors

    return len(list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                           limit=10_000, raise_on_missing_output=False))


def check_ledger(run_uri: str, id_type, r: int, cfg: config_mod.Config, final: bool) -> None:
    """After round r's commit: ids unique, seed set + r+1 batches (r batches in the last round, which
    queries none), and round r's queries all in the ledger as round r+1's labels."""
    from ray_al.core import storage

    ledger = Ledger.load(run_uri, id_type=id_type)
    ids = ledger.ids.tolist()
    if len(set(ids)) != len(ids):
        raise AssertionError(f"round {r}: {len(ids) - len(set(ids))} ids twice in {run_uri}'s ledger")
    want = cfg.al.initial_size + (r if final else r + 1) * cfg.al.budget
    if len(ids) != want:
        raise AssertionError(f"round {r}: the ledger of {run_uri} holds {len(ids)} labels, {want} expected")
    if final:
        return
    queries = storage.read_parquet(storage.join(run_uri, "rounds", f"{r:04d}", "queries.parquet")).column("id")
    labelled = {i for i, rr in zip(ids, ledger.rounds.tolist()) if rr == r + 1}
    lost = set(queries.to_pylist()) - labelled
    if lost or len(labelled) != len(queries):
        raise AssertionError(f"round {r}: queries {sorted(lost)[:10]} missing from {run_uri}'s ledger")


class Sampler:
    """The per-round record of one stream (the Cycle's on_round_committed hook)."""

    def __init__(self, watch: MemWatch, run_uri: str, id_type, cfg: config_mod.Config) -> None:
        self.watch, self.run_uri, self.id_type, self.cfg = watch, run_uri, id_type, cfg
        self.rows: list[dict] = []
        self.stage = None
        self.started = time.perf_counter()
        self.next_stage()

    def next_stage(self) -> None:
        if self.stage is not None:
            self.stage.__exit__(None, None, None)
        self.stage = self.watch.stage(f"{self.run_uri}#{len(self.rows)}")
        self.stage.__enter__()

    def __call__(self, row: dict) -> None:
        r = int(row["round"])
        name = self.watch.current
        self.next_stage()  # closes this round's stage (its peaks) and opens the next one's
        peaks = self.watch.peaks(name, kinds=("driver", "actor", "task"))
        self.rows.append({
            "round": r, "seconds": time.perf_counter() - self.started,
            "driver_mib": peaks["driver"]["rss"], "driver_end_mib": driver_rss_now(), "worker_mib": max(peaks["actor"]["rss"], peaks["task"]["rss"]),
            "store_mib": self.watch.store.get(name, 0) / 2**20, "actors": live_actors(), "threads": threading.active_count(),
            "native_threads": len(os.listdir("/proc/self/task")), "open_files": len(os.listdir("/proc/self/fd"))})
        self.started = time.perf_counter()
        check_ledger(self.run_uri, self.id_type, r, self.cfg, final=r == self.cfg.al.rounds)
        print(progress_line(self.rows[-1], self.cfg.al.rounds), flush=True)  # a long run shows where it is

    def close(self) -> None:
        if self.stage is not None:
            self.stage.__exit__(None, None, None)
            self.stage = None


def driver_rss_now() -> float:
    """The driver's resident memory (MiB) as the round is committed, its work done: a leak raises it round
    after round; a round's peak (`driver_mib`) also rises with the round's work (more labels, more clusters)."""
    gc.collect()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def progress_line(row: dict, rounds: int) -> str:
    """One round's measures, printed as it is committed and checked."""
    return (f"round {row['round']}/{rounds}: {row['seconds']:.1f} s, driver {row['driver_mib']:.0f} MiB "
            f"(at commit {row['driver_end_mib']:.0f}), "
            f"worker {row['worker_mib']:.0f} MiB, store {row['store_mib']:.1f} MiB, {row['actors']} actors, "
            f"{row['threads']} threads ({row['native_threads']} native), {row['open_files']} open files; ledger ok")


def run_stream(name: str, cfg: config_mod.Config, run_uri: str, watch: MemWatch) -> list[dict]:
    from ray_al.loop.rounds import Cycle, finish, open_run
    from ray_al.loop.rules import check_config

    check_config(cfg)
    run, pool, cfg = open_run(cfg, run_uri, resume=False)
    sampler = Sampler(watch, run.uri, pool.id_type, cfg)
    try:
        Cycle(cfg, run, pool, log=lambda m: None, on_round_committed=sampler).run_all()
    finally:
        sampler.close()
    finish(run, log=lambda m: None)
    if len(sampler.rows) != cfg.al.rounds + 1:
        raise AssertionError(f"{name}: {len(sampler.rows)} rounds recorded, {cfg.al.rounds + 1} expected")
    return sampler.rows


def slopes(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of each measure against the round number (units per round). Round 0 is left
    out when 2 rounds remain: it also builds the pool, the encoder and the seed set, which is no leak."""
    rows = rows[1:] if len(rows) >= 3 else rows
    x = np.array([r["round"] for r in rows], dtype=float)
    if len(x) < 2:
        return dict.fromkeys(MEASURES, 0.0)
    return {m: float(np.polyfit(x, np.array([r[m] for r in rows], dtype=float), 1)[0]) for m in MEASURES}


def table(streams: dict[str, dict]) -> str:
    width = max(len(m) for m in MEASURES)
    head = f"{'slope per round':<{width}}" + "".join(f"{name:>22}" for name in streams)
    lines = [head, "-" * len(head)]
    for m in MEASURES:
        lines.append(f"{m:<{width}}" + "".join(f"{s['slopes'][m]:>22.4f}" for s in streams.values()))
    lines.append(f"{'rounds':<{width}}" + "".join(f"{len(s['rows']):>22d}" for s in streams.values()))
    lines.append(f"{'first/last round s':<{width}}" + "".join(
        f"{s['rows'][0]['seconds']:>11.1f}{s['rows'][-1]['seconds']:>11.1f}" for s in streams.values()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser("python -m ray_al.bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100, help="rounds of the embedded default (resident auto)")
    p.add_argument("--per-round-rounds", type=int, default=30, help="rounds with train.resident=never (0: none)")
    p.add_argument("--smoke", action="store_true", help="the smoke test's sizes (one epoch, 400 images)")
    p.add_argument("--dir", help="where the two run directories go (default: a temporary directory)")
    p.add_argument("--json", help="write the per-round rows and slopes here")
    p.add_argument("--cpus", type=int, default=0, help="local Ray's CPUs (0: all)")
    p.add_argument("overrides", nargs="*", help="section.key=value for both streams")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ray_al.workers.ray_utils import init_ray

    base = args.dir or tempfile.mkdtemp(prefix="ral_soak_")
    plan = {"default": (args.rounds, []), "per-round": (args.per_round_rounds, ["train.resident=never"])}
    init_ray(args.cpus)
    streams: dict[str, dict] = {}
    with MemWatch(ray_worker_kinds("ray::"), interval_s=0.2, list_every_s=1.0) as watch:
        watch.watch_object_store()
        for name, (rounds, extra) in plan.items():
            if rounds <= 0:
                continue
            cfg = stream_config(rounds, args.smoke, [*args.overrides, *extra])
            rows = run_stream(name, cfg, os.path.join(base, name), watch)
            streams[name] = {"rows": rows, "slopes": slopes(rows)}
            print(f"{name}: {len(rows)} rounds, ledger checked after each", flush=True)
    print(table(streams), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["python -m ray_al.bench.soak", *(argv or sys.argv[1:])]),
                       "streams": streams}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
