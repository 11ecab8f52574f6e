"""`python -m ray_al.bench.scale` at a tiny size, as a user runs it (a subprocess with its own local Ray):
every stage of two rounds is timed and watched, each process kind a stage needs was seen with its memory,
and each round's labeled read is reported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import CIFAR10, REPO

ROWS = 400


def test_variants_are_distinct_seeded_images() -> None:
    from ray_al.bench.scale import variant

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = variant(pixels, np.random.default_rng([0, 5]))
    assert a.shape == pixels.shape and a.dtype == np.uint8
    assert np.array_equal(a, variant(pixels, np.random.default_rng([0, 5])))  # seeded
    assert not np.array_equal(a, variant(pixels, np.random.default_rng([0, 6])))


def test_scale_bench_reports_every_stage(tmp_path, cifar_parquet) -> None:
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "ray_al.bench.scale", "--rows", str(ROWS), "--out", str(out),
           "--unlabeled-per-round", "200", "--initial", "20", "--budget", "10", "--test-rows", "100", "--rounds", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = res["stages"]
    rounds = ["train", "embed", "select_kcenter", "select_default", "label_commit"]
    assert list(stages) == ["build", "ingest", "open", *rounds, *[f"{s} r1" for s in rounds]]
    for name, st in stages.items():
        assert st["seconds"] > 0 and st["rows_per_s"] > 0, name
        assert st["peak_rss_mib"]["driver"] > 0 and st["peak_anon_mib"]["driver"] > 0, name
        for kind, mib in st["peak_rss_mib"].items():
            assert mib > 0 and st["processes"][kind] >= 1, (name, kind)
    needed = {"build": "builder", "train": "train_worker", "embed": "embed_actor", "select_kcenter": "shard_actor",
              "ingest": "data_task"}
    for name, kind in needed.items():
        assert kind in stages[name]["peak_rss_mib"], (name, stages[name]["peak_rss_mib"], res["titles"])
    assert res["object_store_peak_mib"] > 0
    assert res["pool"]["rows"] == ROWS and res["label_commit"]["committed"] and res["label_commit r1"]["committed"]
    assert res["label_commit"]["labels"] == 20 + 10 and res["label_commit r1"]["labels"] == 20 + 10 + 10
    assert res["select_kcenter"]["k"] == res["select_default"]["k"] == res["select_kcenter r1"]["k"] == 10
    # each round's labeled read: its labels found, from only some of the pool's row groups
    reads = res["labeled_read"]
    assert [(x["round"], x["labels"], x["rows"]) for x in reads] == [(0, 20, 20), (1, 30, 30)]
    for x in reads:
        assert x["seconds"] > 0 and 1 <= x["row_groups_read"] <= x["row_groups_scanned"] <= x["row_groups"]
        assert x["row_groups"] == res["pool"]["row_groups"]
    assert "labeled read, round 1:" in proc.stdout
    assert 0 < res["train"]["images"] and res["embed"]["test_rows"] == 100
    assert not (out / f"rows_{ROWS}" / "images").exists()  # the folder goes once ingested


def test_built_images_are_distinct_decodable_jpegs(tmp_path, cifar_parquet) -> None:
    """The build writes one distinct JPEG per row, in class sub-folders, even past the source's end."""
    import pyarrow.parquet as pq
    from PIL import Image

    from ray_al.bench.scale import build_folder

    source = tmp_path / "source.parquet"
    full = pq.read_table(CIFAR10 / "test.parquet", columns=["image", "label_name"])
    pq.write_table(full.slice(0, 50), source)  # 120 rows from 50 sources: each repeated 2-3 times
    build_folder(str(source), str(tmp_path / "images"), 120, seed=1, workers=1, log=lambda *_: None)
    files = sorted((tmp_path / "images").rglob("*.jpg"))
    assert len(files) == 120
    assert {f.relative_to(tmp_path / "images").parts[0] for f in files} <= set(full.column("label_name").to_pylist())
    assert len({f.read_bytes() for f in files}) == 120
    for f in files[:10]:
        with Image.open(f) as img:
            assert img.size == (32, 32) and img.mode == "RGB"


def test_overrides_reach_the_rounds_config() -> None:
    from types import SimpleNamespace

    from ray_al.bench.scale import round_config

    args = SimpleNamespace(device="cpu", unlabeled_per_round=200, shards=2, rounds=1, initial=20, budget=10, seed=0,
                           overrides=["embed.actors=2", "embed.cpus_per_actor=0.5"])
    cfg = round_config(args, "/p/pool.parquet", "/p/test.parquet", "/p/run")
    assert (cfg.embed.actors, cfg.embed.cpus_per_actor) == (2, 0.5)
    assert (cfg.train.method, cfg.select.method, cfg.data.pool) == ("moby", "kcenter", "/p/pool.parquet")
