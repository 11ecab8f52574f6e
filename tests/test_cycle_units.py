"""Round-loop pieces that need no Ray: zero-shot prefixes, budget and config checks, the selection step
(heads committee, undecodable rows, strategy options), training seeds, the results report and plot."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al import acquisition

from ray_al.core import config

from ray_al.loop import selection
from ray_al.acquisition.policy import Choice
from ray_al.acquisition.heads import heads_committee_probs
from ray_al.core.config import Config, ConfigError
from ray_al.core.embeddings import fixed_list, matrix, read_embeddings
from ray_al.core.ids import tie_keys
from ray_al.run.ledger import Ledger
from ray_al.core.config import BudgetError
from ray_al.loop.rules import check_budget, check_config
from ray_al.core.report import area_under_curve, format_table, plot_learning_curves
from ray_al.acquisition.kcenter_greedy import kcenter_greedy
from ray_al.loop.selection import (embed_options, needs_committee, seed_set, choose_queries, strategy_input,
                              zero_shot_prefix)


def test_zero_shot_budgets_are_prefixes_of_one_saved_order(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 4)).astype(np.float32)
    seed_feats = rng.normal(size=(3, 4)).astype(np.float32)
    ids = np.arange(100, 160)
    uri = str(tmp_path / "zero_shot_order.parquet")
    probs = np.full((60, 2), 0.5, np.float32)
    view = acquisition.PoolView(ids=ids, probs=probs, embeddings=feats, labeled_embeddings=seed_feats)
    first = zero_shot_prefix(uri, view, Ledger.empty("int64"), 5, seed=0)
    expected = ids[kcenter_greedy(feats, 60, labeled_features=seed_feats)].tolist()
    assert first == expected[:5]
    # next round: labeled ids are skipped, the order is read back, not recomputed from new features
    ledger = Ledger.empty("int64").add(first, [0] * 5, 1, "query", num_classes=2)
    shuffled = acquisition.PoolView(ids=ids[::-1], probs=probs, embeddings=feats[::-1] * 3,
                                    labeled_embeddings=seed_feats)
    assert zero_shot_prefix(uri, shuffled, ledger, 5, seed=0) == expected[5:10]


def test_budget_larger_than_pool_is_refused():
    cfg = config.load(None, ["al.initial_size=10", "al.rounds=3", "al.budget=40"])
    check_budget(cfg, 130)
    with pytest.raises(BudgetError, match=r"needs 130 labels.*only 129 images"):
        check_budget(cfg, 129)


def test_a_budget_schedule_sets_each_rounds_batch_and_is_checked():
    cfg = config.load(None, ["al.initial_size=10", "al.rounds=3", "al.budgets=[10,20,50]"])
    check_config(cfg)
    assert [config.round_budget(cfg, r) for r in range(3)] == [10, 20, 50]
    check_budget(cfg, 90)
    with pytest.raises(BudgetError, match=r"needs 90 labels.*al.budgets=\[10, 20, 50\].*only 89 images"):
        check_budget(cfg, 89)
    with pytest.raises(ConfigError, match=r"one positive batch size per round: al.rounds=4"):
        check_config(config.replace(cfg, al={"rounds": 4}))
    smoke = config.smoke(cfg)
    assert smoke.al.rounds == 2 and smoke.al.budgets == (10, 20)
    check_config(smoke)


def test_report_table_auc_and_plot(tmp_path):
    rows = [{"round": r, "labels": 10 * (r + 1), "accuracy": 0.5 + 0.1 * r, "method": "m", "select": "s",
             "seconds": {"train": 1.0, "embed": 2.0}} for r in range(3)]
    text = format_table(rows)
    assert text.splitlines()[2].split()[:3] == ["0", "10", "0.5000"] and "-" in text.splitlines()[2]
    assert format_table([dict(rows[0], selected_by="typiclust")]).splitlines()[2].split()[-1] == "typiclust"
    assert area_under_curve([10, 20, 30], [0.5, 0.6, 0.7]) == pytest.approx(0.6)
    out = plot_learning_curves(rows + [dict(r, accuracy=r["accuracy"] + 0.02) for r in rows], str(tmp_path / "c.png"))
    assert open(out, "rb").read(4) == b"\x89PNG"


def test_committee_config_is_checked():
    check_config(config.load(None, ["select.committee=heads", "select.committee_size=2"]))
    with pytest.raises(ConfigError, match=r"select.committee='head'.*mc_dropout, heads"):
        check_config(config.load(None, ["select.committee=head"]))
    with pytest.raises(ConfigError, match=r"select.committee_size must be >= 2.*got 1"):
        check_config(config.load(None, ["select.committee_size=1"]))
    with pytest.raises(ConfigError, match=r"select.auto_switch_per_class must be >= 0.*got -1"):
        check_config(config.load(None, ["select.auto_switch_per_class=-1"]))


def test_a_committee_is_needed_by_committee_methods_and_prefilters_only():
    assert needs_committee(config.load(None, ["select.method=committee_kl"]))
    assert needs_committee(config.load(None, ["select.method=kcenter", "select.prefilter=committee_vote_entropy"]))
    assert not needs_committee(config.load(None, ["select.method=variation_ratio"]))  # optional: not computed
    assert not needs_committee(config.load(None, ["select.method=kcenter", "select.prefilter=entropy"]))
    assert needs_committee(config.load(None, ["select.method=weibull", "select.fallback=committee_kl"]))  # its fallback


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
    columns = {"id": pa.array(ids), "embedding": fixed_list(emb), "probs": fixed_list(probs),
               "corrupt": pa.array(corrupt if corrupt is not None else [False] * len(ids))}
    if committee is not None:
        columns["committee"] = fixed_list(committee)
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

    cfg = config.load(None, ["select.method=committee_kl", "select.committee=heads", "select.committee_size=4",
                             "al.seed=3"])
    chosen = choose_queries(cfg, str(emb_dir), ledger, 6, 2).ids

    expected_cp = heads_committee_probs(lab_emb, lab_y, unl_emb, 3, size=4, seed=3 * 1000 + 2, labeled_ids=lab_ids)
    view = acquisition.PoolView(ids=unl_ids, probs=probs, committee_probs=expected_cp)
    assert chosen == unl_ids[acquisition.select("committee_kl", view, 6, seed=3 * 1000 + 2)].tolist()
    assert acquisition.score("committee_kl", view).max() > 0  # a real committee, not the unanimous column
    # with mc_dropout the same step reads the embed-step column instead (unanimous: all tied, so the
    # batch is the seeded hash order of the ids)
    cfg = config.replace(cfg, select={"committee": "mc_dropout"})
    tied_order = unl_ids[np.argsort(tie_keys(unl_ids, 3 * 1000 + 2), kind="stable")][:6].tolist()
    assert choose_queries(cfg, str(emb_dir), ledger, 6, 2).ids == tied_order


def test_a_run_saved_before_a_key_existed_still_matches_its_config():
    from ray_al.core import config as config_mod
    from ray_al.loop.rounds import _same_config

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
    from ray_al.core import config as config_mod
    from ray_al.core.config import ConfigError

    for override, key in (("train.optimizer=lamb", "train.optimizer='lamb'"),
                          ("train.lr_schedule=poly", "train.lr_schedule='poly'")):
        with pytest.raises(ConfigError, match=key):
            check_config(config_mod.load(None, [override]))


# ----------------------------------------------------------------------------- training seeds (defect 2)
def test_train_seed_includes_the_seed_offset():
    from ray_al.loop.backend import train_seed

    base = config.load(None, ["al.seed=2"])
    assert [train_seed(base, r) for r in (None, 0, 3)] == [2, 2000, 2003]  # what runs have always used
    seeds = {o: [train_seed(config.replace(base, train={"seed_offset": o}), r) for r in (None, 0, 1, 2)]
             for o in (0, 1, 2)}
    every = [s for v in seeds.values() for s in v]
    assert len(set(every)) == len(every), seeds  # no offset reuses another's seed, nor another round's


def _fake_fit(seeds: list):
    from types import SimpleNamespace

    def fit(cfg, pool, request, storage_uri):
        seeds.append((request.name, request.seed))
        return SimpleNamespace(state_dict={}, seconds=0.0, metrics={})
    return fit


GREY = ("pool", "test", 10, tuple("0123456789"), 8, 1, (0.3,), (0.36,), "image", "int64", 100, True)


def test_train_seed_offset_reaches_training(tmp_path, monkeypatch):
    """train.seed_offset used to be read by nobody: a sweep over it ran identical trials (std 0)."""
    from ray_al.data.pool import PoolSpec
    from ray_al.loop.rounds import Cycle
    from ray_al.run.rundir import RunDir

    got = {}
    for offset in (0, 1):
        seeds: list = []
        monkeypatch.setattr("ray_al.workers.train.fit", _fake_fit(seeds))
        cfg = config.load(None, ["al.seed=2", "train.method=simsiam", "train.mode=pretrain", "train.finetune=true",
                                 f"train.seed_offset={offset}", "train.resident=never"])
        run = RunDir.create(str(tmp_path / f"offset{offset}"), {"num_classes": 10, "id_type": "int64"})
        cyc = Cycle(cfg, run, PoolSpec(*GREY), log=lambda _m: None)
        cyc.train_step(1, Ledger.empty("int64"), cyc.features.encoder_state())
        got[offset] = seeds
    assert got[0] == [("pretrain", 2), ("round_0001", 2001)]  # offset 0: the seeds of every earlier run
    assert [n for n, _ in got[1]] == ["pretrain", "round_0001"]
    assert not {s for _, s in got[1]} & {s for _, s in got[0]}


def test_two_seed_offsets_train_two_models():
    import torch

    from ray_al.loop.backend import train_seed
    from tests.test_train import _run  # the pure training loop on a few digits

    models = [_run("none", 1, seed=train_seed(config.load(None, [f"train.seed_offset={o}"]), 1))[0]
              for o in (0, 1)]
    assert not torch.equal(models[0].classifier.weight, models[1].classifier.weight)


# ----------------------------------------------------------------------------- plots of s3 runs (defect 4)
def test_concurrent_s3_runs_keep_their_own_learning_curves(s3, monkeypatch):
    """Runs on s3:// used to draw to one fixed /tmp/learning_curve.png before the upload, so a run finishing
    meanwhile (a sweep trial on the same node) replaced the other's plot."""
    import uuid

    from ray_al.core import report, storage
    from ray_al.loop.rounds import finish
    from ray_al.run.rundir import RunDir

    runs = {}
    for name, acc in (("a", 0.2), ("b", 0.9)):
        uri = s3.uri(f"plots-{uuid.uuid4().hex[:8]}-{name}")
        runs[name] = RunDir.create(uri, {"num_classes": 2, "id_type": "int64"})
        for r in range(2):
            runs[name].commit_round(r, {"round": r, "labels": 10 * (r + 1), "accuracy": acc + 0.05 * r, "seconds": {},
                                        "dataset": name, "method": "none", "mode": "joint", "select": "kcenter"})
    draw = report.plot_learning_curves

    def b_finishes_meanwhile(rows, path, **kwargs):
        out = draw(rows, path, **kwargs)
        if rows[0]["dataset"] == "a":  # run a has drawn its plot and not uploaded it yet
            finish(runs["b"], log=lambda _m: None)
        return out

    monkeypatch.setattr(report, "plot_learning_curves", b_finishes_meanwhile)
    finish(runs["a"], log=lambda _m: None)
    png = {n: storage.read_bytes(storage.join(run.uri, "learning_curve.png")) for n, run in runs.items()}
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in png.values())
    assert png["a"] != png["b"], "run a uploaded run b's plot"


