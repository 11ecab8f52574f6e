"""`auto` as a strategy and its policy: each branch of the rule on data whose signal is known. No Ray."""
from __future__ import annotations

import numpy as np
import pytest

from ray_al.acquisition import PoolView, select
from ray_al.acquisition.policy import DATA_RULE, EARLY_METHOD, LATE_METHOD, SwitchRule, data_choice, rule_signals

pytestmark = pytest.mark.usefixtures("single_threaded_faiss")

CENTRES = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0], [30.0, 30.0]])


def blobs(labeled_per_blob: list[int], n: int = 60, seed: int = 0, sure: float = 1.5) -> PoolView:
    """Four tight blobs of n points, probs that favour each blob's class by `sure` (logit units);
    labeled_per_blob[c] points of blob c are labeled (taken out of the candidates)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + rng.normal(0, 1, (n, 2)) for c in CENTRES]).astype(np.float32)
    y = np.repeat(np.arange(4), n)
    logits = sure * np.eye(4)[y] + rng.normal(0, 1, (len(y), 4))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    lab = np.concatenate([np.arange(c * n, c * n + m) for c, m in enumerate(labeled_per_blob)]).astype(np.int64)
    free = np.setdiff1d(np.arange(len(y)), lab)
    return PoolView(ids=free, probs=probs[free], embeddings=x[free],
                    labeled_embeddings=x[lab] if lab.size else None, labeled_labels=y[lab] if lab.size else None)


def test_cold_start_and_no_probabilities_are_typicality():
    view = blobs([0, 0, 0, 0])
    info: dict = {}
    picks = select("auto", view, 4, seed=1, info=info)
    assert info["method"] == EARLY_METHOD and "no labels yet" in info["why"]
    np.testing.assert_array_equal(picks, select("typiclust", view, 4, seed=1))
    bare = PoolView(ids=view.ids, embeddings=view.embeddings)
    assert np.array_equal(select("auto", bare, 4, seed=1, info=info), picks) and "no class probabilities" in info["why"]


def test_the_fixed_per_class_rule_is_kept_as_an_option():
    info: dict = {}
    few, many = blobs([2, 2, 2, 2]), blobs([4, 4, 4, 4])
    np.testing.assert_array_equal(select("auto", few, 5, seed=0, switch_per_class=3, info=info),
                                  select(EARLY_METHOD, few, 5, seed=0))
    assert info["why"] == "auto: 2.0 labels/class < 3: typicality"
    np.testing.assert_array_equal(select("auto", many, 5, seed=0, switch_per_class=3, info=info),
                                  select(LATE_METHOD, many, 5, seed=0))
    assert info["method"] == LATE_METHOD and "4.0 labels/class >= 3" in info["why"]


def test_data_choice_names_the_signal_and_its_value():
    rule = SwitchRule("coverage", ">=", 0.5)
    late, early = data_choice({"coverage": 0.75}, rule), data_choice({"coverage": 0.25}, rule)
    assert late.method == LATE_METHOD and late.why == "auto: coverage=0.750 >= 0.5: uncertainty"
    assert early.method == EARLY_METHOD and early.why == "auto: coverage=0.250 < 0.5: typicality"
    below = SwitchRule("unc_pct", "<", 0.4)
    assert data_choice({"unc_pct": 0.3}, below).method == LATE_METHOD
    assert data_choice({"unc_pct": 0.4}, below).why == "auto: unc_pct=0.400 >= 0.4: typicality"


def test_the_data_rule_switches_on_the_models_confidence():
    """pool_conf = mean top-class probability over the candidates: a model that is unsure (flat
    probabilities) keeps typicality, a sure one (>= 0.8) moves to margin, whatever the label count."""
    assert DATA_RULE == SwitchRule("pool_conf", ">=", 0.8)
    unsure, sure = blobs([1, 1, 1, 1], sure=0.5), blobs([1, 1, 1, 1], sure=6.0)
    assert rule_signals(unsure)["pool_conf"] < 0.6 < 0.9 < rule_signals(sure)["pool_conf"]
    assert rule_signals(sure)["per_class"] == 1.0
    info: dict = {}
    np.testing.assert_array_equal(select("auto", unsure, 5, seed=0, info=info), select(EARLY_METHOD, unsure, 5, seed=0))
    assert info["method"] == EARLY_METHOD
    assert info["why"] == f"auto: pool_conf={info['signals']['pool_conf']:.3f} < 0.8: typicality"
    np.testing.assert_array_equal(select("auto", sure, 5, seed=0, info=info), select(LATE_METHOD, sure, 5, seed=0))
    assert info["method"] == LATE_METHOD and info["why"].startswith("auto: pool_conf=0.9")
    # the mean, exactly: two rows at 0.9 and 0.7 top probability give 0.8, which switches
    two = PoolView(ids=np.arange(2), probs=np.array([[0.9, 0.1], [0.3, 0.7]], np.float32),
                   embeddings=np.zeros((2, 2), np.float32), labeled_embeddings=np.ones((1, 2), np.float32))
    assert abs(rule_signals(two)["pool_conf"] - 0.8) < 1e-6


def test_select_auto_is_independent_of_row_order():
    view = blobs([3, 1, 0, 2], sure=3.0)
    info: dict = {}
    picks = select("auto", view, 6, seed=2, info=info)
    np.testing.assert_array_equal(picks, select(info["method"], view, 6, seed=2))
    perm = np.random.default_rng(0).permutation(view.n)
    again = select("auto", view.subset(perm), 6, seed=2)
    np.testing.assert_array_equal(view.ids[picks], view.ids[perm][again])


def test_the_probe_reads_pool_conf_on_the_rules_own_scale():
    """probe_confidence fits the probe DATA_RULE was measured with on the labeled rows: separated classes
    give a confident pool, overlapping ones do not, whatever a round's head would say; one class: 1.0."""
    from ray_al.acquisition.policy import probe_confidence

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    y_lab, y_pool = np.repeat(np.arange(4), 3), rng.integers(0, 4, 2000)
    for gap, low, high in ((8.0, 0.9, 1.0), (0.05, 0.0, 0.6)):
        lab = gap * centres[y_lab] + rng.normal(size=(12, 16))
        pool = gap * centres[y_pool] + rng.normal(size=(2000, 16))
        assert low < probe_confidence(lab, y_lab, pool) < high, gap
    assert probe_confidence(lab[:3], np.zeros(3, np.int64), pool) == 1.0
