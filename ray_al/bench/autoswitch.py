"""Benchmark: where `auto` should switch from typiclust to margin, and which signal says so.

    python -m ray_al.bench.autoswitch --features FEATURES.parquet --test TEST.parquet \\
        --budgets 10 20 30 50 100 200 --seeds 0 1 2 --start warm cold --out trace.json

Same probe, seeds and selection calls as `python -m ray_al.bench.lowbudget` (its `curve` with the same
per-round seeds), so its rows match lowbudget's. Per seed and start it runs:
- random (the baseline) and the typiclust trajectory (= `auto` until it switches);
- "switch after b" for b in --switch-after: typiclust's labeled set at b, then margin every later round
  (b = the first budget in warm start is margin from the random seed set; today's auto at 3 labels per
  class on 10 classes is "switch after 30"; typiclust itself is "never");
- at every round of the typiclust trajectory, the candidate signals a data-driven switch could read
  (ray_al.acquisition.policy.switch_signals: coverage of the pool at the purity radius, typicality and
  model confidence of typiclust's proposed picks, labels per class), before the round's picks.
Any rule "switch at the first round where signal <op> threshold" is then evaluated from the trace alone
(`evaluate_rule`), since a switch only changes the rounds after it. Writes the trace (JSON) to --out and
prints the switch-after tables and each signal's mean per round.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ray_al.acquisition.policy import SwitchContext, fit_probe, switch_signals
from ray_al.bench import lowbudget


def _fit(data: dict, labeled: np.ndarray, classes: int, c: float) -> tuple[np.ndarray, float]:
    """(pool probabilities, test accuracy) of one probe on the labeled rows: the next round's picks and
    this round's point on the curve come from the same fit."""
    seen = data["y"][labeled]
    model = fit_probe(data["x"][labeled], seen, c)
    test_probs = lowbudget.probabilities(model, data["tx"], seen, classes)
    return lowbudget.probabilities(model, data["x"], seen, classes), float((test_probs.argmax(axis=1) == data["ty"]).mean())


def _first_labels(data: dict, seed: int, start: str, args) -> np.ndarray:
    """The labeled mask at the first budget, exactly as lowbudget.curve draws it for typiclust."""
    x, y, classes = data["x"], data["y"], data["classes"]
    labeled = np.zeros(len(x), bool)
    if start == "cold":
        uniform = np.full((len(x), classes), 1.0 / classes, np.float32)
        labeled[lowbudget.pick("typiclust", x, data["ids"], labeled, uniform, args.budgets[0], seed, 3.0,
                               y)] = True
    else:
        labeled[np.random.default_rng(seed).choice(len(x), args.initial, replace=False)] = True
    return labeled


def typiclust_trace(data: dict, ctx: SwitchContext, seed: int, start: str, args) -> dict:
    """Accuracies, labeled masks after each budget, and the signals seen before each round's picks."""
    x, y, ids, classes = data["x"], data["y"], data["ids"], data["classes"]
    labeled = _first_labels(data, seed, start, args)
    acc, masks, signals, last = [], {}, {}, None
    probs, accuracy = _fit(data, labeled, classes, args.c)
    for budget in args.budgets:
        if budget > labeled.sum():
            picks = lowbudget.pick("typiclust", x, ids, labeled, probs, budget - int(labeled.sum()),
                                   seed * 1000 + budget, 3.0, y)
            signals[budget] = switch_signals(ctx, labeled, probs, picks, int((y[labeled] >= 0).sum()))
            if last is not None:  # the model before the last round, on the batch typiclust then picked
                signals[budget]["batch_acc"] = float((last[0][last[1]].argmax(axis=1) == y[last[1]]).mean())
            last = (probs, picks)
            labeled[picks] = True
            probs, accuracy = _fit(data, labeled, classes, args.c)
        masks[budget] = labeled.copy()
        acc.append(accuracy)
    return {"acc": acc, "masks": masks, "signals": signals}


def margin_after(data: dict, mask: np.ndarray, after: int, seed: int, args) -> list[float]:
    """Accuracy at every budget > after, margin each round from the labeled mask at `after`."""
    x, y, ids, classes = data["x"], data["y"], data["ids"], data["classes"]
    labeled, acc = mask.copy(), []
    probs, _ = _fit(data, labeled, classes, args.c)
    for budget in [b for b in args.budgets if b > after]:
        labeled[lowbudget.pick("margin", x, ids, labeled, probs, budget - int(labeled.sum()),
                               seed * 1000 + budget, 3.0, y)] = True
        probs, accuracy = _fit(data, labeled, classes, args.c)
        acc.append(accuracy)
    return acc


