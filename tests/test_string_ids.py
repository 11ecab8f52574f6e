"""Ids users really have: `ingest` writes string ids (the file paths, class folder by class folder). The
whole cycle on such a pool: the resident group's rounds, every selection method on the round's embeddings
(k-center over shard actors too), and the file oracle over several rounds with a partial import."""
from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al import acquisition
from ray_al.core import config as config_mod
from ray_al.data import builtin

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _named(table: pa.Table, names: list[str], split: str) -> pa.Table:
    ids = [f"{split}/{names[y]}/{i:05d}.png" for i, y in zip(table.column("id").to_pylist(),
                                                             table.column("label").to_pylist())]
    return table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))


@pytest.fixture(scope="module")
def string_pool(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("string_ids")
    pool, test, names = builtin.digits(seed=0)
    pq.write_table(_named(pool.slice(0, 400), names, "pool"), root / "pool.parquet")
    pq.write_table(_named(test.slice(0, 200), names, "test"), root / "test.parquet")
    return root


def _cfg(root, *overrides: str) -> config_mod.Config:
    return config_mod.load(None, ["data.dataset=parquet", f"data.pool={root / 'pool.parquet'}",
                                  f"data.test={root / 'test.parquet'}", "al.initial_size=20", "al.budget=20",
                                  "train.epochs=2", "train.batch_size=16", *overrides])


def _run(cfg, run_uri: str):
    from ray_al.loop.rounds import Cycle, open_run

    run, spec, cfg = open_run(cfg, run_uri, resume=False)
    Cycle(cfg, run, spec, log=lambda _m: None).run_all()
    return run, spec


def _ledger(run):
    from ray_al.run.ledger import Ledger

    return Ledger.load(run.uri, id_type="string")


def test_a_string_id_pool_runs_every_round_and_every_method(string_pool, tmp_path) -> None:
    from ray_al.loop.selection import choose_queries

    run, spec = _run(_cfg(string_pool, "al.rounds=2", "select.method=kcenter"), str(tmp_path / "run"))
    assert spec.id_type == "string" and len(run.results()) == 3
    ledger = _ledger(run)
    ids = ledger.ids.tolist()
    assert len(ids) == 60 == len(set(ids)) and all(i.startswith("pool/") for i in ids)
    before = ledger.up_to_round(1)
    for method in sorted(acquisition.ACQUISITIONS):
        overrides = ["select.committee=heads"] if "committee" in method else []  # no MC passes were embedded
        cfg = _cfg(string_pool, "al.rounds=2", f"select.method={method}", *overrides)
        chosen = choose_queries(cfg, run.round_uri(1, "embeddings"), before, 20, 1)
        assert len(chosen.ids) == 20 == len(set(chosen.ids)), method
        assert all(isinstance(i, str) and i.startswith("pool/") for i in chosen.ids), method
        assert not set(chosen.ids) & set(before.ids.tolist()), method
    # k-center over two shard actors (the cycle's select.shards path) picks the one-process batch
    one = choose_queries(_cfg(string_pool, "select.method=kcenter"), run.round_uri(1, "embeddings"), before, 20, 1)
    two = choose_queries(_cfg(string_pool, "select.method=kcenter", "select.shards=2"), run.round_uri(1, "embeddings"),
                     before, 20, 1)
    assert two.ids == one.ids and two.why.startswith("select.method=kcenter on 2 shard actors"), two.why


def _answer(run, path, ids: list, labels_by_id: dict) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for i in ids:
            writer.writerow([i, labels_by_id[i]])
    return str(path)


def test_the_file_oracle_over_rounds_with_a_partial_import_on_string_ids(string_pool, tmp_path) -> None:
    from ray_al.run.oracle import import_labels

    truth = dict(zip(*(pq.read_table(string_pool / "pool.parquet", columns=[c]).column(c).to_pylist()
                       for c in ("id", "label"))))
    cfg = _cfg(string_pool, "al.rounds=2", "al.oracle=file", "select.method=margin")
    run, _ = _run(cfg, str(tmp_path / "run"))
    assert len(run.results()) == 0  # round 0 awaits its labels
    asked = run.read_queries(0).column("id").to_pylist()
    import_labels(run.uri, _answer(run, tmp_path / "half.csv", asked[:12], truth), allow_partial=True)
    run, _ = _run(cfg, run.uri)  # the same config carries on where it stopped
    assert [r["labels"] for r in run.results()] == [20]  # round 1 trained on 32 labels, now awaits its own
    assert run.step_payload(1, "train")["labels"] == 32
    asked = run.read_queries(1).column("id").to_pylist()
    import_labels(run.uri, _answer(run, tmp_path / "all.csv", asked, truth))
    run, _ = _run(cfg, run.uri)
    ledger = _ledger(run)
    assert [r["labels"] for r in run.results()] == [20, 32, 52]
    assert len(set(ledger.ids.tolist())) == 52 and all(ledger.labels_by_id()[i] == truth[i] for i in ledger.ids)
