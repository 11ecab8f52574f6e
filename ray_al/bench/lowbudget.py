"""Benchmark: selection methods against random on fixed features, at low budgets, with a linear probe.

    python -m ray_al.bench.lowbudget --features FEATURES.parquet --test TEST.parquet \\
        --budgets 10 20 30 50 100 200 --seeds 0 1 2 3 4 --start warm cold

What a frozen encoder with a linear head does each round, without Ray or images: the pool's features are
fixed (computed once by a frozen ray_al run, `RUN_DIR/frozen_features`, or by any model), so a round is
"fit a probe on the labeled rows, select the next batch with `ray_al.acquisition.select`, repeat". That is
seconds per round where a cycle takes minutes, so methods x budgets x seeds fit in minutes: it is the place
to derive a policy such as `auto`; `python -m ray_al.sweep` confirms it through the real cycle.

Inputs: Parquet with `id`, `embedding` (list of floats) and `label` for the pool and the test split.
The probe: features standardised on the pool (no labels used), then scikit-learn's multinomial logistic
regression (C=--c); its pool probabilities feed the methods that read them (margin, badge, auto's late
phase; `auto` is ray_al.acquisition.select("auto"), which decides each round from the data, or with
--switch N the fixed rule, typiclust below N labels per class). Warm start: --initial random labels
(seeded); cold start: the first --initial picked by each method itself on the unlabeled pool (random's
cold start is its warm start). Budgets are labelled-set sizes. Prints mean accuracy +- standard error over seeds per method and budget, the area under the curve
(mean over budgets, points) and each method's paired difference with random (+- SE); last line JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ray_al import acquisition
from ray_al.acquisition import PoolView
from ray_al.acquisition.policy import AUTO, fit_probe

METHODS = ("random", "kcenter", "margin", "badge", "typiclust", "probcover", AUTO)


def load(uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, features float32, labels) of a features Parquet."""
    from ray_al.core import storage
    from ray_al.core.embeddings import matrix

    table = storage.read_parquet(uri, columns=["id", "embedding", "label"])
    return table.column("id").to_numpy(), matrix(table.column("embedding")), table.column("label").to_numpy()