def run_seed(data: dict, ctx: SwitchContext, seed: int, start: str, args) -> dict:
    """One seed and start: random, typiclust (+ signals) and every switch-after curve."""
    budgets = args.budgets
    trace = typiclust_trace(data, ctx, seed, start, args)
    curves = {"random": lowbudget.curve("random", data, budgets, seed, "warm", args), "never": trace["acc"]}
    for b in args.switch_after:
        if b in trace["masks"] and b < budgets[-1]:
            keep = [a for a, budget in zip(trace["acc"], budgets) if budget <= b]
            curves[f"after_{b}"] = keep + margin_after(data, trace["masks"][b], b, seed, args)
    signals = {str(b): {k: float(v) for k, v in s.items()} for b, s in trace["signals"].items()}
    return {"curves": curves, "signals": signals}


def evaluate_rule(trace: dict, start: str, signal: str, op: str, threshold: float) -> dict:
    """Per seed, the curve of "switch at the first round whose signal <op> threshold" (">=" or "<"),
    from the trace alone. A round to budget B switching means "after the previous budget" b; a switch
    point without a recorded curve (b not in --switch-after) counts as the nearest earlier one recorded."""
    budgets, out = trace["budgets"], []
    for run in trace["runs"][start]:
        chosen = "never"
        for prev, budget in zip([None] + budgets[:-1], budgets):
            value = run["signals"].get(str(budget), {}).get(signal)
            if value is None or prev is None:
                continue
            if (value >= threshold) if op == ">=" else (value < threshold):
                chosen = _nearest_after(run["curves"], prev)
                break
        out.append({"switch": chosen, "acc": run["curves"][chosen]})
    return {"switches": [r["switch"] for r in out], "acc": [r["acc"] for r in out]}


def _nearest_after(curves: dict, prev: int) -> str:
    recorded = sorted(int(k.split("_")[1]) for k in curves if k.startswith("after_"))
    earlier = [b for b in recorded if b <= prev]
    return f"after_{earlier[-1]}" if earlier else "never"


