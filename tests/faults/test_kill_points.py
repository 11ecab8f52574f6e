"""SIGKILL of the cycle driver at every step boundary and inside every step, at the named kill points of
ray_al.core.faults, then `--resume`: the ledger and the results equal an uninterrupted run's with the same
seed, no label is lost or duplicated, and no output of a dead attempt is taken as committed. To make the
last visible, a drill spoils what the dead attempt left behind (embeddings shuffled between rows plus a
stray part file, a query batch of other ids): a resume that took it would end differently.

One run directory goes through the kills in order (each resume is killed at the next point), which costs
one Ray start per point instead of one run per point. The resident worker group gets every point; the
per-round path (train.resident=never: a Ray Train fit and a Ray Data embedding per round) the two that
differ between the paths, inside training and inside the embedding writes. Both end equal to one
uninterrupted run on the resident group: a per-round fit trains the same model (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_al.run.ledger import Ledger
from ray_al.run.rundir import RunDir
from tests.faults.drill import ARGS, kill_at, launch, ledger_rows, queried, read_only, results, round_dir
from tests.pinned import check_pinned

CYCLE = "ray_al.cycle"
# Up to 11 Ray starts per test: ~4 min idle, but 10-15 min on a shared 2-core box (pyproject's 900 s is per test)
pytestmark = pytest.mark.timeout(1800)
DEAD_PART = "part-dead-attempt.parquet"


def resume_killed_at(point: str, run_dir: Path, tmp: Path) -> None:
    kill_at(point, CYCLE, "--resume", str(run_dir), tmp=tmp)


def steps(run_dir: Path, r: int = 0) -> set:
    return set(RunDir(str(run_dir)).done_steps(r))


def payload(run_dir: Path, step: str, r: int = 0) -> dict:
    return RunDir(str(run_dir)).step_payload(r, step)


def check_killed_in_training(run_dir: Path) -> None:
    assert not steps(run_dir) and not (round_dir(run_dir) / "model.pt").exists()


def check_training_resumed(run_dir: Path) -> None:
    """The resumed round continued from the epoch-0 checkpoint the dead driver's workers wrote."""
    assert steps(run_dir) == {"train"}
    assert payload(run_dir, "train")["metrics"]["start_epoch"] == 1


def spoil_embeddings(run_dir: Path) -> None:
    """The dead attempt's embeddings, wrong: features and probabilities shuffled between rows, and one
    more part file (a dead attempt of more ranks, or Ray Data's own file names)."""
    files = sorted((round_dir(run_dir) / "embeddings").rglob("*.parquet"))
    assert files and "embed" not in steps(run_dir)
    for f in files:
        t = pq.read_table(f)
        order = np.random.default_rng(0).permutation(t.num_rows)
        for name in ("embedding", "probs"):
            t = t.set_column(t.schema.get_field_index(name), name, t.column(name).take(order))
        pq.write_table(t, f)
    unlabeled = next(f for f in files if f.parent.name == "split=unlabeled")
    shutil.copy(unlabeled, unlabeled.parent / DEAD_PART)


def check_embeddings_redone(run_dir: Path, reference: Path) -> None:
    root = round_dir(run_dir) / "embeddings"
    assert not list(root.rglob(DEAD_PART))
    for split in ("labeled", "unlabeled", "test"):
        ids = pq.read_table(root / f"split={split}", columns=["id"]).column("id").to_pylist()
        assert ids and len(ids) == len(set(ids)), split
    assert payload(run_dir, "embed")["accuracy"] == payload(reference, "embed")["accuracy"]


def spoil_queries(run_dir: Path) -> None:
    """The dead attempt's query batch, replaced by as many other unlabeled ids."""
    rd = RunDir(str(run_dir))
    chosen = queried(run_dir)
    pool = pq.read_table(run_dir / "data" / "pool.parquet", columns=["id"]).column("id").to_pylist()
    taken = set(chosen) | set(Ledger.load(str(run_dir)).ids.tolist())
    rd.write_queries(0, [i for i in pool if i not in taken][:len(chosen)])
    assert "select" not in steps(run_dir)


