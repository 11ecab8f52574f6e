"""Acquisition functions: registry, the shared top_k, validation, uncertainty and committee scores,
random / balanced, k-center adapter and hybrids, and the no-ray rule.

Every score is checked against an independent computation (scipy, hand-computed values, a plain
reference greedy), never against numbers copied from the implementation.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

import ray_al.acquisition as acq
from ray_al.acquisition import ACQUISITIONS, PoolView, needs, score, select, top_k
from ray_al.core.config import Config
from ray_al.core.ids import tie_keys
from ray_al.core.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_view(n: int = 120, n_classes: int = 4, d: int = 6, m: int = 3, n_labeled: int = 40, seed: int = 0) -> PoolView:
    """A full PoolView with every field, random but well-formed."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(size=(n, n_classes)) * 2).astype(np.float32)
    committee = softmax(rng.normal(size=(m, n, n_classes)) * 2).astype(np.float32)
    labeled_labels = np.arange(n_labeled) % n_classes
    centers = rng.normal(size=(n_classes, d)) * 4
    labeled_embeddings = (centers[labeled_labels] + rng.normal(size=(n_labeled, d))).astype(np.float32)
    labeled_probs = softmax(rng.normal(size=(n_labeled, n_classes)) + 3 * np.eye(n_classes)[labeled_labels])
    return PoolView(
        ids=rng.permutation(10 * n)[:n].astype(np.int64),
        probs=probs,
        embeddings=(centers[probs.argmax(1)] + 1.5 * rng.normal(size=(n, d))).astype(np.float32),
        committee_probs=committee,
        labeled_embeddings=labeled_embeddings,
        labeled_labels=labeled_labels,
        labeled_probs=labeled_probs.astype(np.float32),
    )


def permuted(view: PoolView, perm: np.ndarray) -> PoolView:
    return view.subset(perm)


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------

EXPECTED = {
    "random", "balanced", "entropy", "margin", "least_confidence", "variation_ratio",
    "committee_vote_entropy", "committee_kl", "weibull", "badge", "kcenter",
    "typiclust", "probcover", "auto",
    "entropy_kcenter", "margin_kcenter", "least_confidence_kcenter", "weibull_kcenter",
}  # fmt: skip


def test_registry_has_every_method() -> None:
    assert set(ACQUISITIONS) == EXPECTED


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown acquisition method 'entropyy'.*Set select.method") as err:
        select("entropyy", make_view(), 3)
    for name in EXPECTED:
        assert name in str(err.value)
    with pytest.raises(KeyError):
        ACQUISITIONS["nope"]
    with pytest.raises(ValueError, match="valid: .*kcenter"):
        acq.get("nope")


def test_unknown_option_is_an_error_naming_valid_options() -> None:
    with pytest.raises(ValueError, match="tail_sise.*tail_size"):
        select("weibull", make_view(), 3, tail_sise=5)


def test_needs_and_requirements() -> None:
    assert needs("entropy") == {"probs"}
    assert needs("committee_kl") == {"probs", "committee_probs"}
    assert needs("variation_ratio") == {"probs", "committee_probs"}
    assert needs("variation_ratio", optional=False) == {"probs"}
    assert needs("kcenter", optional=False) == {"embeddings"}  # probs not read: ray_al.select works without
    assert "labeled_embeddings" in needs("kcenter")
    assert needs("weibull") == {"probs", "embeddings", "labeled_embeddings", "labeled_labels", "labeled_probs"}
    assert needs("kcenter", prefilter="committee_kl") >= {"committee_probs", "embeddings"}
    assert needs("weibull_kcenter") == needs("weibull") | needs("kcenter")
    assert set(acq.REQUIREMENTS) == EXPECTED
    assert acq.REQUIREMENTS["badge"]["required"] == {"probs", "embeddings"}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_every_method_selects_k_distinct_positions_independent_of_row_order(method: str) -> None:
    view = make_view()
    k = 15
    pos = select(method, view, k, seed=3)
    assert pos.dtype == np.int64 and pos.shape == (k,)
    assert np.unique(pos).shape[0] == k and pos.min() >= 0 and pos.max() < view.n
    # Ray Data does not keep row order: the same pool in another order must give the same ids
    perm = np.random.default_rng(1).permutation(view.n)
    again = select(method, permuted(view, perm), k, seed=3)
    np.testing.assert_array_equal(view.ids[pos], view.ids[perm][again])
    np.testing.assert_array_equal(select(method, view, k, seed=3), pos)  # deterministic


