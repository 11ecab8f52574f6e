"""'None of these classes' (out-of-distribution) answers end to end, without Ray: the labels CSV value, the
ledger's record and accessors, the simulated oracle and the pool contract, selection (never a class, still
covered ground), `label status`, and the mixed-pool benchmark's pool and figures."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al import acquisition

from ray_al.core import config
from ray_al.acquisition.heads import heads_committee_probs
from ray_al.data.pool import PoolError, check_pool
from ray_al.core.embeddings import fixed_list
from ray_al.run.ledger import OOD_LABEL, Ledger, LedgerError
from ray_al.run.oracle import LabelImportError, SimulatedOracle, _parse_label, import_labels
from ray_al.loop.selection import for_method, choose_queries, strategy_input
from tests.test_oracle_label import make_run, write_csv

NAMES = ["airplane", "bird", "cat"]


# ----------------------------------------------------------------------------- the labels CSV value
@pytest.mark.parametrize(("raw", "expected"), [
    ("none", OOD_LABEL), (" NONE ", OOD_LABEL), ("None", OOD_LABEL), ("-1", OOD_LABEL),
    ("-2", None), ("3", None), ("nothing", None), ("2", 2), ("Cat", 2),
])
def test_none_and_minus_one_parse_as_ood_and_other_negatives_do_not(raw, expected):
    assert _parse_label(raw, 3, NAMES) == expected


def test_a_class_actually_named_none_keeps_its_name():
    assert _parse_label("none", 3, ["some", "none", "all"]) == 1
    assert _parse_label("-1", 3, ["some", "none", "all"]) == OOD_LABEL  # -1 still says "no class"
    assert _parse_label("none", 3, None) == OOD_LABEL  # no class names: integers or none


# ----------------------------------------------------------------------------- the ledger
def test_ledger_records_ood_keeps_its_id_and_leaves_it_out_of_in_class(tmp_path):
    led = Ledger.empty("int64").add([1, 2, 3], [0, OOD_LABEL, 1], 0, "initial", num_classes=2)
    led = led.add([7, 8], [OOD_LABEL, 1], 1, "query", num_classes=2)
    assert led.ids.tolist() == [1, 2, 3, 7, 8] and led.contains([2, 7, 9]).tolist() == [True, True, False]
    inside = led.in_class()
    assert inside.ids.tolist() == [1, 3, 8] and inside.labels.tolist() == [0, 1, 1]
    assert led.counts() == {"rows": 5, "ood": 2, "by_source": {"initial": 3, "query": 2}, "by_round": {0: 3, 1: 2},
                            "ood_by_source": {"initial": 1, "query": 1}}
    with pytest.raises(LedgerError, match="already labeled: \\[7\\]"):  # an OOD id is never asked again
        led.add([7], [0], 2, "query", num_classes=2)
    led.commit(str(tmp_path))
    back = Ledger.load(str(tmp_path))
    assert back.labels_by_id() == {1: 0, 2: OOD_LABEL, 3: 1, 7: OOD_LABEL, 8: 1}
    assert back.in_class().ids.tolist() == [1, 3, 8] and back.in_class().version == back.version == 1


def test_only_minus_one_is_a_negative_label_the_ledger_takes():
    with pytest.raises(LedgerError, match=r"1 labels are outside range\(2\).*5->-3.*or -1 for 'none"):
        Ledger.empty("int64").add([4, 5], [OOD_LABEL, -3], 0, "initial", num_classes=2)


# ----------------------------------------------------------------------------- the file oracle
def test_import_records_none_answers_as_ood(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    import_labels(rd, write_csv(tmp_path / "l.csv", [(10, "none"), (11, "bird"), (12, "-1")]))
    got = Ledger.load(rd)
    assert got.labels_by_id() == {1: 0, 2: 1, 10: OOD_LABEL, 11: 1, 12: OOD_LABEL}
    assert got.in_class().ids.tolist() == [1, 2, 11] and got.counts()["ood_by_source"] == {"import": 2}
    assert rd.step_payload(1, "label")["rows"] == 3 and rd.pending_query_round() is None


def test_a_bad_label_names_none_as_the_out_of_class_answer(tmp_path):
    rd = make_run(str(tmp_path / "run"))
    with pytest.raises(LabelImportError, match=r"line 3: id 11 label '-5'.*or 'none' \(or -1\) for an image in none"):
        import_labels(rd, write_csv(tmp_path / "l.csv", [(10, "none"), (11, "-5"), (12, 0)]))
    assert len(Ledger.load(rd)) == 2  # nothing imported


def test_label_status_shows_the_none_answers(tmp_path, capsys):
    from ray_al import label

    rd = make_run(str(tmp_path / "run"))
    import_labels(rd, write_csv(tmp_path / "l.csv", [(10, "none"), (11, "bird"), (12, "NONE")]))
    assert label.main(["status", rd.uri]) == 0
    out = capsys.readouterr().out
    assert "labels     5 " in out and "none       2 answered 'none of these classes'" in out


# ----------------------------------------------------------------------------- simulated oracle, pool contract
def test_simulated_oracle_answers_ood_for_pool_rows_labelled_minus_one():
    oracle = SimulatedOracle.from_table(pa.table({"id": [5, 6, 7], "label": [2, OOD_LABEL, 0]}))
    answers = oracle.answer([6, 7, 5])
    assert answers.tolist() == [OOD_LABEL, 0, 2]
    led = Ledger.empty("int64").add([6, 7, 5], answers, 1, "query", num_classes=3)
    assert led.in_class().ids.tolist() == [7, 5]


def _pool(path, labels) -> str:
    path.mkdir()
    pq.write_table(pa.table({"id": pa.array(np.arange(len(labels)) + 100, pa.int64()),
                             "image": pa.array([b"x"] * len(labels)), "label": pa.array(labels, pa.int64())}),
                   path / "part-0.parquet")
    return str(path)


def test_the_pool_may_mark_rows_ood_but_the_test_split_may_not(tmp_path):
    assert check_pool(_pool(tmp_path / "pool", [0, OOD_LABEL, 2]))[1] == 3
    with pytest.raises(PoolError, match=r"1 rows have a negative `label` \(id->label: 101->-2\).*or -1 for an out"):
        check_pool(_pool(tmp_path / "bad", [0, -2, 2]))
    with pytest.raises(PoolError, match=r"test split.*101->-1.*drop the out-of-distribution rows"):
        check_pool(_pool(tmp_path / "test", [0, OOD_LABEL]), "test split", allow_ood=False)


# ----------------------------------------------------------------------------- selection
def _write_split(root, split, ids, emb, probs):
    (root / f"split={split}").mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array(ids), "embedding": fixed_list(emb), "probs": fixed_list(probs),
                             "corrupt": pa.array([False] * len(ids))}), root / f"split={split}" / "part-0.parquet")


def _round_with_ood(tmp_path, per_class: int = 6, n_ood: int = 8):
    """Two classes around (0,0) and (0,10), `per_class` labeled in each; `n_ood` labeled OOD images around
    (10,0); unlabeled points around all three and around (5,5), which nothing labeled covers."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0], [5.0, 5.0]])
    lab_y = np.concatenate([np.arange(2 * per_class) % 2, np.full(n_ood, OOD_LABEL)])
    where = np.where(lab_y == OOD_LABEL, 2, lab_y)
    lab_ids = np.arange(1000, 1000 + len(lab_y))
    lab_emb = (centers[where] + 0.3 * rng.normal(size=(len(lab_y), 2))).astype(np.float32)
    lab_probs = np.eye(2, dtype=np.float32)[where % 2] * 0.8 + 0.1  # the foreign ones: some class, wrongly
    unl_ids = np.arange(90)
    unl_emb = (centers[unl_ids % 4] + 0.3 * rng.normal(size=(90, 2))).astype(np.float32)
    probs = np.eye(2, dtype=np.float32)[unl_ids % 2] * 0.7 + 0.15
    emb_dir = tmp_path / "embeddings"
    _write_split(emb_dir, "labeled", lab_ids, lab_emb, lab_probs)
    _write_split(emb_dir, "unlabeled", unl_ids, unl_emb, probs)
    ledger = Ledger.empty("int64").add(lab_ids, lab_y, 0, "initial", num_classes=2)
    return str(emb_dir), ledger, (lab_emb, lab_y, lab_probs, unl_ids, unl_emb, probs)