# ----------------------------------------------------------------------------- the selection step
def test_strategy_input_drops_undecodable_rows_for_every_path(tmp_path):
    from ray_al.loop.selection import ShardFiles, strategy_input

    emb_dir = tmp_path / "embeddings"
    rng = np.random.default_rng(0)
    _write_split(emb_dir, "labeled", np.array([100, 101, 102]), rng.normal(size=(3, 4)).astype(np.float32),
                 np.full((3, 2), 0.5, np.float32), corrupt=[False, True, False])
    _write_split(emb_dir, "unlabeled", np.arange(10), rng.normal(size=(10, 4)).astype(np.float32),
                 np.full((10, 2), 0.5, np.float32), corrupt=[i in (3, 7) for i in range(10)])
    labels = {100: 0, 101: 1, 102: 1}
    for overrides in ([], ["select.zero_shot=true"], ["select.method=committee_kl", "select.committee=heads",
                                                       "select.committee_size=2"]):
        view = strategy_input(config.load(None, overrides), str(emb_dir), labels, 0)
        assert view.ids.tolist() == [0, 1, 2, 4, 5, 6, 8, 9] and view.embeddings.shape == (8, 4)
        assert view.labeled_labels.tolist() == [0, 1] and view.labeled_embeddings.shape == (2, 4)
    shards = strategy_input(config.load(None, ["select.method=kcenter", "select.shards=2"]), str(emb_dir), labels, 0)
    assert isinstance(shards, ShardFiles) and shards.n == 8 and shards.labeled_embeddings.shape == (2, 4)
    assert [f.rsplit("/", 1)[-1] for f in shards.files] == ["part-0.parquet"]  # the unlabeled split only
    assert "split=unlabeled" in shards.files[0]


