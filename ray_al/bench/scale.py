"""Benchmark: one complete active-learning round on a pool of N real small images, stage by stage.

    python -m ray_al.bench.scale --rows 100000 [--rounds 3] [--device cuda] [--keep]

Stages, each timed and watched for memory:
  build           N distinct JPEGs in an image folder (class sub-folders): CIFAR-10 train images
                  (train.parquet of RAY_AL_CIFAR10 or the download cache, data/builtin.py) repeated, each with a seeded pad-and-crop,
                  flip and Gaussian noise, re-encoded (PIL, quality 90). Streamed in chunks by a pool of
                  processes: never N images in memory. Also a labeled test split (--test-rows of CIFAR-10 test).
  ingest          `ray_al.data.ingest.ingest` (what `python -m ray_al.data ingest` runs): the folder ->
                  pool Parquet. The folder is deleted after the round (it is ~4x the Parquet on disk).
  open            `loop.open_run` (pool and test checks) + `Cycle.initial_step` (the seed set, labels read).
  train           `Cycle.train_step` round 0: joint MoBY + CE, train.epochs=1, train.resident=never (a Ray Train
                  fit per round, the path for large pools) and train.unlabeled_per_round (SSL on a seeded
                  sample of the streamed pool, so a worker's memory does not grow with N).
  embed           `Cycle.embed_step`: the whole pool + test split through the Ray Data actor pool.
  select_kcenter  `Cycle.select_step` with select.method=kcenter, select.shards=--shards (Ray shard actors).
  select_default  `selection.choose_queries` on the same embeddings with the default select.method and
                  select.shards (config.SelectConfig(): auto, in the driver).
  label_commit    `Cycle.label_step` (simulated oracle, ledger commit) and `Cycle.run_round` (the round's commit).

With --rounds R, the stages train .. label_commit run for rounds 0 .. R-1 (rows `train r1`, ... after round
0's), each round's labeled set al.budget larger. Each round's labeled read (the training input's rows of the
labeled ids, `data.reader.read_ids`: only the row groups holding them are read) is reported apart: its
seconds and the row groups it scanned and read, from the train step's metrics.

rows/s is N / the stage's seconds for every stage (train streams all N rows but trains on a sample).

Memory, sampled from /proc every 0.1 s by `ray_al.bench.memwatch.MemWatch` (this process and every process below it, i.e. the local Ray's
services and workers): per stage and per process kind (by process title), the largest resident set of one
process of that kind (`rss`: VmHWM, reset at each stage start and whenever a worker changes kind, and the
sampled VmRSS; object-store pages a process touched count in it) and its largest private heap (`anon`:
RssAnon). Kinds: driver, train_worker (RayTrainWorker), embed_actor (MapWorker(...Embedder...)),
shard_actor (ShardActor), data_task (Ray Data read/map/write tasks), builder (the build's processes),
other (Ray's raylet/GCS/dashboard, idle workers, controllers). Object store: the raylet's
`object_store_bytes_used` (FormatGlobalMemoryInfo, what `ray memory --stats-only` prints), sampled every
second: bytes held in the store's shared memory, spilled objects not included (spilled bytes reported apart).

Prints a table and, as the last line, JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ray_al.bench.memwatch import MemWatch
from ray_al.data.builtin import CIFAR10_ENV, cifar10_dir

CHUNK_ROWS = 1000  # images per build job and per sub-folder
PAD, NOISE_STD, QUALITY = 4, 4.0, 90
KINDS = ("driver", "train_worker", "embed_actor", "shard_actor", "data_task", "builder", "other")
STAGES = ("build", "ingest", "open", "train", "embed", "select_kcenter", "select_default", "label_commit")


# ----------------------------------------------------------------------------------------------
# building N distinct images

_SOURCE: dict = {}


def _source(path: str, seed: int) -> tuple[list, list]:
    """(JPEG bytes, class names) of the source Parquet in a seeded order, once per build process (~50 MB
    for CIFAR-10). CIFAR-10's Parquet is sorted by class: without the shuffle a small N has one class."""
    if (path, seed) not in _SOURCE:
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["image", "label_name"])
        t = t.take(pa.array(np.random.default_rng(seed).permutation(t.num_rows)))
        _SOURCE.clear()
        _SOURCE[(path, seed)] = (t.column("image").to_pylist(), t.column("label_name").to_pylist())
    return _SOURCE[(path, seed)]