def test_for_method_gives_per_class_methods_in_class_rows_and_coverage_methods_every_labeled_row(tmp_path):
    emb_dir, ledger, (lab_emb, lab_y, lab_probs, *_) = _round_with_ood(tmp_path)
    view = strategy_input(config.load(None, []), emb_dir, ledger.labels_by_id(), 0)
    keep = lab_y != OOD_LABEL
    weibull = for_method("weibull", view)
    np.testing.assert_array_equal(weibull.labeled_embeddings, lab_emb[keep])
    assert weibull.labeled_labels.tolist() == lab_y[keep].tolist() and weibull.labeled_probs.shape == (12, 2)
    for method in ("kcenter", "typiclust", "probcover"):
        covered = for_method(method, view)
        np.testing.assert_array_equal(covered.labeled_embeddings, lab_emb)  # the foreign ones are covered
        assert covered.labeled_labels is None and covered.labeled_probs is None
    assert for_method("kcenter", view, prefilter="weibull").labeled_labels.tolist() == lab_y[keep].tolist()


def test_kcenter_counts_a_labeled_foreign_image_as_covered(tmp_path):
    emb_dir, ledger, (*_, unl_ids, unl_emb, _probs) = _round_with_ood(tmp_path)
    chosen = choose_queries(config.load(None, ["select.method=kcenter"]), emb_dir, ledger, 1, 0).ids
    # the uncovered (5, 5) cluster; without the foreign centers the (10, 0) cluster would be farther
    assert int(chosen[0]) % 4 == 3, chosen


