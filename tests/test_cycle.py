"""The whole loop as users run it: `python -m ray_al.cycle` in a subprocess, on a Ray head the session
shares (tests/rayhead.py).

One uninterrupted run is the reference; a second run with the same seed is SIGKILLed in the middle of a
round and resumed, and must end with the same ledger. The file oracle loop (export, import, resume) runs
on the same config. Sizes are the smoke test's, so each cycle takes a minute or two on 2 cores.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ray_al.core import config as config_mod
from ray_al.run.ledger import Ledger
from ray_al.loop.selection import seed_set
from tests.pinned import check_pinned
from tests.rayhead import shared_env

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--smoke-test", "al.rounds=1", "al.initial_size=20", "al.budget=15"]


def cycle(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m ray_al.cycle args`, joined to the session's shared Ray head (tests/rayhead.py)."""
    return subprocess.run([sys.executable, "-m", "ray_al.cycle", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **shared_env()})


def ledger_rows(run_dir: Path) -> list[tuple]:
    table = Ledger.load(str(run_dir)).table
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "label", "round", "source"))))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cycle") / "reference"
    proc = cycle(*SMOKE, f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc


def test_end_to_end_writes_table_results_plot_and_ledger(reference_run):
    run_dir, proc = reference_run
    assert "round   labels  accuracy" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1] and [r["labels"] for r in rows] == [20, 35]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert set(rows[0]["seconds"]) == {"train", "embed", "select", "label"}
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the run directory is the user's only; the files ray_al writes itself too
    assert (run_dir.stat().st_mode & 0o777) == 0o700
    assert all(f.stat().st_mode & 0o077 == 0 for f in (run_dir / "results.jsonl", run_dir / "run.json"))
    ledger = ledger_rows(run_dir)
    assert len(ledger) == 35 and len({r[0] for r in ledger}) == 35
    assert sum(1 for r in ledger if r[3] == "initial") == 20 and sum(1 for r in ledger if r[2] == 1) == 15
    # the simulated oracle answered with the pool's true labels
    pool = pq.read_table(run_dir / "data" / "pool.parquet", columns=["id", "label"]).to_pydict()
    truth = dict(zip(pool["id"], pool["label"]))
    assert all(truth[i] == y for i, y, _, _ in ledger)
    # the queried ids were unlabeled before (queries.parquet of round 0 = ledger round 1)
    queried = pq.read_table(run_dir / "rounds" / "0000" / "queries.parquet").column("id").to_pylist()
    assert sorted(queried) == sorted(r[0] for r in ledger if r[2] == 1)
    # the default configuration selects the ids it selected when pinned (tests/pinned.py)
    check_pinned("smoke cycle", " ".join(["python -m ray_al.cycle", *SMOKE]), ledger)
    # rerunning a finished run changes nothing and reprints the table
    again = cycle(*SMOKE, f"run.dir={run_dir}")
    assert again.returncode == 0 and "round   labels  accuracy" in again.stdout
    assert ledger_rows(run_dir) == ledger


