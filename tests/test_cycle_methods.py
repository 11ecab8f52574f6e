"""Every registered selection method through the cycle's own embed and select steps.

One real smoke round 0 (`python -m ray_al.cycle --smoke-test al.rounds=0`: Ray Train, then Ray Data
embedding of the pool) gives the embeddings; the committee methods get their own embedding pass (MC-dropout
outputs are only computed when a method needs them); with `select.committee=heads` they run on the plain
round-0 embeddings, the committee fitted at selection time. Each method then runs `selection.choose_queries`, the
code the round loop runs between embedding and labelling, and k-center over 2 Ray shard actors must pick what
the single-process k-center picks, undecodable rows left out on both paths. Training every method end to end
is test_train's job; this covers the selection half without paying for a Ray Train run per method.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ray_al import acquisition
from ray_al.core import config as config_mod
from ray_al.data.pool import PoolSpec
from ray_al.core.embeddings import matrix, read_embeddings, split_files
from ray_al.run.ledger import Ledger
from ray_al.loop.rounds import Cycle
from ray_al.run.rundir import RunDir
from tests.rayhead import shared_env
from ray_al.loop.selection import choose_queries

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["al.rounds=0", "al.initial_size=20", "al.budget=15"]
K = 15


def committee(method: str) -> bool:
    return "committee_probs" in acquisition.needs(method, optional=False)


@pytest.fixture(scope="module")
def round0(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("methods") / "round0"
    proc = subprocess.run([sys.executable, "-m", "ray_al.cycle", "--smoke-test", *SMOKE, f"run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **shared_env()})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "rounds" / "0000" / "MANIFEST.json").is_file()
    return run_dir


def make_cycle(run_dir: Path, *overrides: str) -> Cycle:
    cfg = config_mod.smoke(config_mod.load(None, [*SMOKE, *overrides]))
    run = RunDir.open(str(run_dir))
    return Cycle(cfg, run, PoolSpec.from_dict(run.info["pool"]["spec"]), log=lambda _m: None)


@pytest.fixture(scope="module")
def committee_run(round0, ray_local, tmp_path_factory) -> Path:
    """A copy of round 0 whose embedding step is redone with the committee outputs."""
    run_dir = tmp_path_factory.mktemp("committee") / "run"
    shutil.copytree(round0, run_dir)
    rnd = run_dir / "rounds" / "0000"
    for stale in (rnd / "MANIFEST.json", rnd / "steps" / "embed.json"):
        stale.unlink()
    shutil.rmtree(rnd / "embeddings")
    cyc = make_cycle(run_dir, "select.method=committee_vote_entropy")
    try:
        ledger = cyc.ledger().up_to_round(0)
        state = cyc.train_step(0, ledger, None)  # marked done in round 0: the saved model, no retraining
        payload = cyc.embed_step(0, ledger, state)
    finally:
        cyc.close()  # the resident group's driver thread must not outlive this module's Ray
    assert 0.0 <= payload["accuracy"] <= 1.0
    return run_dir


def selected(run_dir: Path, method: str, *overrides: str) -> tuple[list, Ledger, Cycle]:
    cyc = make_cycle(run_dir, f"select.method={method}", *overrides)
    ledger = Ledger.load(cyc.run.uri, id_type=cyc.pool.id_type).up_to_round(0)
    ids = choose_queries(cyc.cfg, cyc.run.round_uri(0, "embeddings"), ledger, K, 0).ids
    return ids, ledger, cyc


@pytest.mark.parametrize("method", sorted(acquisition.ACQUISITIONS))
def test_every_method_selects_a_valid_batch_from_cycle_embeddings(method, round0, request):
    run_dir = request.getfixturevalue("committee_run") if committee(method) else round0
    ids, ledger, cyc = selected(run_dir, method)
    unlabeled = set(read_embeddings(cyc.run.round_uri(0, "embeddings"), "unlabeled",
                                    columns=["id"]).column("id").to_pylist())
    assert len(ids) == K and len(set(ids)) == K, ids
    assert set(ids) <= unlabeled and not set(ids) & set(ledger.ids.tolist())
    again, _, _ = selected(run_dir, method)
    assert again == ids, "the same round and seed must select the same batch"


HEADS_CASES = [(m, ()) for m in sorted(acquisition.ACQUISITIONS) if committee(m)] + [
    ("kcenter", ("select.prefilter=committee_kl",))]


@pytest.mark.parametrize(("method", "extra"), HEADS_CASES)
def test_committee_methods_with_a_heads_committee_select_from_the_plain_embeddings(method, extra, round0):
    ids, ledger, cyc = selected(round0, method, "select.committee=heads", *extra)
    unlabeled = set(read_embeddings(cyc.run.round_uri(0, "embeddings"), "unlabeled",
                                    columns=["id"]).column("id").to_pylist())
    assert len(ids) == K and len(set(ids)) == K, ids
    assert set(ids) <= unlabeled and not set(ids) & set(ledger.ids.tolist())
    again, _, _ = selected(round0, method, "select.committee=heads", *extra)
    assert again == ids, "the same round and seed must fit the same heads and select the same batch"
    # not the id-order tie-break of a committee that never disagrees
    assert ids != sorted(unlabeled)[:K]
    if method == "committee_kl":
        other_seed, _, _ = selected(round0, method, "select.committee=heads", "al.seed=1")
        assert other_seed != ids, "another seed draws other bootstrap resamples"


def test_kcenter_over_two_shard_actors_equals_one_process(round0, ray_local):
    single, _, _ = selected(round0, "kcenter")
    sharded, _, _ = selected(round0, "kcenter", "select.shards=2")
    assert sharded == single
    # not a coincidence of an easy case: a different seed set gives a different batch
    entropy, _, _ = selected(round0, "entropy")
    assert entropy != single


def test_committee_outputs_are_written_only_when_needed(round0, committee_run):
    plain = read_embeddings(str(round0 / "rounds" / "0000" / "embeddings"), "unlabeled")
    with_committee = read_embeddings(str(committee_run / "rounds" / "0000" / "embeddings"), "unlabeled")
    assert "committee" not in plain.column_names
    cfg = config_mod.smoke(config_mod.load(None, SMOKE))
    members = matrix(with_committee.column("committee"))
    assert members.shape[0] == with_committee.num_rows
    assert members.shape[1] == cfg.select.committee_size * 10  # members x digits classes
    per_member = members.reshape(len(members), cfg.select.committee_size, 10)
    assert abs(per_member.sum(axis=2) - 1).max() < 1e-4
    assert abs(per_member - per_member.mean(axis=1, keepdims=True)).max() > 1e-3, "members never disagree"
    assert sorted(plain.column("id").to_pylist()) == sorted(with_committee.column("id").to_pylist())


def test_sharded_kcenter_never_selects_undecodable_images(round0, ray_local, tmp_path):
    """The shard actors used to load the embedding files without the undecodable-row filter, so with
    select.shards > 1 an image embedded as zero pixels could be sent to annotators."""
    run_dir = tmp_path / "run"
    shutil.copytree(round0, run_dir)
    picked, _, _ = selected(run_dir, "kcenter")
    for f in split_files(str(run_dir / "rounds" / "0000" / "embeddings"), "unlabeled"):
        table = pq.read_table(f)  # mark what k-center picked as undecodable
        corrupt = pc.is_in(table.column("id"), value_set=pa.array(picked, table.schema.field("id").type))
        pq.write_table(table.set_column(table.column_names.index("corrupt"), "corrupt", corrupt), f)
    single, _, _ = selected(run_dir, "kcenter")
    sharded, _, _ = selected(run_dir, "kcenter", "select.shards=2")
    assert not set(sharded) & set(picked), "the shards selected undecodable images"
    assert not set(single) & set(picked) and sharded == single