def standardise(pool: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = pool.mean(axis=0), pool.std(axis=0) + 1e-6
    return (pool - mean) / std, (test - mean) / std


def probabilities(model, x: np.ndarray, y_seen: np.ndarray, classes: int) -> np.ndarray:
    """(n, classes) probabilities; classes the labeled set lacks get 0, a one-class set predicts it."""
    out = np.zeros((len(x), classes), np.float32)
    if model is None:
        out[:, int(y_seen[0]) if len(y_seen) else 0] = 1.0
        return out
    out[:, model.classes_] = model.predict_proba(x)
    return out


def pick(method: str, x: np.ndarray, ids: np.ndarray, labeled: np.ndarray, probs: np.ndarray, k: int,
         seed: int, switch: float, y: np.ndarray) -> np.ndarray:
    """k positions of unlabeled rows chosen by `method`; auto with switch > 0 is the fixed rule (typiclust
    below `switch` labels per class), with switch <= 0 the `auto` strategy, which decides from the data."""
    options = {"switch_per_class": switch} if method == AUTO and switch > 0 else {}
    free = np.flatnonzero(~labeled)
    view = PoolView(ids=ids[free], probs=probs[free], embeddings=x[free],
                    labeled_embeddings=x[labeled] if labeled.any() else None,
                    labeled_labels=y[labeled] if labeled.any() else None,
                    labeled_probs=probs[labeled] if labeled.any() else None)
    return free[acquisition.select(method, view, k, seed=seed, **options)]


def curve(method: str, data: dict, budgets: list[int], seed: int, start: str, args) -> list[float]:
    """Test accuracy at each budget for one method, seed and start."""
    x, y, ids, classes = data["x"], data["y"], data["ids"], data["classes"]
    labeled = np.zeros(len(x), bool)
    rng = np.random.default_rng(seed)
    first = budgets[0] if start == "cold" else args.initial
    if start == "cold" and method != "random":
        uniform = np.full((len(x), classes), 1.0 / classes, np.float32)
        labeled[pick(method, x, ids, labeled, uniform, first, seed, args.switch, y)] = True
    else:
        labeled[rng.choice(len(x), first, replace=False)] = True
    accuracies = []
    for budget in budgets:
        model = fit_probe(x[labeled], y[labeled], args.c)
        probs = probabilities(model, x, y[labeled], classes)
        if budget > labeled.sum():
            labeled[pick(method, x, ids, labeled, probs, budget - int(labeled.sum()), seed * 1000 + budget,
                         args.switch, y)] = True
            model = fit_probe(x[labeled], y[labeled], args.c)
        test_probs = probabilities(model, data["tx"], y[labeled], classes)
        accuracies.append(float((test_probs.argmax(axis=1) == data["ty"]).mean()))
    return accuracies


def summarise(results: dict, budgets: list[int]) -> dict:
    """Per method: mean and SE per budget, AUC (mean over budgets, points) and its paired gain on random."""
    out = {}
    base = np.asarray(results.get("random", []))
    for method, runs in results.items():
        acc = np.asarray(runs) * 100  # seeds x budgets
        se = acc.std(axis=0, ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else np.zeros(len(budgets))
        auc = acc.mean(axis=1)
        row = {"mean": acc.mean(axis=0).round(2).tolist(), "se": se.round(2).tolist(),
               "auc": round(float(auc.mean()), 2)}
        if len(base) == len(acc) and method != "random":
            gain = auc - base.mean(axis=1) * 100
            per_budget = acc - base * 100
            row["auc_gain"] = round(float(gain.mean()), 2)
            row["auc_gain_se"] = round(float(gain.std(ddof=1) / np.sqrt(len(gain))), 2) if len(gain) > 1 else 0.0
            row["gain"] = per_budget.mean(axis=0).round(2).tolist()
        out[method] = row
    return out


def print_table(summary: dict, budgets: list[int], title: str) -> None:
    print(f"\n{title}: test accuracy % (mean +- SE over seeds); AUC = mean over budgets; gain vs random, paired")
    print(f"{'method':<11}" + "".join(f"{b:>13}" for b in budgets) + f"{'AUC':>8}{'gain':>15}")
    for method, row in summary.items():
        cells = "".join(f"{m:>7.1f}+-{s:<4.1f}" for m, s in zip(row["mean"], row["se"]))
        gain = f"{row['auc_gain']:+.1f}+-{row['auc_gain_se']:.1f}" if "auc_gain" in row else "-"
        print(f"{method:<11}{cells}{row['auc']:>8.1f}{gain:>15}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", required=True, help="pool features Parquet (id, embedding, label)")
    p.add_argument("--test", required=True, help="test features Parquet (id, embedding, label)")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 30, 50, 100, 200])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--start", nargs="+", default=["warm", "cold"], choices=["warm", "cold"])
    p.add_argument("--initial", type=int, default=10, help="random labels of a warm start")
    p.add_argument("--switch", type=float, default=0.0,
                   help="auto's fixed switch in labels per class (select.auto_switch_per_class); 0: from the data")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the probe")
    args = p.parse_args(argv)
    ids, x, y = load(args.features)
    _, tx, ty = load(args.test)
    x, tx = standardise(x, tx)
    data = {"x": x, "y": y, "ids": ids, "tx": tx, "ty": ty, "classes": int(max(y.max(), ty.max())) + 1}
    report, started = {}, time.perf_counter()
    for start in args.start:
        results = {m: [curve(m, data, args.budgets, s, start, args) for s in args.seeds] for m in args.methods}
        report[start] = summarise(results, args.budgets)
        print_table(report[start], args.budgets, f"{start} start, {len(x)} pool rows, seeds {args.seeds}")
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
