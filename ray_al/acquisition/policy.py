"""Which strategy a round runs: the `auto` policy. Pure, no Ray.

`auto` follows the low-budget literature: typicality first (TypiClust, Hacohen et al. 2022), because at a few
labels the model's uncertainty is not worth much and uncertainty sampling spends the budget on outliers; then
margin (TCM, Doucet et al. 2023: TypiClust, then margin) once uncertainty pays.

When to switch is read from the round's data (DATA_RULE): margin once the current model's mean top-class
probability over the unlabeled pool ("pool_conf") reaches 0.8, typiclust before. Measured with
`python -m ray_al.bench.autoswitch` on three fixed feature sets (docs/auto_rule.md, 2026-12-06): it switches
on raw digits pixels before the round to 200 labels, never up to 200 labels on ImageNet EfficientNet-Lite0
CIFAR-10 features (where typiclust stays best), and early on raw CIFAR-10 pixels; the fixed count it replaces
(3 labels per class, commit 059c831) fell 2.8-4.7 points under the best method on digits pixels and 2.9 on
the EfficientNet features. Chosen on the data it is reported on (no held-out feature set), and on one
probe (scikit-learn logistic regression, C=1): a model with another confidence scale moves the switch. So
the cycle reads pool_conf through that probe (`probe_confidence`, on the round's features), not from the
round's own head: a frozen EfficientNet-Lite0 head trained 30 epochs on 10 CIFAR-10 labels gave
pool_conf=0.956 at 18.8% accuracy, and auto ran margin from the first round
(`configs/cifar10_pretrained.yaml` at 64 px on 1,000 images, 2026-12-06).
The cycle's default since 2026-12-07 (the from-scratch SimCLR sweeps of digits and CIFAR-10, docs/auto_rule.md);
`switch_per_class` (select.auto_switch_per_class > 0) keeps the fixed rule of commit 059c831.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

AUTO = "auto"
EARLY_METHOD = "typiclust"
LATE_METHOD = "margin"


@dataclass(frozen=True)
class Choice:
    """The method a round ran and why (recorded in results.jsonl and the round table)."""

    method: str
    why: str


def auto_choice(n_labeled: int, n_classes: int, switch_per_class: float) -> Choice:
    """typiclust below `switch_per_class` labels per class, margin from there on. n_labeled counts the
    labels with a class: an answer of "none of these classes" adds to no class."""
    per_class = n_labeled / max(1, n_classes)
    if per_class < switch_per_class:
        return Choice(EARLY_METHOD, f"auto: {per_class:.1f} labels/class < {switch_per_class:g}: typicality")
    return Choice(LATE_METHOD, f"auto: {per_class:.1f} labels/class >= {switch_per_class:g}: uncertainty")


# ----------------------------------------------------------------------------------------------
# data-driven switch signals (measured by `python -m ray_al.bench.autoswitch`)
# ----------------------------------------------------------------------------------------------

PURITY_ALPHA = 0.95  # ProbCover's purity of the covering balls
TYPICALITY_KNN = 20  # neighbours of the pool-wide typicality (typiclust's K_NN)


@dataclass(frozen=True, eq=False)
class SwitchContext:
    """What the switch signals need of a pool, computed once: the rows (N, d) float32, the class count,
    the purity radius delta (ProbCover: largest radius whose balls are 95% pure against k-means
    pseudo-labels with K = classes) and each row's pool-wide typicality (1 / mean distance to its
    TYPICALITY_KNN nearest rows)."""

    x: np.ndarray
    classes: int
    delta: float
    typicality: np.ndarray | None = None

    @classmethod
    def build(cls, x: np.ndarray, classes: int, seed: int = 0, typicality: bool = True) -> "SwitchContext":
        x = np.ascontiguousarray(x, dtype=np.float32)
        typ = pool_typicality(x) if typicality else None
        return cls(x=x, classes=int(classes), delta=purity_delta(x, classes, seed), typicality=typ)


def purity_delta(x: np.ndarray, classes: int, seed: int = 0, sample: int = 2000) -> float:
    """ProbCover's purity radius of the rows x (N, d): alpha = PURITY_ALPHA, K = classes pseudo-labels."""
    from ray_al.acquisition.base import PoolView
    from ray_al.acquisition.geometry import PoolRows, seeded_kmeans
    from ray_al.acquisition.probcover import _centre, purity_radius

    pool = PoolRows(PoolView(ids=np.arange(len(x)), embeddings=x))
    _, err = _centre(pool)
    rng = np.random.default_rng([int(seed), 0xD1])
    S = min(int(sample), pool.N)
    rows = np.arange(pool.N) if S == pool.N else np.sort(rng.choice(pool.N, size=S, replace=False))
    K = int(min(max(2, classes), pool.N))
    _, labels = seeded_kmeans(pool, K, seed)
    t, _ = purity_radius(pool, labels, K, rows, PURITY_ALPHA, err)
    return float(np.sqrt(max(t, 0.0)))