@pytest.mark.parametrize("method", sorted(m for m in EXPECTED if acq.get(m).required - {"probs"}))
def test_missing_required_field_is_named(method: str) -> None:
    required = acq.get(method).required - {"probs"}
    view = make_view()
    for field in sorted(required):
        broken = PoolView(**{**view.__dict__, field: None})
        with pytest.raises(ValueError, match=field):
            select(method, broken, 3)


def test_k_larger_than_pool_is_a_clear_error() -> None:
    view = make_view(n=10)
    for method in ("entropy", "random", "badge"):
        with pytest.raises(ValueError, match=r"k=11.*n=10"):
            select(method, view, 11)
    assert select("entropy", view, 0).shape == (0,)
    assert sorted(select("entropy", view, 10)) == list(range(10))


def test_score_rejects_set_methods() -> None:
    with pytest.raises(ValueError, match="no per-point score"):
        score("kcenter", make_view())


# ------------------------------------------------------------------------------------------------
# top_k
# ------------------------------------------------------------------------------------------------


def test_top_k_breaks_ties_by_a_seeded_id_hash() -> None:
    scores = np.array([1.0, 1.0, 1.0, 0.5, 2.0])
    ids = np.array([30, 10, 20, 5, 99])
    for seed in (0, 1):
        tied = sorted([0, 1, 2], key=lambda i: int(tie_keys(ids[[i]], seed)[0]))
        assert top_k(scores, ids, 3, seed).tolist() == [4, *tied[:2]]  # 99 (score 2), then the tie by hash
    str_ids = np.array(["c", "a", "b", "z", "y"], dtype=object)
    assert top_k(scores, str_ids, 1).tolist() == [4]


def test_top_k_tie_order_depends_on_the_seed_not_on_row_order() -> None:
    ids = np.arange(1000)
    scores = np.zeros(1000)
    picks = {seed: ids[top_k(scores, ids, 20, seed)].tolist() for seed in range(3)}
    assert len({tuple(p) for p in picks.values()}) == 3
    perm = np.random.default_rng(5).permutation(1000)
    assert ids[perm][top_k(scores[perm], ids[perm], 20, 1)].tolist() == picks[1]