SIGNAL_GRIDS = {  # (signal, op): thresholds tried by `rank`
    ("per_class", ">="): [2, 3, 5, 7, 10, 15, 20],
    ("coverage", ">="): [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    ("coverage_after", ">="): [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    ("typ_pct", "<"): [0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8],
    ("typ_ratio", "<"): [0.9, 1.0, 1.05, 1.1, 1.2, 1.3],
    ("conf_ratio", ">="): [0.9, 0.95, 1.0, 1.05, 1.1, 1.2],
    ("unc_pct", "<"): [0.3, 0.4, 0.45, 0.5, 0.55, 0.6],
    ("margin_typ_pct", ">="): [0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6],
    ("batch_acc", ">="): [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    ("pool_conf", ">="): [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
}


def rule_figures(trace: dict, start: str, signal: str, op: str, threshold: float) -> dict:
    """The rule's mean curve, its worst shortfall under the best single method (typiclust, random and, warm,
    margin) per budget, its worst margin over random, and its AUC gain on random (points)."""
    rule = np.asarray(evaluate_rule(trace, start, signal, op, threshold)["acc"]) * 100
    runs = trace["runs"][start]
    random = np.asarray([r["curves"]["random"] for r in runs]) * 100
    singles = [np.asarray([r["curves"]["never"] for r in runs]) * 100, random]
    first = f"after_{trace['budgets'][0]}"
    if start == "warm" and first in runs[0]["curves"]:
        singles.append(np.asarray([r["curves"][first] for r in runs]) * 100)
    best = np.max([s.mean(axis=0) for s in singles], axis=0)
    mean = rule.mean(axis=0)
    return {"mean": mean.round(2).tolist(), "short": round(float((best - mean).max()), 2),
            "over_random": round(float((mean - random.mean(axis=0)).min()), 2),
            "auc_gain": round(float((rule - random).mean()), 2)}


def rank(traces: dict[str, dict]) -> list[dict]:
    """Every (signal, op, threshold) of SIGNAL_GRIDS on every trace and start, worst case first sorted."""
    rows = []
    for (signal, op), grid in SIGNAL_GRIDS.items():
        for threshold in grid:
            cases = {f"{name}/{start}": rule_figures(t, start, signal, op, threshold)
                     for name, t in traces.items() for start in t["runs"]}
            rows.append({"rule": f"{signal} {op} {threshold:g}", "cases": cases,
                         "worst_short": max(c["short"] for c in cases.values()),
                         "worst_over_random": min(c["over_random"] for c in cases.values())})
    return sorted(rows, key=lambda r: (r["worst_short"], -r["worst_over_random"]))


def print_report(trace: dict) -> None:
    budgets = trace["budgets"]
    for start, runs in trace["runs"].items():
        results = {name: [r["curves"][name] for r in runs] for name in runs[0]["curves"]}
        summary = lowbudget.summarise(results, budgets)
        lowbudget.print_table(summary, budgets, f"{start} start, {trace['rows']} rows: switch after b")
        names = sorted({k for r in runs for s in r["signals"].values() for k in s})
        print(f"signals before the round to each budget ({start}, mean over seeds)")
        print(f"{'signal':<18}" + "".join(f"{b:>9}" for b in budgets))
        for name in names:
            cells = [np.mean([r["signals"][str(b)][name] for r in runs if name in r["signals"].get(str(b), {})]
                             or [np.nan]) for b in budgets]
            print(f"{name:<18}" + "".join(f"{v:>9.3f}" for v in cells))


def markdown(trace: dict, start: str, rules: list[str]) -> str:
    """A markdown table of one trace and start: random, typiclust, every switch-after curve and each rule
    ("signal op threshold"), mean +- SE per budget, AUC, paired AUC gain on random +- SE, points."""
    budgets, runs = trace["budgets"], trace["runs"][start]
    rows = {name: [r["curves"][name] for r in runs] for name in runs[0]["curves"]}
    for rule in rules:
        signal, op, threshold = rule.split()
        rows[f"rule: {rule}"] = evaluate_rule(trace, start, signal, op, float(threshold))["acc"]
    summary = lowbudget.summarise(rows, budgets)
    out = ["| curve | " + " | ".join(map(str, budgets)) + " | AUC | gain on random |",
           "| --- |" + " --- |" * (len(budgets) + 2)]
    for name, row in summary.items():
        label = {"never": "typiclust (never switch)", "random": "random"}.get(name, name.replace("after_", "switch after "))
        cells = " | ".join(f"{m:.1f}+-{e:.1f}" for m, e in zip(row["mean"], row["se"]))
        gain = f"{row['auc_gain']:+.1f}+-{row['auc_gain_se']:.1f}" if "auc_gain" in row else "-"
        out.append(f"| {label} | {cells} | {row['auc']:.1f} | {gain} |")
    return "\n".join(out)


def main_rank(paths: list[str], top: int) -> list[dict]:
    """Rank the rules on saved traces: per rule the worst shortfall under the best single method (points)
    and the worst margin over random, over every trace and start, then each case's figures."""
    traces = {}
    for path in paths:
        with open(path) as f:
            traces[path.rsplit("/", 1)[-1].removesuffix(".json")] = json.load(f)
    rows = rank(traces)
    for row in rows[:top]:
        cases = "  ".join(f"{k}: -{c['short']:.1f}/{c['over_random']:+.1f}/{c['auc_gain']:+.1f}"
                          for k, c in row["cases"].items())
        print(f"{row['rule']:<24} worst short {row['worst_short']:5.2f}  worst vs random "
              f"{row['worst_over_random']:+6.2f}  | {cases}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", nargs="+", default=None, help="rank the rules on saved traces (no run)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--markdown", nargs="*", default=None, metavar="RULE",
                   help="with --rank: print each trace's tables in markdown, with these rules ('coverage >= 0.5')")
    p.add_argument("--features")
    p.add_argument("--test")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 30, 50, 100, 200])
    p.add_argument("--switch-after", type=int, nargs="+", default=[10, 20, 30, 50, 100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--start", nargs="+", default=["warm", "cold"], choices=["warm", "cold"])
    p.add_argument("--initial", type=int, default=10)
    p.add_argument("--c", type=float, default=1.0)
    p.add_argument("--out", default=None, help="write the trace JSON here")
    args = p.parse_args(argv)
    if args.rank and args.markdown is not None:
        for path in args.rank:
            with open(path) as f:
                trace = json.load(f)
            for start in trace["runs"]:
                print(f"\n{path} {start} start, seeds {trace['seeds']}\n\n" + markdown(trace, start, args.markdown))
        return {}
    if args.rank:
        return {"rules": main_rank(args.rank, args.top)}
    if not (args.features and args.test):
        p.error("--features and --test are required (or --rank TRACE.json ...)")
    args.switch = 3.0
    ids, x, y = lowbudget.load(args.features)
    _, tx, ty = lowbudget.load(args.test)
    x, tx = lowbudget.standardise(x, tx)
    data = {"x": x, "y": y, "ids": ids, "tx": tx, "ty": ty, "classes": int(max(y.max(), ty.max())) + 1}
    started = time.perf_counter()
    ctx = SwitchContext.build(x, data["classes"], seed=0)
    trace = {"features": args.features, "rows": len(x), "budgets": args.budgets, "seeds": args.seeds,
             "context_seconds": round(time.perf_counter() - started, 1), "runs": {}}
    for start in args.start:
        trace["runs"][start] = [run_seed(data, ctx, s, start, args) for s in args.seeds]
    trace["seconds"] = round(time.perf_counter() - started, 1)
    print_report(trace)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(trace, f)
    print(json.dumps({"seconds": trace["seconds"], "context_seconds": trace["context_seconds"]}))
    return trace


if __name__ == "__main__":
    main()