def pool_typicality(x: np.ndarray, knn: int = TYPICALITY_KNN) -> np.ndarray:
    """(N,) 1 / mean distance to the knn nearest other rows, over the whole pool."""
    from ray_al.acquisition.typiclust import mean_knn_distance

    with np.errstate(divide="ignore"):
        return 1.0 / mean_knn_distance(x, knn).astype(np.float64)


def coverage(x: np.ndarray, labeled: np.ndarray, delta: float) -> float:
    """Share of the rows x within delta of a labeled row (a labeled row covers itself)."""
    from ray_al.core.optional import require_faiss

    if not labeled.any():
        return 0.0
    dist, _ = require_faiss().knn(x, np.ascontiguousarray(x[labeled]), 1)
    return float(np.mean(np.sqrt(np.maximum(dist[:, 0], 0.0)) < delta))


def _percentile(values: np.ndarray, among: np.ndarray) -> float:
    """Mean share of `among` strictly below each of `values` (0.5: like a random pick)."""
    ranked = np.sort(among)
    return float(np.mean(np.searchsorted(ranked, values, side="left") / max(1, len(ranked))))


def switch_signals(ctx: SwitchContext, labeled: np.ndarray, probs: np.ndarray, picks: np.ndarray,
                   n_in_class: int) -> dict[str, float]:
    """The candidate signals before a round: labeled (N,) mask, probs (N, C) of the current model,
    picks = typiclust's proposed positions for the round."""
    free = np.flatnonzero(~labeled)
    top2 = np.sort(probs, axis=1)[:, -2:]
    unc = 1.0 - (top2[:, 1] - top2[:, 0])  # margin uncertainty, higher = less sure
    conf = top2[:, 1]
    k = len(picks)
    margin_picks = free[np.argsort(-unc[free], kind="stable")[:k]]
    after = labeled.copy()
    after[picks] = True
    out = {
        "per_class": n_in_class / max(1, ctx.classes),
        "coverage": coverage(ctx.x, labeled, ctx.delta),
        "coverage_after": coverage(ctx.x, after, ctx.delta),
        "unc_pct": _percentile(unc[picks], unc[free]),
        "conf_ratio": float(conf[picks].mean() / conf[free].mean()),
        "pool_conf": float(conf[free].mean()),
    }
    if ctx.typicality is not None:
        typ = ctx.typicality
        out.update(typ_pct=_percentile(typ[picks], typ[free]),
                   typ_ratio=float(np.median(typ[picks]) / np.median(typ[free])),
                   margin_typ_pct=_percentile(typ[margin_picks], typ[free]))
    return out