def test_budget_above_the_decodable_unlabeled_rows_is_refused(tmp_path):
    emb_dir = tmp_path / "embeddings"
    _write_split(emb_dir, "unlabeled", np.arange(4), np.eye(4, dtype=np.float32), np.full((4, 2), 0.5, np.float32),
                 corrupt=[False, True, False, False])
    for overrides in ([], ["select.method=kcenter", "select.shards=2"]):
        with pytest.raises(BudgetError, match="al.budget=4 is larger than the 3 unlabeled images"):
            choose_queries(config.load(None, overrides), str(emb_dir), Ledger.empty("int64"), 4, 0)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["select.method=entropy_kcenter", "select.prefilter_factor=7"], {"prefilter_factor": 7}),
    (["select.method=kcenter", "select.prefilter_factor=7"], {"prefilter_factor": 7}),
    (["select.method=kcenter", "select.prefilter=margin"], {"prefilter": "margin", "prefilter_factor": 10}),
    (["select.method=entropy"], {}),
])
def test_every_strategy_that_takes_a_prefilter_factor_gets_the_configured_one(overrides, expected):
    from ray_al.loop.selection import strategy_options

    assert strategy_options(config.load(None, overrides)) == expected


@pytest.mark.parametrize(("override", "names"), [
    ("model.backbone=resnet19", ["model.backbone", "resnet18", "small_cnn"]),
    ("train.method=mobi", ["train.method", "moby", "none"]),
    ("select.method=entropyy", ["select.method", "entropy", "kcenter"]),
    ("select.method=kcenter select.prefilter=kcenter", ["select.prefilter", "entropy", "margin"]),
])
def test_unknown_names_are_config_errors_naming_the_key_and_the_valid_names(override, names):
    with pytest.raises(ConfigError) as err:
        check_config(config.load(None, override.split()))
    assert all(n in str(err.value) for n in names), str(err.value)