def test_file_oracle_export_import_resume(reference_run, tmp_path):
    reference_dir, _ = reference_run
    run_dir = tmp_path / "annotators"
    first = cycle(*SMOKE, "al.oracle=file", f"run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "await labels" in first.stdout and "python -m ray_al.label export" in first.stdout
    queries = tmp_path / "queries.csv"
    label = [sys.executable, "-m", "ray_al.label"]
    out = subprocess.run([*label, "export", str(run_dir), "--out", str(queries), "--images-dir",
                          str(tmp_path / "images")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert queries.stat().st_mode & 0o077 == 0  # the exported batch is the user's only
    rows = list(csv.DictReader(queries.open()))
    assert len(rows) == 15 and all(Path(r["uri"]).is_file() for r in rows)
    pool = pq.read_table(run_dir / "data" / "pool.parquet", columns=["id", "label"]).to_pydict()
    truth = dict(zip(pool["id"], pool["label"]))
    answers = tmp_path / "labels.csv"
    # a file naming an id that was never queried is refused, and nothing is imported
    with answers.open("w") as f:
        f.write("id,label\n" + "".join(f"{r['id']},{truth[int(r['id'])]}\n" for r in rows) + "999999,1\n")
    bad = subprocess.run([*label, "import", str(run_dir), str(answers)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "999999" in bad.stderr and len(ledger_rows(run_dir)) == 20
    with answers.open("w") as f:
        f.write("id,label\n" + "".join(f"{r['id']},{truth[int(r['id'])]}\n" for r in rows))
    ok = subprocess.run([*label, "import", str(run_dir), str(answers)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    resumed = cycle("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # annotators who answer like the simulated oracle give the same labeled set (source aside)
    strip = lambda rows: [(i, y, r) for i, y, r, _ in rows]  # noqa: E731
    assert strip(ledger_rows(run_dir)) == strip(ledger_rows(reference_dir))


@pytest.mark.parametrize("args, message", [
    (["al.budgett=3"], "unknown config key 'al.budgett'"),
    (["data.dataset=parquet", "data.pool=/nonexistent/pool.parquet", "data.test=/nonexistent/t.parquet"],
     "/nonexistent/pool.parquet"),
    (["al.budget=5000"], "the labelling plan needs"),
    (["select.method=entropyy"], "entropy"),
])
def test_bad_input_is_refused_with_exit_2(tmp_path, args, message):
    proc = cycle(*args, f"run.dir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "ledger").exists()


@pytest.fixture(scope="module")
def rotnet_checkpoint(tmp_path_factory) -> Path:
    """pretrain: SSL once on the pool (saved, reused by every round), then head-only rounds."""
    pre_dir = tmp_path_factory.mktemp("pretrain") / "run"
    pre = cycle(*SMOKE, "train.method=rotnet", "train.mode=pretrain", f"run.dir={pre_dir}")
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    assert "pre-training rotnet" in pre.stdout
    checkpoint = pre_dir / "pretrain" / "model.pt"
    assert checkpoint.is_file()
    rows = [json.loads(line) for line in (pre_dir / "results.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["labels"]) for r in rows] == [("pretrain", 20), ("pretrain", 35)]
    return checkpoint


def test_pretrain_then_frozen_zero_shot(rotnet_checkpoint, tmp_path):
    """frozen: a second run reuses the pretrain checkpoint as is, with zero-shot k-center (one saved order,
    budgets are prefixes)."""
    checkpoint = rotnet_checkpoint
    frozen_dir = tmp_path / "frozen"
    frozen = cycle(*SMOKE, "train.method=rotnet", "train.mode=frozen", f"train.checkpoint={checkpoint}",
                   "select.zero_shot=true", "al.initial=typiclust", "run.keep_embeddings=last",
                   f"run.dir={frozen_dir}")
    assert frozen.returncode == 0, frozen.stdout[-3000:] + frozen.stderr[-3000:]
    # run.keep_embeddings=last: round 0's embeddings went when round 1 committed; round 1's stay
    assert not (frozen_dir / "rounds" / "0000" / "embeddings").exists()
    assert (frozen_dir / "rounds" / "0001" / "embeddings" / "split=test").is_dir()
    assert "pre-training" not in frozen.stdout  # the given checkpoint, not a new pre-training
    # al.initial=typiclust: the seed set is TypiClust's cold-start pick on the checkpoint's pool features
    assert "seed set: 20 images by typiclust" in frozen.stdout
    cfg = config_mod.load(None, ["al.initial=typiclust", "al.initial_size=20"])
    pool_ids = pq.read_table(frozen_dir / "data" / "pool.parquet", columns=["id"]).column("id").to_numpy()
    expected = seed_set(cfg, str(frozen_dir / "pool_features"), pool_ids, seed=0)
    assert sorted(r[0] for r in ledger_rows(frozen_dir) if r[3] == "initial") == sorted(expected.tolist())
    order = pq.read_table(frozen_dir / "zero_shot_order.parquet").column("id").to_pylist()
    queried = pq.read_table(frozen_dir / "rounds" / "0000" / "queries.parquet").column("id").to_pylist()
    initial = {r[0] for r in ledger_rows(frozen_dir) if r[3] == "initial"}
    assert queried == [i for i in order if i not in initial][:15]


def test_file_oracle_labels_the_seed_set_al_initial_picked_as_the_first_query_batch(rotnet_checkpoint, tmp_path):
    """al.initial=typiclust with al.oracle=file: the seed set is TypiClust's pick among every pool row, exported
    to annotators before round 0; once imported it is the ledger's round 0 and round 0 trains on it."""
    run_dir = tmp_path / "run"
    args = ["train.method=rotnet", "train.mode=frozen", f"train.checkpoint={rotnet_checkpoint}", "al.initial=typiclust",
            "al.oracle=file", "al.rounds=0"]
    first = cycle("--smoke-test", "al.initial_size=20", *args, f"run.dir={run_dir}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "the seed set: 20 images await labels" in first.stdout
    assert not (run_dir / "rounds" / "0000").exists()  # round 0 waits for the seed labels
    assert len(Ledger.load(str(run_dir))) == 0  # nothing labeled before the annotators answer
    queries, answers = tmp_path / "seed.csv", tmp_path / "labels.csv"
    label = [sys.executable, "-m", "ray_al.label"]
    out = subprocess.run([*label, "export", str(run_dir), "--out", str(queries)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "queries of the seed set" in out.stdout, out.stderr
    ids = [int(r["id"]) for r in csv.DictReader(queries.open())]
    cfg = config_mod.load(None, ["al.initial=typiclust", "al.initial_size=20"])
    assert sorted(ids) == sorted(seed_set(cfg, str(run_dir / "pool_features"), None, seed=0).tolist())
    pool = pq.read_table(run_dir / "data" / "pool.parquet", columns=["id", "label"]).to_pydict()
    truth = dict(zip(pool["id"], pool["label"]))
    answers.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))
    ok = subprocess.run([*label, "import", str(run_dir), str(answers)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "labels for the seed set" in ok.stdout, ok.stderr
    resumed = cycle("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert sorted((i, y, r) for i, y, r, _ in ledger_rows(run_dir)) == sorted((i, truth[i], 0) for i in ids)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [(r["round"], r["labels"]) for r in rows] == [(0, 20)]