@dataclass(frozen=True)
class SwitchRule:
    """Switch to LATE_METHOD when `signal` <op> threshold (op ">=" or "<")."""

    signal: str
    op: str
    threshold: float

    def says_late(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value < self.threshold


DATA_RULE = SwitchRule("pool_conf", ">=", 0.8)  # docs/auto_rule.md: chosen on digits, EfficientNet, CIFAR pixels


def labeled_in_class(view) -> int:
    """A PoolView's labeled rows with a class (an answer of "none of these classes", label -1, has none)."""
    labeled = 0 if view.labeled_embeddings is None else int(np.shape(view.labeled_embeddings)[0])
    return labeled if view.labeled_labels is None else int(np.sum(np.asarray(view.labeled_labels) >= 0))


def rule_signals(view) -> dict[str, float]:
    """What the data rule reads of a PoolView with probs: pool_conf (mean top-class probability over the
    unlabeled rows) and, for the record, per_class (labeled rows per class column)."""
    probs = np.asarray(view.probs)
    return {"pool_conf": pool_confidence(probs), "per_class": labeled_in_class(view) / max(1, probs.shape[1])}


def decide(n_in_class: int, n_classes: int, switch_per_class: float | None,
           read_signals: Callable[[], dict[str, float]]) -> tuple[Choice, dict[str, float]]:
    """`auto`'s method for a round, for the cycle (loop.selection) and select("auto") alike: typiclust
    without class probabilities (n_classes 0: a user's own embeddings) or labels; the fixed rule of commit
    059c831 when switch_per_class is given; else DATA_RULE on read_signals(), called only then (the cycle
    reads the probabilities for it alone). Returns the choice and the signals read ({} when none were)."""
    if not n_classes:
        return Choice(EARLY_METHOD, "auto: no class probabilities in the embeddings: typicality"), {}
    if not n_in_class:
        return Choice(EARLY_METHOD, "auto: no labels yet: typicality"), {}
    if switch_per_class is not None:
        return auto_choice(n_in_class, n_classes, float(switch_per_class)), {}
    signals = read_signals()
    return data_choice(signals), signals


PROBE_C = 1.0  # the probe DATA_RULE was measured with (bench.lowbudget and bench.autoswitch, --c 1)
PROBE_SAMPLE = 2_000  # unlabeled rows the cycle's probe scores: pool_conf's standard error about 0.005


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = PROBE_C):
    """A multinomial logistic regression on labeled rows (scikit-learn); None with a single class."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return None
    return LogisticRegression(C=c, max_iter=500).fit(x, y)


def probe_confidence(labeled_x: np.ndarray, labeled_y: np.ndarray, pool_x: np.ndarray, c: float = PROBE_C) -> float:
    """pool_conf on DATA_RULE's own scale: features standardised on pool_x, `fit_probe` on the labeled rows,
    mean top-class probability over pool_x (1.0 when the labels hold one class: the probe predicts it)."""
    mean, std = pool_x.mean(axis=0), pool_x.std(axis=0) + 1e-6
    model = fit_probe((labeled_x - mean) / std, labeled_y, c)
    return 1.0 if model is None else pool_confidence(model.predict_proba((pool_x - mean) / std))


def pool_confidence(probs: np.ndarray, chunk: int = 65_536) -> float:
    """Mean top-class probability of the rows of probs (n, C), `chunk` rows at a time (0 for no rows)."""
    probs = np.asarray(probs)
    total = sum(float(probs[lo:lo + chunk].max(axis=1).sum(dtype=np.float64)) for lo in range(0, len(probs), chunk))
    return total / len(probs) if len(probs) else 0.0


def data_choice(signals: dict[str, float], rule: SwitchRule = DATA_RULE) -> Choice:
    """The round's method from its signals under `rule`, the reason naming the signal and its value."""
    value = signals[rule.signal]
    if rule.says_late(value):
        return Choice(LATE_METHOD, f"auto: {rule.signal}={value:.3f} {rule.op} {rule.threshold:g}: uncertainty")
    other = "<" if rule.op == ">=" else ">="
    return Choice(EARLY_METHOD, f"auto: {rule.signal}={value:.3f} {other} {rule.threshold:g}: typicality")