def test_a_prefilter_needs_a_method_that_takes_one():
    with pytest.raises(ConfigError, match="select.method=entropy takes no pre-filter"):
        check_config(config.load(None, ["select.method=entropy", "select.prefilter=margin"]))



@pytest.mark.parametrize(("overrides", "named"), [
    (["select.shards=4"], "select.method=auto runs in one process"),
    (["select.method=kcenter", "select.shards=2", "select.prefilter=entropy"], "select.prefilter runs in one"),
    (["select.method=kcenter", "select.shards=2", "select.zero_shot=true"], "select.zero_shot runs in one"),
    (["select.method=kcenter", "select.shards=0"], "select.shards must be >= 1, got 0"),
])
def test_shards_that_would_be_ignored_are_refused(overrides, named):
    """The default method is auto, which runs in one process: select.shards alone must not be a silent no-op."""
    assert Config().select.method == config.load(None, []).select.method == "auto"
    with pytest.raises(ConfigError, match=named):
        check_config(config.load(None, overrides))
    check_config(config.load(None, ["select.method=kcenter", "select.shards=4"]))

def _two_class_round(tmp_path, labels_per_class: int, top: float = 0.9, gap: float = 10.0):
    """Embedding files of a round: 2 classes whose centres are `gap` apart on each axis (10: well separated),
    `labels_per_class` labeled in each; every row's top-class probability is `top`."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [gap, gap]])
    n_lab = 2 * labels_per_class
    lab_ids, lab_y = np.arange(1000, 1000 + n_lab), np.arange(n_lab) % 2
    lab_emb = (centers[lab_y] + rng.normal(size=(n_lab, 2))).astype(np.float32)
    unl_ids = np.arange(80)
    unl_emb = (centers[unl_ids % 2] + rng.normal(size=(80, 2))).astype(np.float32)
    probs = np.eye(2, dtype=np.float32)[unl_ids % 2] * (2 * top - 1) + (1 - top)
    emb_dir = tmp_path / "embeddings"
    _write_split(emb_dir, "labeled", lab_ids, lab_emb, np.eye(2, dtype=np.float32)[lab_y] * 0.8 + 0.1)
    _write_split(emb_dir, "unlabeled", unl_ids, unl_emb, probs)
    ledger = Ledger.empty("int64").add(lab_ids, lab_y, 0, "initial", num_classes=2)
    return str(emb_dir), ledger


def test_weibull_before_three_labels_in_a_class_falls_back_and_says_so(tmp_path):
    emb_dir, ledger = _two_class_round(tmp_path, labels_per_class=1)
    cfg = config.load(None, ["select.method=weibull", "select.fallback=random"])
    chosen = choose_queries(cfg, emb_dir, ledger, 5, 0)
    assert chosen.method == "random" and "weibull could not run yet" in chosen.why
    assert len(set(chosen.ids)) == 5
    emb_dir, ledger = _two_class_round(tmp_path / "more", labels_per_class=6)
    chosen = choose_queries(cfg, emb_dir, ledger, 5, 0)
    assert (chosen.method, chosen.why) == ("weibull", "select.method")


def test_a_fallback_that_reads_more_than_its_method_gets_what_it_reads(tmp_path):
    """Selection reads only what the round's method reads; a fallback reading more (a heads committee,
    which weibull never needs) is given it: the split is read again for the fallback."""
    emb_dir, ledger = _two_class_round(tmp_path, labels_per_class=1)
    cfg = config.load(None, ["select.method=weibull", "select.fallback=committee_kl", "select.committee=heads"])
    assert "committee_probs" not in selection.fields_for(cfg, Choice("weibull", ""))
    chosen = choose_queries(cfg, emb_dir, ledger, 5, 0)
    assert chosen.method == "committee_kl" and "weibull could not run yet" in chosen.why
    assert len(set(chosen.ids)) == 5


def test_auto_picks_typicality_at_few_labels_per_class_then_margin(tmp_path):
    emb_dir, ledger = _two_class_round(tmp_path, labels_per_class=3)
    low = choose_queries(config.load(None, ["select.method=auto", "select.auto_switch_per_class=5"]), emb_dir, ledger, 4, 0)
    assert low.method == "typiclust" and "3.0 labels/class < 5" in low.why
    high = choose_queries(config.load(None, ["select.method=auto", "select.auto_switch_per_class=2"]), emb_dir, ledger, 4, 0)
    assert high.method == "margin" and "3.0 labels/class >= 2" in high.why
    view = acquisition.PoolView(ids=np.arange(80), probs=np.eye(2, dtype=np.float32)[np.arange(80) % 2] * 0.8 + 0.1)
    assert high.ids == np.arange(80)[acquisition.select("margin", view, 4, seed=0)].tolist()


def test_pretrained_features_replace_the_model_embeddings_by_id(tmp_path):
    """select.features=pretrained: distances on the self-supervised features (matched by id, any row
    order), class probabilities still the round model's."""
    emb_dir, ledger = _two_class_round(tmp_path, labels_per_class=3)
    ids = np.concatenate([np.arange(1000, 1006), np.arange(80)])
    order = np.random.default_rng(1).permutation(len(ids))  # the features file in another row order
    features = (ids[:, None] * np.array([[1.0, -1.0, 0.5]])).astype(np.float32)  # 3-d, a function of the id
    _write_split(tmp_path / "features", "unlabeled", ids[order], features[order], np.full((86, 2), 0.5, np.float32))
    cfg = config.load(None, ["select.features=pretrained"])
    view = strategy_input(cfg, emb_dir, ledger.labels_by_id(), 0, str(tmp_path / "features"))
    assert view.embeddings.shape == (80, 3) and view.labeled_embeddings.shape == (6, 3)
    np.testing.assert_array_equal(view.embeddings[:, 0], view.ids.astype(np.float32))
    assert view.probs[:, 0].max() == pytest.approx(0.9)  # the round model's, not the features file's 0.5
    plain = strategy_input(config.load(None, []), emb_dir, ledger.labels_by_id(), 0)
    assert plain.embeddings.shape == (80, 2)