def variant(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded random pad-and-crop, horizontal flip and Gaussian noise of one (H, W, C) uint8 image."""
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
    out = padded[dy:dy + h, dx:dx + w]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    noisy = out.astype(np.float32) + rng.normal(0.0, NOISE_STD, out.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def image_path(folder: str, class_name: str, i: int) -> str:
    return os.path.join(folder, class_name, f"{i // CHUNK_ROWS:05d}", f"{i:08d}.jpg")


def build_chunk(job: tuple) -> int:
    """Rows [start, stop) of the folder: row i is shuffled source row i mod len(source), varied by a
    generator seeded with (seed, start)."""
    import io

    from PIL import Image

    source, folder, start, stop, seed = job
    images, names = _source(source, seed)
    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):
        j = i % len(images)
        with Image.open(io.BytesIO(images[j])) as img:
            pixels = np.asarray(img.convert("RGB"))
        path = image_path(folder, names[j], i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(variant(pixels, rng)).save(path, format="JPEG", quality=QUALITY)
    return stop - start


def build_folder(source: str, folder: str, rows: int, seed: int, workers: int, log=print) -> None:
    """The image folder, written chunk by chunk by `workers` spawned processes (no Ray yet)."""
    jobs = [(source, folder, s, min(s + CHUNK_ROWS, rows), seed) for s in range(0, rows, CHUNK_ROWS)]
    done, step = 0, max(rows // 10, 1)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for n in pool.imap_unordered(build_chunk, jobs):
            if (done + n) // step > done // step:
                log(f"  build: {done + n}/{rows} images")
            done += n


def write_test_split(source: str, dest: str, rows: int, seed: int) -> None:
    """A seeded subsample of the CIFAR-10 test split with string ids (the pool's ids are paths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(source, columns=["image", "label", "label_name"])
    keep = np.sort(np.random.default_rng(seed).choice(t.num_rows, min(rows, t.num_rows), replace=False))
    t = t.take(pa.array(keep))
    ids = pa.array([f"test/{i:05d}" for i in keep.tolist()], pa.string())
    pq.write_table(t.append_column("id", ids).append_column("path", ids), dest)


# ----------------------------------------------------------------------------------------------
# watching memory


_DATA_WORDS = ("Read", "Map", "Write", "Split", "Repartition", "Union", "Filter", "Project", "Limit",
               "_fetch", "_get_file", "_sample")


def kind_of(title: str, stage: str = "") -> str:
    """The process kind of a descendant of the driver, by its title (Ray workers retitle as they switch)."""
    if stage == "build":
        return "builder"  # Ray is not started before the build: every process below the driver is a builder
    if not title.startswith("ray::"):
        return "other"  # raylet, GCS, dashboard, log monitor
    for word, kind in (("RayTrainWorker", "train_worker"), ("Embedder", "embed_actor"),
                       ("ShardActor", "shard_actor")):
        if word in title:
            return kind
    if any(w in title for w in _DATA_WORDS):
        return "data_task"
    return "other"  # IDLE workers, the Train controller, Ray Data's coordinators


def stage_report(watch: MemWatch, stage: str) -> dict:
    """Peak memory per process kind and the object store's peak of one stage (module docstring)."""
    kinds = watch.peaks_by_stage.get(stage, {})
    return {"peak_rss_mib": {k: round(v["rss"], 1) for k, v in kinds.items()},
            "peak_anon_mib": {k: round(v["anon"], 1) for k, v in kinds.items()},
            "processes": {k: len(v["pids"]) for k, v in kinds.items()},
            "object_store_peak_mib": round(watch.store.get(stage, 0) / 2**20, 1)}


# ----------------------------------------------------------------------------------------------
# the round


def round_config(args, pool_uri: str, test_uri: str, run_uri: str):
    """One round of joint MoBY on the ingested pool, k-center over Ray shard actors, the per-round paths."""
    from ray_al.core import config as config_mod

    gpu = args.device == "cuda"
    return config_mod.load(None, [
        "data.dataset=parquet", f"data.pool={pool_uri}", f"data.test={test_uri}",
        "model.backbone=small_cnn", "train.method=moby", "train.mode=joint", "train.epochs=1",
        "train.resident=never", f"train.unlabeled_per_round={args.unlabeled_per_round}",
        f"train.use_gpu={gpu}", f"embed.gpus_per_actor={1.0 if gpu else 0.0}",
        "select.method=kcenter", f"select.shards={args.shards}",
        f"al.rounds={args.rounds}", f"al.initial_size={args.initial}", f"al.budget={args.budget}",
        f"al.seed={args.seed}",
        f"run.dir={run_uri}", "run.overwrite=true", *args.overrides,
    ])


def default_selection_config(cfg):
    """cfg with select.method and select.shards at their defaults (config.SelectConfig)."""
    from ray_al.core import config as config_mod

    d = config_mod.SelectConfig()
    return config_mod.replace(cfg, select={"method": d.method, "shards": d.shards})


def stage_name(name: str, r: int) -> str:
    return name if r == 0 else f"{name} r{r}"


class Round:
    """Rounds of the library's own loop (loop.open_run + Cycle), step by step so each is a stage; `info`
    holds each stage's figures under its stage name."""

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.info: dict = {}
        self.labeled_reads: list[dict] = []

    def open(self) -> None:
        from ray_al.loop.rounds import Cycle, open_run
        from ray_al.loop.rules import check_config

        check_config(self.cfg)
        run, spec, cfg = open_run(self.cfg, self.cfg.run.dir, resume=False)
        self.cycle = Cycle(cfg, run, spec, log=self.log)
        self.cycle.initial_step()

    def train(self, r: int) -> None:
        self.ledger = self.cycle.ledger().up_to_round(r)
        self.state = self.cycle.train_step(r, self.ledger, None)
        metrics = self.cycle.run.step_payload(r, "train")["metrics"]
        self.info[stage_name("train", r)] = {k: metrics[k] for k in ("images", "steps", "loss") if k in metrics}
        read = {k[len("labeled_read_"):]: v for k, v in metrics.items() if k.startswith("labeled_read_")}
        self.labeled_reads.append({"round": r, "labels": len(self.ledger), **read})

    def embed(self, r: int) -> None:
        payload = self.cycle.embed_step(r, self.ledger, self.state)
        self.info[stage_name("embed", r)] = {"accuracy": payload["accuracy"], "corrupt": payload["corrupt"],
                                             "test_rows": payload["test_rows"]}

    def select_kcenter(self, r: int) -> None:
        self.ids = self.cycle.select_step(r, self.ledger)
        self.info[stage_name("select_kcenter", r)] = {
            "k": len(self.ids), "shards": self.cfg.select.shards,
            "selected_by": self.cycle.run.step_payload(r, "select")["selected_by"]}

    def select_default(self, r: int) -> None:
        from ray_al.core import config as config_mod
        from ray_al.loop.selection import choose_queries

        cfg = default_selection_config(self.cfg)
        chosen = choose_queries(cfg, self.cycle.run.round_uri(r, "embeddings"), self.ledger,
                                config_mod.round_budget(cfg, r), r)
        self.info[stage_name("select_default", r)] = {
            "method": cfg.select.method, "shards": cfg.select.shards, "k": len(chosen.ids),
            "selected_by": chosen.method, "same_ids_as_sharded": len(set(chosen.ids) & set(self.ids))}

    def label_commit(self, r: int) -> None:
        self.cycle.label_step(r, self.ids, self.cycle.ledger())
        row = self.cycle.run_round(r, None)  # every step is done: this is the round's commit
        if r == self.cfg.al.rounds - 1:
            self.cycle.close()
        self.info[stage_name("label_commit", r)] = {"labels": len(self.cycle.ledger()), "committed": row is not None}


# ----------------------------------------------------------------------------------------------
# driving and reporting


def parquet_layout(uri: str) -> dict:
    """Files, row groups, rows and bytes of a Parquet directory (how ingest laid the pool out)."""
    import pyarrow.parquet as pq

    files = sorted(p for p in Path(uri).rglob("*.parquet"))
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in files]
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    return {"files": len(files), "row_groups": int(sum(groups)), "rows": int(sum(rows)),
            "max_rows_per_row_group": int(max((r // max(g, 1) for r, g in zip(rows, groups)), default=0)),
            "mib": round(sum(f.stat().st_size for f in files) / 2**20, 1)}


def pool_reusable(pool_uri: str, rows: int) -> bool:
    """An earlier ingest of the same N finished here (--keep)."""
    done = Path(pool_uri) / "_classes.json"
    return done.is_file() and json.loads(done.read_text()).get("images") == rows


def build_and_ingest(args, watch: MemWatch, timed, paths: dict, log=print) -> dict:
    """Stages build and ingest (skipped with --keep when the pool of this N is there); Ray starts between."""
    from ray_al.data.ingest import ingest
    from ray_al.workers.ray_utils import init_ray

    reuse = args.keep and pool_reusable(paths["pool"], args.rows) and Path(paths["test"]).is_file()
    if not reuse:
        shutil.rmtree(paths["images"], ignore_errors=True)
        with timed("build"):
            build_folder(str(args.source), paths["images"], args.rows, args.seed, args.build_workers, log)
            write_test_split(str(args.test_source), paths["test"], args.test_rows, args.seed)
    started = time.perf_counter()
    init_ray()
    watch.watch_object_store()
    ray_start = time.perf_counter() - started
    if not reuse:
        with timed("ingest"):
            ingest(paths["images"], paths["pool"], overwrite=True)
    return {"reused_pool": reuse, "ray_start_seconds": round(ray_start, 2)}


def run(args, log=print) -> dict:
    """Every stage, in order; the result the JSON line prints."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Its own local Ray: with no address, ray.init() joins any Ray it finds running on the machine (seen:
    # another session's). Under `ray job submit`, RAY_ADDRESS is set and kept.
    os.environ.setdefault("RAY_ADDRESS", "local")
    base = Path(args.out) / f"rows_{args.rows}"
    base.mkdir(parents=True, exist_ok=True)
    paths = {"images": str(base / "images"), "pool": str(base / "pool"), "test": str(base / "test.parquet"),
             "run": str(base / "run")}
    seconds: dict = {}

    with MemWatch(kind_of, interval_s=0.1, list_every_s=0.5) as watch:
        @contextlib.contextmanager
        def timed(name: str):
            log(f"[{time.strftime('%H:%M:%S')}] {name} ...")
            started = time.perf_counter()
            with watch.stage(name):
                yield
            seconds[name] = time.perf_counter() - started
            log(f"[{time.strftime('%H:%M:%S')}] {name}: {seconds[name]:.1f} s")

        setup = build_and_ingest(args, watch, timed, paths, log)
        cfg = round_config(args, paths["pool"], paths["test"], paths["run"])
        rnd = Round(cfg, log)
        with timed("open"):
            rnd.open()
        for r in range(args.rounds):
            for name in STAGES[3:]:
                with timed(stage_name(name, r)):
                    getattr(rnd, name)(r)
    # after the watch has stopped: its object-store sampler talks to the GCS, and a call to a GCS that
    # shut down makes Ray's core worker exit the process (rc 1, no traceback) after 60 s
    ray.shutdown()
    started = time.perf_counter()  # after the round: 100k small files take minutes to delete
    shutil.rmtree(paths["images"], ignore_errors=True)  # ~4x the Parquet on disk (4 KiB blocks)
    setup["delete_images_seconds"] = round(time.perf_counter() - started, 1)
    return result(args, cfg, watch, seconds, {**setup, **rnd.info, "labeled_read": rnd.labeled_reads,
                                              "pool": parquet_layout(paths["pool"])})


def result(args, cfg, watch: MemWatch, seconds: dict, info: dict) -> dict:
    stages = {name: {"seconds": round(s, 2), "rows_per_s": round(args.rows / s, 1), **stage_report(watch, name)}
              for name, s in seconds.items()}
    overall = {kind: max((st["peak_rss_mib"].get(kind, 0.0) for st in stages.values()), default=0.0)
               for kind in KINDS}
    return {
        "bench": "scale", "rows": args.rows, "device": args.device, "cpus": os.cpu_count(),
        "config": {"backbone": cfg.model.backbone, "train.method": cfg.train.method,
                   "train.epochs": cfg.train.epochs, "train.resident": cfg.train.resident,
                   "train.unlabeled_per_round": cfg.train.unlabeled_per_round, "select.shards": cfg.select.shards,
                   "al.rounds": cfg.al.rounds, "al.initial_size": cfg.al.initial_size, "al.budget": cfg.al.budget,
                   "embed.actors": cfg.embed.actors, "embed.cpus_per_actor": cfg.embed.cpus_per_actor,
                   "overrides": list(args.overrides), "test_rows": args.test_rows},
        "stages": stages, "peak_rss_mib": {k: v for k, v in overall.items() if v},
        "object_store_peak_mib": max((st["object_store_peak_mib"] for st in stages.values()), default=0.0),
        "object_store_spilled_mib": round(watch.spilled / 2**20, 1),
        "total_seconds": round(sum(seconds.values()), 2), "titles": watch.titles,
        "loadavg_1min": round(os.getloadavg()[0], 2), **info,
    }


def print_table(res: dict) -> None:
    shown = [k for k in KINDS if any(k in st["peak_rss_mib"] for st in res["stages"].values())]
    print(f"\nbench.scale: {res['rows']} rows, device {res['device']}; peak RSS MiB of the largest process of "
          f"each kind; train.unlabeled_per_round={res['config']['train.unlabeled_per_round']} "
          f"(SSL on a sample: training memory bounded), train.resident=never")
    print(f"{'stage':<18}{'seconds':>9}{'rows/s':>10}" + "".join(f"{k:>13}" for k in shown) + f"{'obj store':>11}")
    for name, st in res["stages"].items():
        cells = "".join(f"{st['peak_rss_mib'][k]:>13.0f}" if k in st["peak_rss_mib"] else f"{'-':>13}" for k in shown)
        print(f"{name:<18}{st['seconds']:>9.1f}{st['rows_per_s']:>10.0f}{cells}{st['object_store_peak_mib']:>11.0f}")
    train, emb = res.get("train", {}), res.get("embed", {})
    print(f"train: {train.get('images', '?')} images in {train.get('steps', '?')} steps; test accuracy "
          f"{emb.get('accuracy', float('nan')):.3f}; pool Parquet {res['pool']}; object store peak "
          f"{res['object_store_peak_mib']:.0f} MiB, spilled {res['object_store_spilled_mib']:.0f} MiB; "
          f"total {res['total_seconds']:.0f} s; load average {res['loadavg_1min']}")
    print_labeled_reads(res.get("labeled_read", []))


def print_labeled_reads(reads: list[dict]) -> None:
    """One line per round: the training input's labeled read (data.reader.read_ids)."""
    for x in reads:
        print(f"labeled read, round {x['round']}: {x.get('seconds', float('nan')):.2f} s for {x['labels']} labels "
              f"({x.get('rows', '?')} rows found; row groups: {x.get('row_groups_read', '?')} read, "
              f"{x.get('row_groups_scanned', '?')} scanned, of {x.get('row_groups', '?')} in "
              f"{x.get('files', '?')} files)")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10000, help="pool images N")
    p.add_argument("--out", default="runs/bench_scale", help="work directory (pool, run) under OUT/rows_N")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--keep", action="store_true", help="reuse OUT/rows_N's pool when one of N rows is there")
    p.add_argument("--rounds", type=int, default=1, help="active-learning rounds (train .. label_commit each)")
    p.add_argument("--shards", type=int, default=2, help="k-center shard actors of the first selection")
    p.add_argument("--unlabeled-per-round", type=int, default=5000, help="train.unlabeled_per_round")
    p.add_argument("--initial", type=int, default=100, help="al.initial_size")
    p.add_argument("--budget", type=int, default=100, help="al.budget")
    p.add_argument("--test-rows", type=int, default=1000, help="CIFAR-10 test images in the test split")
    p.add_argument("--build-workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", type=Path, default=None, help=f"CIFAR-10 train Parquet (default: {CIFAR10_ENV}'s, "
                   "else the download cache's)")
    p.add_argument("--test-source", type=Path, default=None, help="CIFAR-10 test Parquet (default: as --source)")
    p.add_argument("overrides", nargs="*", help="section.key=value for the rounds' config (e.g. embed.actors=2)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: run at least one round.")
    if args.source is None or args.test_source is None:
        folder = cifar10_dir()
        args.source = args.source or folder / "train.parquet"
        args.test_source = args.test_source or folder / "test.parquet"
    for f in (args.source, args.test_source):
        if not f.is_file():
            raise SystemExit(f"{f} not found: point --source/--test-source at CIFAR-10 Parquet files (`image`, "
                             "`label`, `label_name`).")
    res = run(args)
    print_table(res)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
