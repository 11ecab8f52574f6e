"""Cycle pieces that need no Ray: zero-shot prefixes, budget and config checks, the heads committee in
the select step, the results report."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al import acquisition, config
from ray_al.acquisition.heads import heads_committee_probs
from ray_al.config import ConfigError
from ray_al.cycle import BudgetError, Cycle, check_budget, check_config, embed_options, needs_committee
from ray_al.embed import _fixed_list
from ray_al.ledger import Ledger
from ray_al.report import area_under_curve, format_table, plot_learning_curves
from ray_al.rundir import RunDir
from ray_al.select import kcenter_greedy


def test_zero_shot_budgets_are_prefixes_of_one_saved_order(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 4)).astype(np.float32)
    seed_feats = rng.normal(size=(3, 4)).astype(np.float32)
    ids = np.arange(100, 160)
    run = RunDir.create(str(tmp_path / "run"), {"num_classes": 2, "id_type": "int64"})
    cyc = Cycle.__new__(Cycle)
    cyc.run, cyc.seed = run, 0
    table = pa.table({"id": pa.array(ids), "embedding": _fixed_list(feats)})
    first = cyc._zero_shot_prefix(table, seed_feats, Ledger.empty("int64"), 5)
    expected = ids[kcenter_greedy(feats, 60, labeled_features=seed_feats)].tolist()
    assert first == expected[:5]
    # next round: labeled ids are skipped, the order is read back, not recomputed from new features
    ledger = Ledger.empty("int64").add(first, [0] * 5, 1, "query", num_classes=2)
    shuffled = pa.table({"id": pa.array(ids[::-1]), "embedding": _fixed_list(feats[::-1] * 3)})
    assert cyc._zero_shot_prefix(shuffled, seed_feats, ledger, 5) == expected[5:10]


def test_budget_larger_than_pool_is_refused():
    cfg = config.load(None, ["al.initial_size=10", "al.rounds=3", "al.budget=40"])
    check_budget(cfg, 130)
    with pytest.raises(BudgetError, match=r"needs 130 labels.*only 129 images"):
        check_budget(cfg, 129)


def test_report_table_auc_and_plot(tmp_path):
    rows = [{"round": r, "labels": 10 * (r + 1), "accuracy": 0.5 + 0.1 * r, "method": "m", "select": "s",
             "seconds": {"train": 1.0, "embed": 2.0}} for r in range(3)]
    text = format_table(rows)
    assert text.splitlines()[2].split()[:3] == ["0", "10", "0.5000"] and "-" in text.splitlines()[2]
    assert area_under_curve([10, 20, 30], [0.5, 0.6, 0.7]) == pytest.approx(0.6)
    out = plot_learning_curves(rows + [dict(r, accuracy=r["accuracy"] + 0.02) for r in rows], str(tmp_path / "c.png"))
    assert open(out, "rb").read(4) == b"\x89PNG"


def test_committee_config_is_checked():
    check_config(config.load(None, ["select.committee=heads", "select.committee_size=2"]))
    with pytest.raises(ConfigError, match=r"select.committee='head'.*mc_dropout, heads"):
        check_config(config.load(None, ["select.committee=head"]))
    with pytest.raises(ConfigError, match=r"select.committee_size must be >= 2.*got 1"):
        check_config(config.load(None, ["select.committee_size=1"]))


def test_a_committee_is_needed_by_committee_methods_and_prefilters_only():
    assert needs_committee(config.load(None, ["select.method=committee_kl"]))
    assert needs_committee(config.load(None, ["select.method=kcenter", "select.prefilter=committee_vote_entropy"]))
    assert not needs_committee(config.load(None, ["select.method=variation_ratio"]))  # optional: not computed
    assert not needs_committee(config.load(None, ["select.method=kcenter", "select.prefilter=entropy"]))


@pytest.mark.parametrize(("overrides", "passes"), [
    (["select.method=committee_kl"], 5),
    (["select.method=kcenter", "select.prefilter=committee_kl", "select.committee_size=3"], 3),
    (["select.method=committee_kl", "select.committee=heads"], 0),  # fitted in the select step instead
    (["select.method=entropy"], 0),
])
def test_mc_dropout_passes_are_embedded_only_for_an_mc_dropout_committee(overrides, passes):
    assert embed_options(config.load(None, overrides)).committee_size == passes


def _write_split(root, split, ids, emb, probs, corrupt=None, committee=None):
    (root / f"split={split}").mkdir(parents=True)
    columns = {"id": pa.array(ids), "embedding": _fixed_list(emb), "probs": _fixed_list(probs),
               "corrupt": pa.array(corrupt if corrupt is not None else [False] * len(ids))}
    if committee is not None:
        columns["committee"] = _fixed_list(committee)
    pq.write_table(pa.table(columns), root / f"split={split}" / "part-0.parquet")


def test_heads_committee_is_fitted_on_the_labeled_embeddings_in_the_select_step(tmp_path):
    rng = np.random.default_rng(0)
    lab_y = np.repeat([0, 1, 2], 8)
    centers = rng.normal(size=(3, 5)) * 2
    lab_emb = (centers[lab_y] + rng.normal(size=(24, 5))).astype(np.float32)
    lab_ids = rng.permutation(np.arange(1000, 1024))
    unl_ids = np.arange(60)
    unl_emb = (centers[rng.integers(0, 3, 60)] + 1.5 * rng.normal(size=(60, 5))).astype(np.float32)
    probs = np.full((60, 3), 1 / 3, np.float32)
    # a stale MC-dropout column of unanimous members: the heads committee must not read it
    stale = np.tile(np.eye(3, dtype=np.float32)[0], (60, 4))
    emb_dir = tmp_path / "embeddings"
    # labeled split: one undecodable image (garbage features) that must not be fitted
    _write_split(emb_dir, "labeled", np.append(lab_ids, 2000), np.vstack([lab_emb, np.full((1, 5), 1e3, np.float32)]),
                 np.full((25, 3), 1 / 3, np.float32), corrupt=[False] * 24 + [True])
    _write_split(emb_dir, "unlabeled", unl_ids, unl_emb, probs, committee=stale)
    ledger = Ledger.empty("int64").add(np.append(lab_ids, 2000), np.append(lab_y, 0), 0, "initial", num_classes=3)

    cyc = Cycle.__new__(Cycle)
    cyc.cfg = config.load(None, ["select.method=committee_kl", "select.committee=heads", "select.committee_size=4",
                                 "al.seed=3"])
    cyc.seed = 3
    chosen = cyc._select_ids(str(emb_dir), ledger, 6, 2)

    expected_cp = heads_committee_probs(lab_emb, lab_y, unl_emb, 3, size=4, seed=3 * 1000 + 2, labeled_ids=lab_ids)
    view = acquisition.PoolView(ids=unl_ids, probs=probs, committee_probs=expected_cp)
    assert chosen == unl_ids[acquisition.select("committee_kl", view, 6)].tolist()
    assert acquisition.score("committee_kl", view).max() > 0  # a real committee, not the unanimous column
    # with mc_dropout the same step reads the embed-step column instead (unanimous: ties by ascending id)
    cyc.cfg = config.replace(cyc.cfg, select={"committee": "mc_dropout"})
    assert cyc._select_ids(str(emb_dir), ledger, 6, 2) == [0, 1, 2, 3, 4, 5]


def test_a_run_saved_before_a_key_existed_still_matches_its_config():
    from ray_al import config as config_mod
    from ray_al.cycle import _same_config

    snapshot = config_mod.Config().to_dict()
    older = {s: dict(v) for s, v in snapshot.items()}
    del older["embed"]["normalize"]  # saved by a version without the key: its default applies
    assert _same_config(older, snapshot)
    changed = {s: dict(v) for s, v in snapshot.items()}
    changed["al"]["budget"] = snapshot["al"]["budget"] + 1
    assert not _same_config(changed, snapshot)
    retired = {s: dict(v) for s, v in snapshot.items()}
    retired["al"]["old_key"] = 1
    assert not _same_config(retired, snapshot) and not _same_config(None, snapshot)


def test_bad_optimizer_or_schedule_is_refused_before_ray_starts():
    from ray_al import config as config_mod
    from ray_al.config import ConfigError
    from ray_al.cycle import check_config

    for override, key in (("train.optimizer=lamb", "train.optimizer='lamb'"),
                          ("train.lr_schedule=poly", "train.lr_schedule='poly'")):
        with pytest.raises(ConfigError, match=key):
            check_config(config_mod.load(None, [override]))