def test_weibull_and_the_heads_committee_fit_in_class_rows_only(tmp_path):
    emb_dir, ledger, (lab_emb, lab_y, lab_probs, unl_ids, unl_emb, probs) = _round_with_ood(tmp_path)
    keep = lab_y != OOD_LABEL
    chosen = choose_queries(config.load(None, ["select.method=weibull"]), emb_dir, ledger, 5, 0)
    assert chosen.method == "weibull"
    view = acquisition.PoolView(ids=unl_ids, probs=probs, embeddings=unl_emb, labeled_embeddings=lab_emb[keep],
                                labeled_labels=lab_y[keep], labeled_probs=lab_probs[keep])
    assert chosen.ids == unl_ids[acquisition.select("weibull", view, 5, seed=0)].tolist()
    cfg = config.load(None, ["select.method=committee_kl", "select.committee=heads", "select.committee_size=3"])
    chosen = choose_queries(cfg, emb_dir, ledger, 5, 0).ids
    cp = heads_committee_probs(lab_emb[keep], lab_y[keep], unl_emb, 2, size=3, seed=0,
                               labeled_ids=np.arange(1000, 1000 + len(lab_y))[keep])
    committee = acquisition.PoolView(ids=unl_ids, probs=probs, committee_probs=cp)
    assert chosen == unl_ids[acquisition.select("committee_kl", committee, 5, seed=0)].tolist()


def test_auto_counts_labels_per_class_without_the_ood_answers(tmp_path):
    emb_dir, ledger, _ = _round_with_ood(tmp_path, per_class=3, n_ood=8)  # 6 in class + 8 foreign
    chosen = choose_queries(config.load(None, ["select.method=auto", "select.auto_switch_per_class=4"]), emb_dir,
                        ledger, 4, 0)
    assert chosen.method == "typiclust" and "3.0 labels/class < 4" in chosen.why  # not 7.0 with the foreign


# ----------------------------------------------------------------------------- the mixed-pool benchmark
def test_mixed_pool_has_the_asked_foreign_share_labelled_ood(tmp_path):
    from ray_al.bench.ood_mix import FOREIGN_ID_START, write_mixed_pool
    from ray_al.data.images import decode_one

    src = tmp_path / "cifar"
    src.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        pq.write_table(pa.table({"image": pa.array([b"jpeg"] * n), "label": pa.array(rng.integers(0, 10, n)),
                                 "label_name": pa.array(["x"] * n)}), src / f"{split}.parquet")
    mix = write_mixed_pool(tmp_path / "data", str(src), pool_size=50, fraction=0.2, test_size=10, seed=0)
    assert (mix["rows"], mix["foreign"], mix["fraction"]) == (50, 10, 0.2)
    pool = pq.read_table(tmp_path / "data" / "pool" / "part-0.parquet")
    foreign = pool.filter(pa.compute.equal(pool.column("label"), OOD_LABEL))
    assert foreign.num_rows == 10 and min(foreign.column("id").to_pylist()) == FOREIGN_ID_START
    assert decode_one(foreign.column("image")[0].as_py(), 32, 3).shape == (32, 32, 3)
    assert check_pool(mix["pool"])[1] == 50 and check_pool(mix["test"], allow_ood=False)[1] == 10
    assert json.loads((tmp_path / "data" / "pool" / "_classes.json").read_text())["classes"][0] == "airplane"


def test_run_figures_read_the_foreign_share_of_the_queries_from_the_ledger(tmp_path):
    from ray_al.bench.ood_mix import run_figures, summarize

    runs = []
    for seed, ood_queries in ((0, [OOD_LABEL, 0, 1, 1]), (1, [OOD_LABEL, OOD_LABEL, 0, 1])):
        run = tmp_path / f"run{seed}"
        led = Ledger.empty("int64").add([1, 2], [OOD_LABEL, 0], 0, "initial", num_classes=2)
        led = led.add([3, 4], ood_queries[:2], 1, "query", num_classes=2)
        led.add([5, 6], ood_queries[2:], 2, "query", num_classes=2).commit(str(run))
        rows = [{"round": r, "labels": 2 + 2 * r, "accuracy": 0.5 + 0.1 * r + 0.1 * seed} for r in range(3)]
        (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(run_figures(run))
    assert runs[0]["foreign_share"] == 0.25 and runs[0]["foreign_share_by_round"] == [0.5, 0.0]
    assert runs[1]["foreign_share"] == 0.5 and runs[0]["seed_set_foreign"] == 1
    s = summarize({"m": runs})["m"]
    assert s["foreign_share"]["mean"] == pytest.approx(0.375) and s["foreign_share"]["se"] == pytest.approx(0.125)
    assert s["accuracy"]["mean"] == pytest.approx([0.55, 0.65, 0.75]) and s["labels"] == [2, 4, 6]