def test_seed_set_by_typiclust_on_features_takes_one_typical_point_per_cluster(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    ids = np.arange(300)
    feats = (centers[ids % 3] + rng.normal(size=(300, 2))).astype(np.float32)
    _write_split(tmp_path / "features", "unlabeled", ids, feats, np.full((300, 3), 1 / 3, np.float32))
    cfg = config.load(None, ["al.initial=typiclust", "al.initial_size=3", "train.mode=pretrain"])
    chosen = seed_set(cfg, str(tmp_path / "features"), ids, seed=0)
    assert sorted(int(i) % 3 for i in chosen) == [0, 1, 2]  # one per cluster
    # typicality in the planted coordinates (select.scaling=none; the default measures it on unit rows)
    raw = config.load(None, ["al.initial=typiclust", "al.initial_size=3", "train.mode=pretrain", "select.scaling=none"])
    chosen = seed_set(raw, str(tmp_path / "features"), ids, seed=0)
    assert sorted(int(i) % 3 for i in chosen) == [0, 1, 2]
    assert np.linalg.norm(feats[chosen] - centers[chosen % 3], axis=1).max() < 1.0  # near each centre


@pytest.mark.parametrize(("overrides", "match"), [
    (["al.initial=typiclust"], "train.mode=pretrain"),
    (["select.features=pretrained"], "train.mode=pretrain"),
    (["al.initial=badge", "train.mode=pretrain", "train.method=simsiam"], "al.initial='badge' is not valid"),
    (["select.features=ssl"], "select.features='ssl' is not valid"),
])
def test_features_and_initial_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_config(config.load(None, overrides))
    check_config(config.load(None, ["al.initial=kcenter", "select.features=pretrained", "train.mode=pretrain",
                                    "train.method=simsiam"]))
    # with a file oracle the seed set is the first query batch (tests/test_cycle.py runs it)
    check_config(config.load(None, ["al.initial=kcenter", "train.mode=pretrain", "train.method=simsiam",
                                    "al.oracle=file"]))


def test_probcover_saturation_is_recorded_in_the_rounds_why(tmp_path):
    """Two tight clusters, both already covered by labeled points: ProbCover has nothing left to cover,
    the batch comes from its fallback, and the round's record says so."""
    emb_dir, ledger = _two_class_round(tmp_path, labels_per_class=3)
    chosen = choose_queries(config.load(None, ["select.method=probcover"]), emb_dir, ledger, 5, 0)
    assert chosen.method == "probcover" and len(set(chosen.ids)) == 5
    assert "coverage saturated" in chosen.why and "from random" in chosen.why, chosen.why


def test_a_fallback_that_needs_labels_per_class_is_refused_and_others_pass():
    check_config(config.load(None, ["select.method=typiclust"]))  # its own fallback: it is never "not ready"
    with pytest.raises(ConfigError, match="select.fallback=weibull cannot stand in"):
        check_config(config.load(None, ["select.method=kcenter", "select.fallback=weibull"]))


def test_auto_from_the_data_reads_the_probes_confidence_not_the_heads(tmp_path):
    """auto from the data (select.auto_switch_per_class=0, the cycle's default) reads pool_conf
    through the rule's own probe on the round's features (policy.probe_confidence): separated classes
    switch to margin, overlapping ones keep typiclust, whatever the head's probabilities (`top`) say; each
    says so with the probe's value."""
    from ray_al.acquisition.policy import probe_confidence

    cfg = config.load(None, [])
    assert cfg.select.method == "auto" and cfg.select.auto_switch_per_class == 0
    emb_dir, ledger = _two_class_round(tmp_path, labels_per_class=3, top=0.55)  # an unsure head
    sure = choose_queries(cfg, emb_dir, ledger, 4, 0)
    lab, unl = (read_embeddings(emb_dir, split) for split in ("labeled", "unlabeled"))
    conf = probe_confidence(matrix(lab.column("embedding")), np.arange(6) % 2, matrix(unl.column("embedding")))
    assert conf >= 0.8 and (sure.method, sure.why) == ("margin", f"auto: pool_conf={conf:.3f} >= 0.8: uncertainty")
    view = acquisition.PoolView(ids=np.arange(80), probs=np.eye(2, dtype=np.float32)[np.arange(80) % 2] * 0.1 + 0.45)
    assert sure.ids == np.arange(80)[acquisition.select("margin", view, 4, seed=0)].tolist()
    unsure = choose_queries(cfg, *_two_class_round(tmp_path / "mixed", labels_per_class=3, top=0.99, gap=0.1), 4, 0)
    assert unsure.method == "typiclust" and unsure.why.startswith("auto: pool_conf=0.") and "< 0.8" in unsure.why