def check_read_only_round_is_not_committed(run_dir: Path, tmp: Path) -> None:
    """A resume that cannot write the round's directory stops naming the file; nothing is committed."""
    where = round_dir(run_dir)
    try:
        run = launch(CYCLE, "--resume", str(run_dir), tmp=tmp, preexec_fn=read_only(where))
    finally:
        where.chmod(0o755)
    assert run.returncode == 2, run.tail()
    assert f"cannot write {where / 'queries.parquet'}" in run.stderr and "Traceback" not in run.stderr
    assert "select" not in steps(run_dir) and not (where / "MANIFEST.json").exists()


def check_label_committed_unmarked(run_dir: Path) -> None:
    ledger = Ledger.load(str(run_dir))
    assert int((ledger.rounds == 1).sum()) == 15 and "label" not in steps(run_dir)


def check_label_recovered(run_dir: Path, reference: Path) -> None:
    assert payload(run_dir, "label").get("recovered") is True
    assert ledger_rows(run_dir) == ledger_rows(reference)  # each label once
    assert not (round_dir(run_dir) / "MANIFEST.json").exists()


def check_finished_like(run_dir: Path, reference: Path, tmp: Path) -> None:
    run = launch(CYCLE, "--resume", str(run_dir), tmp=tmp)
    assert run.returncode == 0, run.tail()
    assert ledger_rows(run_dir) == ledger_rows(reference)
    assert results(run_dir) == results(reference)


def test_resident_driver_killed_at_every_point_resumes_to_the_same_ledger(reference, tmp_path):
    run_dir = tmp_path / "run"
    kill_at("train.epoch", CYCLE, *ARGS, f"run.dir={run_dir}", tmp=tmp_path)
    check_killed_in_training(run_dir)
    resume_killed_at("train.done", run_dir, tmp_path)
    check_training_resumed(run_dir)
    resume_killed_at("embed.written", run_dir, tmp_path)
    spoil_embeddings(run_dir)
    resume_killed_at("embed.done", run_dir, tmp_path)
    check_embeddings_redone(run_dir, reference)
    assert "select" not in steps(run_dir)
    resume_killed_at("select.written", run_dir, tmp_path)
    spoil_queries(run_dir)
    check_read_only_round_is_not_committed(run_dir, tmp_path)
    resume_killed_at("select.done", run_dir, tmp_path)
    assert queried(run_dir) == queried(reference) and "label" not in steps(run_dir)
    resume_killed_at("label.committed", run_dir, tmp_path)
    check_label_committed_unmarked(run_dir)
    resume_killed_at("label.done", run_dir, tmp_path)
    check_label_recovered(run_dir, reference)
    resume_killed_at("round.committed", run_dir, tmp_path)
    assert (round_dir(run_dir) / "MANIFEST.json").exists() and not round_dir(run_dir, 1).exists()
    check_finished_like(run_dir, reference, tmp_path)


def test_per_round_fit_killed_in_training_and_in_the_embedding_writes(reference, tmp_path):
    run_dir = tmp_path / "run"
    kill_at("train.epoch", CYCLE, *ARGS, "train.resident=never", f"run.dir={run_dir}", tmp=tmp_path)
    check_killed_in_training(run_dir)
    resume_killed_at("embed.written", run_dir, tmp_path)
    assert payload(run_dir, "train")["metrics"]["start_epoch"] == 1
    spoil_embeddings(run_dir)
    check_finished_like(run_dir, reference, tmp_path)
    check_embeddings_redone(run_dir, reference)


def test_the_reference_run_selects_the_pinned_ids(reference):
    """The drills' reference is the default configuration at small sizes (2 epochs, seed 0): what it
    selects is pinned (tests/pinned.py), so a change to selection fails here naming the ids."""
    check_pinned("default at the drills' sizes", " ".join(["python -m ray_al.cycle", *ARGS]), ledger_rows(reference))