def test_top_k_ties_do_not_follow_class_ordered_ids() -> None:
    """Ids numbered class by class (as `ingest` and CIFAR-10's Parquet have them) and a batch of equal
    scores (uniform probabilities before any label): the batch spans the classes, not the first one."""
    ids = np.arange(1000)
    classes = ids // 100  # 10 classes of 100 consecutive ids
    for seed in range(5):
        picked = classes[top_k(np.ones(1000), ids, 20, seed)]
        assert len(set(picked.tolist())) >= 5, picked


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_top_k_matches_sorted_reference_with_many_ties(id_kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 300
    scores = rng.integers(0, 8, n).astype(np.float64)  # heavy ties
    ids = rng.permutation(5000)[:n]
    if id_kind == "str":
        ids = np.array([f"img-{i:05d}" for i in ids], dtype=object)
    hashed = tie_keys(ids, 3)
    for k in (0, 1, 7, 50, 299, 300):
        ref = sorted(range(n), key=lambda i: (-scores[i], int(hashed[i])))[:k]
        assert top_k(scores, ids, k, 3).tolist() == ref


def test_top_k_errors() -> None:
    with pytest.raises(ValueError, match="only n=2"):
        top_k(np.array([0.1, 0.2]), np.array([1, 2]), 3)
    with pytest.raises(ValueError, match=r"NaN for ids \[7\]"):
        top_k(np.array([0.1, np.nan]), np.array([1, 7]), 1)
    with pytest.raises(ValueError, match="all int64 or all str"):
        top_k(np.array([0.1, 0.2]), np.array([1, "a"], dtype=object), 1)


def test_score_based_selection_is_top_k_of_score() -> None:
    view = make_view()
    for method in ("entropy", "margin", "least_confidence", "variation_ratio", "committee_kl", "weibull"):
        s = score(method, view)
        hashed = tie_keys(view.ids, 0)
        ref = sorted(range(view.n), key=lambda i: (-s[i], int(hashed[i])))[:20]
        assert select(method, view, 20).tolist() == ref


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


def test_nan_and_unnormalised_probs_name_the_ids() -> None:
    view = make_view(n=30)
    probs = view.probs.astype(np.float64).copy()
    probs[4, 1] = np.nan
    probs[[2, 9, 11, 13, 17, 21, 25], :] *= 0.5  # 7 rows that sum to 0.5
    bad = PoolView(ids=view.ids, probs=probs)
    with pytest.raises(ValueError) as err:
        select("random", bad, 3)
    msg = str(err.value)
    assert f"NaN/inf values for ids [{view.ids[4]}] (1 in all)" in msg
    first_five = ", ".join(str(view.ids[i]) for i in (2, 9, 11, 13, 17))
    assert f"rows not summing to 1 (+-0.001) for ids [{first_five}, ...] (7 in all)" in msg
    assert "softmax" in msg  # says what to do


def test_logits_and_negative_values_are_rejected() -> None:
    ids = np.array(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"outside \[0, 1\] for ids \['b'\]"):
        select("entropy", PoolView(ids, np.array([[0.5, 0.5], [-0.5, 1.5], [0.2, 0.8]])), 1)
    with pytest.raises(ValueError, match="at least 2"):
        select("entropy", PoolView(ids, np.ones((3, 1))), 1)
    # float32 softmax rounding is fine
    p = softmax(np.random.default_rng(0).normal(size=(3, 10))).astype(np.float32)
    assert select("entropy", PoolView(ids, p), 1).shape == (1,)


def test_committee_member_with_bad_probs_is_named() -> None:
    view = make_view(n=20)
    cp = view.committee_probs.copy()
    cp[2, 5] = 0.0
    with pytest.raises(ValueError, match=rf"committee_probs\[2\].*ids \[{view.ids[5]}\]"):
        select("committee_kl", PoolView(**{**view.__dict__, "committee_probs": cp}), 3)
    with pytest.raises(ValueError, match=r"shape \(m, n, C\)"):
        select("committee_kl", PoolView(**{**view.__dict__, "committee_probs": cp[:, :10]}), 3)


def test_other_input_errors() -> None:
    view = make_view(n=20)
    dup = view.ids.copy()
    dup[3] = dup[7]
    with pytest.raises(ValueError, match=rf"duplicated ids \[{dup[7]}\]"):
        select("entropy", PoolView(dup, view.probs), 2)
    emb = view.embeddings.copy()
    emb[6, 0] = np.inf
    with pytest.raises(ValueError, match=rf"embeddings contain NaN/inf for ids \[{view.ids[6]}\]"):
        select("badge", PoolView(**{**view.__dict__, "embeddings": emb}), 2)
    labels = view.labeled_labels.copy()
    labels[0] = 9
    with pytest.raises(ValueError, match="labeled_labels outside the 4 classes"):
        select("weibull", PoolView(**{**view.__dict__, "labeled_labels": labels}), 2)
    with pytest.raises(ValueError, match="labeled_embeddings must have shape"):
        select("weibull", PoolView(**{**view.__dict__, "labeled_embeddings": view.labeled_embeddings[:, :3]}), 2)


# ------------------------------------------------------------------------------------------------
# uncertainty scores
# ------------------------------------------------------------------------------------------------


def test_uncertainty_scores_on_hand_made_examples() -> None:
    probs = np.array(
        [
            [1.0, 0.0, 0.0],  # certain
            [0.5, 0.5, 0.0],  # dead heat of two
            [1 / 3, 1 / 3, 1 / 3],  # uniform
            [0.7, 0.2, 0.1],
        ]
    )
    view = PoolView(ids=np.arange(4), probs=probs)
    np.testing.assert_allclose(score("entropy", view), [0, math.log(2), math.log(3), -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))])
    np.testing.assert_allclose(score("margin", view), [0.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(score("least_confidence", view), [0.0, 0.5, 2 / 3, 0.3])
    np.testing.assert_allclose(score("variation_ratio", view), [0.0, 0.5, 2 / 3, 0.3])


def test_uncertainty_scores_match_independent_formulas() -> None:
    view = make_view(n=200, n_classes=7)
    p = view.probs.astype(np.float64)
    p /= p.sum(1, keepdims=True)  # scipy renormalises; float32 rows are 1 only to ~1e-7
    view = PoolView(ids=view.ids, probs=p)
    np.testing.assert_allclose(score("entropy", view), scipy_entropy(p, axis=1), rtol=1e-10)
    srt = np.sort(p, axis=1)
    np.testing.assert_allclose(score("margin", view), 1 - (srt[:, -1] - srt[:, -2]))
    np.testing.assert_allclose(score("least_confidence", PoolView(view.ids, view.probs)), 1 - srt[:, -1])
    # the ranking of entropy agrees with an explicit argsort of -H then id
    h = scipy_entropy(p, axis=1)
    assert select("entropy", view, 10).tolist() == list(np.lexsort((view.ids, -np.round(h, 12)))[:10])


# ------------------------------------------------------------------------------------------------
# committee
# ------------------------------------------------------------------------------------------------


def one_hot_votes(votes: list[int], n_classes: int, confidence: float = 0.7) -> np.ndarray:
    """(m, C) member probabilities whose argmax is each vote."""
    out = np.full((len(votes), n_classes), (1 - confidence) / (n_classes - 1))
    out[np.arange(len(votes)), votes] = confidence
    return out


def test_vote_entropy_and_variation_ratio_hand_computed() -> None:
    members_votes = [[0, 0, 1, 2], [1, 1, 1, 1], [0, 0, 1, 1]]  # per candidate, 4 members
    cp = np.stack([one_hot_votes(v, 3) for v in members_votes], axis=1)  # (4, 3, 3)
    view = PoolView(ids=np.array([10, 11, 12]), probs=cp.mean(0), committee_probs=cp)
    # votes (2,1,1)/4: -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2; unanimous: 0; (2,2)/4: ln 2
    np.testing.assert_allclose(score("committee_vote_entropy", view), [1.5 * math.log(2), 0.0, math.log(2)])
    np.testing.assert_allclose(score("variation_ratio", view), [1 - 2 / 4, 0.0, 1 - 2 / 4])
    assert select("committee_vote_entropy", view, 3).tolist() == [0, 2, 1]


def test_committee_kl_hand_computed_and_against_scipy() -> None:
    # two members, certain and opposite: consensus (1/2, 1/2), each KL = ln 2
    cp = np.array([[[1.0, 0.0], [0.6, 0.4]], [[0.0, 1.0], [0.6, 0.4]]])  # (m=2, n=2, C=2)
    view = PoolView(ids=np.array([0, 1]), probs=cp.mean(0), committee_probs=cp)
    np.testing.assert_allclose(score("committee_kl", view), [math.log(2), 0.0], atol=1e-12)
    view = make_view(n=50, m=5)
    cp = view.committee_probs.astype(np.float64)
    cp /= cp.sum(2, keepdims=True)  # scipy renormalises; float32 rows are 1 only to ~1e-7
    view = PoolView(ids=view.ids, probs=view.probs, committee_probs=cp)
    consensus = cp.mean(0)
    ref = np.mean([scipy_entropy(cp[j], consensus, axis=1) for j in range(cp.shape[0])], axis=0)
    np.testing.assert_allclose(score("committee_kl", view), ref, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# random and balanced
# ------------------------------------------------------------------------------------------------


def test_random_is_seeded() -> None:
    view = make_view(n=100)
    a, b, c = (select("random", view, 20, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert set(a.tolist()) != set(c.tolist())
    # every candidate can be drawn: over seeds the picks cover the pool
    seen = set().union(*(select("random", view, 20, seed=s).tolist() for s in range(60)))
    assert seen == set(range(100))


def water_fill(counts: dict[int, int], k: int) -> dict[int, int]:
    """Independent reference: give one pick to each class with room, in turn, until k are given."""
    got = {c: 0 for c in counts}
    while sum(got.values()) < k:
        room = [c for c in counts if got[c] < counts[c]]
        share = min(len(room), k - sum(got.values()))
        low = sorted(room, key=lambda c: got[c])[:share]
        for c in low:
            got[c] += 1
    return got


def test_balanced_spreads_over_predicted_classes() -> None:
    counts = {0: 50, 1: 3, 2: 40, 4: 20}  # class 3 never predicted
    predicted = np.concatenate([np.full(v, c) for c, v in counts.items()])
    rng = np.random.default_rng(0)
    perm = rng.permutation(predicted.shape[0])
    predicted = predicted[perm]
    probs = softmax(5 * np.eye(5)[predicted] + rng.normal(size=(predicted.shape[0], 5)) * 0.1)
    view = PoolView(ids=np.arange(predicted.shape[0]) + 1000, probs=probs)
    for k in (1, 4, 30, 63, 113):
        pos = select("balanced", view, k, seed=7)
        got = np.bincount(predicted[pos], minlength=5)
        ref = water_fill(counts, k)
        assert got[3] == 0 and got[1] == ref[1]  # the small class is exhausted before the others
        assert sorted(got[list(counts)].tolist()) == sorted(ref.values())
        unsaturated = [got[c] for c in counts if got[c] < counts[c]]
        assert not unsaturated or max(unsaturated) - min(unsaturated) <= 1
    # prefixes are balanced too: the first 4 picks cover the 4 predicted classes
    pos = select("balanced", view, 40, seed=7)
    assert set(predicted[pos[:4]].tolist()) == {0, 1, 2, 4}
    assert set(select("balanced", view, 40, seed=8).tolist()) != set(pos.tolist())


# ------------------------------------------------------------------------------------------------
# k-center adapter and hybrids
# ------------------------------------------------------------------------------------------------


def reference_greedy(x: np.ndarray, k: int, labeled: np.ndarray | None = None, first: int | None = None) -> list[int]:
    """Plain farthest-first traversal (Gonzalez 1985), the definition k-center greedy must match."""
    x = x.astype(np.float64)
    if labeled is not None:
        mind = np.min(((x[:, None, :] - labeled[None].astype(np.float64)) ** 2).sum(-1), axis=1)
        picks: list[int] = []
    else:
        picks = [first]
        mind = ((x - x[first]) ** 2).sum(-1)
    while len(picks) < k:
        j = int(np.argmax(mind))
        picks.append(j)
        mind = np.minimum(mind, ((x - x[j]) ** 2).sum(-1))
    return picks


def test_kcenter_matches_reference_greedy() -> None:
    view = make_view(n=150, d=5)
    pos = select("kcenter", view, 12)
    assert pos.tolist() == reference_greedy(view.embeddings, 12, view.labeled_embeddings)
    # cold start: a seeded first center, then farthest-first from it
    cold = PoolView(ids=view.ids, probs=view.probs, embeddings=view.embeddings)
    pos = select("kcenter", cold, 12, seed=5)
    assert pos.tolist() == reference_greedy(view.embeddings, 12, None, first=int(pos[0]))
    np.testing.assert_array_equal(select("kcenter", cold, 12, seed=5), pos)


@pytest.mark.parametrize("base", ["entropy", "margin", "weibull"])
def test_hybrid_is_kcenter_among_the_top_scores(base: str) -> None:
    view = make_view(n=150, d=5)
    k, factor = 6, 3
    s = score(base, view, **({"tail_size": 5} if base == "weibull" else {}))
    hashed = tie_keys(view.ids, 0)
    kept = np.array(sorted(range(view.n), key=lambda i: (-s[i], int(hashed[i])))[: k * factor])
    ref = kept[reference_greedy(view.embeddings[kept], k, view.labeled_embeddings)]
    opts = {"tail_size": 5} if base == "weibull" else {}
    by_name = select(f"{base}_kcenter", view, k, prefilter_factor=factor, **opts)
    by_option = select("kcenter", view, k, prefilter=base, prefilter_factor=factor, prefilter_options=opts)
    assert by_name.tolist() == ref.tolist()
    assert by_option.tolist() == ref.tolist()


def test_one_prefilter_factor_default() -> None:
    """entropy_kcenter and kcenter with prefilter=entropy are one algorithm, so they share one default
    factor: the config's (what the round loop passes) and the acquisition constant (the hybrids' own)."""
    assert Config().select.prefilter_factor == acq.PREFILTER_FACTOR == 10
    view, k = make_view(n=150, d=5), 6
    by_name = select("entropy_kcenter", view, k)
    assert select("kcenter", view, k, prefilter="entropy").tolist() == by_name.tolist()
    by_config = select("kcenter", view, k, prefilter="entropy", prefilter_factor=Config().select.prefilter_factor)
    assert by_config.tolist() == by_name.tolist()
    # the factor matters on this view: a smaller one picks other points
    assert select("kcenter", view, k, prefilter="entropy", prefilter_factor=4).tolist() != by_name.tolist()


def test_prefilter_errors_and_badge_prefilter() -> None:
    view = make_view(n=60)
    with pytest.raises(ValueError, match="score-based"):
        select("kcenter", view, 3, prefilter="random")
    with pytest.raises(ValueError, match="prefilter_factor must be >= 1"):
        select("kcenter", view, 3, prefilter="entropy", prefilter_factor=0.5)
    with pytest.raises(ValueError, match="unknown option"):
        select("entropy", view, 3, prefilter="margin")
    # badge among the top 12 by entropy only ever picks from those 12
    pos = select("badge", view, 4, prefilter="entropy", prefilter_factor=3)
    top = set(select("entropy", view, 12).tolist())
    assert set(pos.tolist()) <= top
    # a factor larger than n/k keeps the whole pool: same as no pre-filter
    assert select("kcenter", view, 5, prefilter="entropy", prefilter_factor=100).tolist() == select("kcenter", view, 5).tolist()


# ------------------------------------------------------------------------------------------------
# purity
# ------------------------------------------------------------------------------------------------


def test_acquisition_never_imports_ray() -> None:
    # runs every method (kcenter's lazy import included) in a fresh interpreter
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_acquisition import make_view\n"
        "import ray_al.acquisition as a\n"
        "v = make_view(n=40)\n"
        "for m in sorted(a.ACQUISITIONS):\n"
        "    a.select(m, v, 5)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pattern = re.compile(r"^\s*(import ray\b|from ray\b)")  # `from ray_al` does not match
    for path in (REPO / "ray_al" / "acquisition").glob("*.py"):
        for line in path.read_text().splitlines():
            assert not pattern.match(line), (path, line)


@pytest.mark.parametrize("method", ["kcenter", "typiclust"])
def test_missing_faiss_says_which_extra_to_install(method: str, monkeypatch) -> None:
    from ray_al.core.optional import MissingDependencyError

    monkeypatch.setitem(sys.modules, "faiss", None)  # what an environment without faiss gives `import faiss`
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[cpu\]' \(faiss-cpu\)"):
        select(method, make_view(), 5)


@pytest.mark.parametrize("method", ["margin", "entropy", "least_confidence"])
def test_per_row_scores_in_chunks_equal_the_whole_and_stay_small(method, monkeypatch):
    """Uncertainty scores are computed a bounded number of rows at a time (acquisition.base.ROW_CHUNK):
    the same scores as over the whole pool at once, and the float64 temporaries do not grow with the pool
    (at a million rows x 10 classes, whole-pool temporaries are 2 x 80 MB)."""
    import tracemalloc

    from ray_al.acquisition import base

    fn = {"margin": acq.margin.margin_scores, "entropy": acq.entropy.entropy_scores,
          "least_confidence": acq.least_confidence.least_confidence_scores}[method]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=5000).astype(np.float32)
    monkeypatch.setattr(base, "ROW_CHUNK", 700)  # several chunks and a ragged last one
    np.testing.assert_array_equal(score(method, PoolView(ids=np.arange(5000), probs=probs)), fn(probs))
    monkeypatch.undo()
    big = rng.dirichlet(np.ones(10), size=1_000_000).astype(np.float32)
    view = PoolView(ids=np.arange(len(big)), probs=big)
    tracemalloc.start()
    score(method, view)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8e6 + 40e6, f"{peak / 1e6:.0f} MB for {method}: the scores (8 MB) plus chunks, not the pool"


def test_string_ids_are_not_copied_into_fixed_width_unicode_for_the_whole_pool():
    """Path ids (what ingest gives) checked and tie-broken without a unicode copy of every id: numpy's
    fixed-width str takes 4 bytes per character of the longest id for each id (a million 60-character
    paths: 240 MB, and the duplicate check's sort a second copy). Only the top-k candidates are converted."""
    import tracemalloc

    n = 200_000
    ids = np.array([f"class_{i % 10}/shard_{i // 1000:05d}/image_{i:012d}_with_a_long_name.jpg" for i in range(n)],
                   dtype=object)
    unicode_bytes = n * max(map(len, ids)) * 4
    probs = np.random.default_rng(1).dirichlet(np.ones(10), size=n).astype(np.float32)
    view = PoolView(ids=ids, probs=probs)
    tracemalloc.start()
    picked = select("margin", view, 50, seed=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    scores = acq.margin.margin_scores(probs)
    assert set(picked.tolist()) == set(np.argsort(-scores, kind="stable")[:50].tolist())  # no ties here
    with pytest.raises(ValueError, match="duplicated ids"):
        select("margin", PoolView(ids=np.concatenate([ids[:10], ids[:1]]), probs=probs[:11]), 2)
    assert peak < 0.5 * unicode_bytes, f"{peak / 1e6:.0f} MB against {unicode_bytes / 1e6:.0f} MB of unicode ids"
