"""Results as people read them: the per-round table, learning curves, area under the curve, and a
sweep's tables (per trial, per setting averaged over seeds, accuracy per labelled-set size).

Pure functions of the result rows (dicts as in results.jsonl; a sweep's rows add the trial name and its
grid values under their dotted keys); plots are a pure function of the table.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from typing import IO, Any, Iterable

import numpy as np

STAGES = ("train", "embed", "select", "label")
SEED_KEYS = ("al.seed", "train.seed_offset")  # grid keys a sweep's tables average over


def area_under_curve(labels: Iterable[float], accuracy: Iterable[float]) -> float:
    """Trapezoid area under accuracy vs labels, normalised by the label range (so it is a mean accuracy)."""
    x, y = np.asarray(list(labels), float), np.asarray(list(accuracy), float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean()) if len(y) else float("nan")
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / (x[-1] - x[0]))


def format_table(rows: list[dict]) -> str:
    """round | labels | accuracy | seconds per stage | the method that selected the round's queries,
    one line per round (the last round selects nothing)."""
    head = (f"{'round':>5}  {'labels':>7}  {'accuracy':>8}  " + "  ".join(f"{s + ' s':>8}" for s in STAGES)
            + "  selected by")
    lines = [head, "-" * len(head)]
    for r in rows:
        secs = r.get("seconds", {})
        cells = "  ".join(f"{secs[s]:8.1f}" if s in secs else f"{'-':>8}" for s in STAGES)
        accuracy = f"{r['accuracy']:8.4f}" if r.get("accuracy") is not None else f"{'-':>8}"  # no test split
        lines.append(f"{r['round']:>5}  {r['labels']:>7}  {accuracy}  {cells}  {r.get('selected_by', '-')}")
    return "\n".join(lines)


def curves(rows: list[dict], group_by: tuple[str, ...] = ("method",)) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Group rows into curves: name -> (labels, mean accuracy, std over seeds)."""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        name = " / ".join(str(r.get(k, "?")) for k in group_by)
        grouped[name][int(r["labels"])].append(float(r["accuracy"]))
    out = {}
    for name, by_labels in grouped.items():
        xs = np.asarray(sorted(by_labels))
        accs = [by_labels[x] for x in xs]
        out[name] = (xs, np.asarray([np.mean(a) for a in accs]), np.asarray([np.std(a) for a in accs]))
    return out


def learning_curve_png(rows: list[dict], title: str, group_by: tuple[str, ...] = ("method",)) -> bytes:
    """The learning-curve PNG as bytes, drawn in memory: runs that upload it (s3://) share no local file."""
    buf = io.BytesIO()
    plot_learning_curves(rows, buf, title=title, group_by=group_by)
    return buf.getvalue()


def plot_learning_curves(rows: list[dict], path: str | IO[bytes], title: str = "Learning curve",
                         group_by: tuple[str, ...] = ("method",)) -> str | IO[bytes]:
    """Accuracy vs number of labels (mean +- std over seeds) to a PNG at a local path or a binary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, (xs, mean, std) in sorted(curves(rows, group_by).items()):
        ax.plot(xs, mean, marker="o", label=name)
        if np.any(std > 0):
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("number of labels")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- a sweep's tables
def setting_keys(grid: dict) -> list[str]:
    """The grid keys that make a setting (the seed keys are averaged over)."""
    return [k for k in grid if k not in SEED_KEYS]


def _seed_of(row: dict, grid: dict) -> str:
    return ",".join(str(row.get(k)) for k in grid if k in SEED_KEYS) or "-"


def _per_trial(rows: list[dict], grid: dict) -> list[dict]:
    """Per trial: its setting, seed, rounds, final labels and accuracy, area under its curve."""
    by_trial: dict[str, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial"], []).append(r)
    keys = setting_keys(grid)
    out = []
    for trial, trows in by_trial.items():
        trows = sorted(trows, key=lambda r: r["round"])
        out.append({
            **{k: trows[0].get(k) for k in keys}, "seed": _seed_of(trows[0], grid), "trial": trial,
            "rounds": len(trows), "final_labels": trows[-1]["labels"], "final_accuracy": trows[-1]["accuracy"],
            "auc": area_under_curve([r["labels"] for r in trows], [r["accuracy"] for r in trows]),
        })
    return out


def summarize(rows: list[dict], grid: dict) -> tuple[list[dict], list[dict]]:
    """(per trial: final accuracy and AUC; per setting: their mean and std over seeds)."""
    per_trial = _per_trial(rows, grid)
    keys = setting_keys(grid)
    groups: dict[tuple, list[dict]] = {}
    for t in per_trial:
        groups.setdefault(tuple(json.dumps(t[k]) for k in keys), []).append(t)
    per_setting = []
    for members in groups.values():
        acc = [m["final_accuracy"] for m in members]
        auc = [m["auc"] for m in members]
        per_setting.append({
            **{k: members[0][k] for k in keys}, "seeds": len(members),
            "final_labels": max(m["final_labels"] for m in members),
            "final_accuracy_mean": _mean(acc), "final_accuracy_std": _std(acc),
            "auc_mean": _mean(auc), "auc_std": _std(auc), "auc_se": _se(auc),
        })
    return per_trial, per_setting


def per_budget(rows: list[dict], grid: dict) -> list[dict]:
    """Accuracy at each labelled-set size per setting: mean and standard error over seeds (the
    comparison users read: is a method above random at the budgets they have?)."""
    keys = setting_keys(grid)
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((tuple(json.dumps(r.get(k)) for k in keys), int(r["labels"])), []).append(
            float(r["accuracy"]))
    out = []
    for (setting, labels), acc in sorted(groups.items()):
        out.append({**{k: json.loads(v) for k, v in zip(keys, setting)}, "labels": labels, "seeds": len(acc),
                    "accuracy_mean": _mean(acc), "accuracy_se": _se(acc)})
    return out


def format_per_budget(table: list[dict], grid: dict) -> str:
    """Settings as rows, labelled-set sizes as columns: mean +- standard error of the accuracy."""
    keys = setting_keys(grid)
    sizes = sorted({t["labels"] for t in table})
    cells: dict[tuple, dict[int, str]] = {}
    for t in table:
        cells.setdefault(tuple(str(t.get(k)) for k in keys), {})[t["labels"]] = (
            f"{t['accuracy_mean']:.3f}+-{t['accuracy_se']:.3f}")
    width = max([len(" / ".join(s)) for s in cells] + [len(" / ".join(keys))])
    lines = ["accuracy by labels, mean +- standard error over seeds:",
             f"{' / '.join(keys):<{width}}  " + "  ".join(f"{n:>13}" for n in sizes)]
    lines.append("-" * len(lines[-1]))
    for setting in sorted(cells):
        lines.append(f"{' / '.join(setting):<{width}}  " + "  ".join(f"{cells[setting].get(n, '-'):>13}"
                                                                     for n in sizes))
    return "\n".join(lines)


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return float(math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)))  # population std, as `curves`


def _se(xs: list[float]) -> float:
    """Standard error of the mean (sample std / sqrt(n)); 0 for a single seed."""
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return float(math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)))


def format_summary(per_trial: list[dict], per_setting: list[dict], grid: dict) -> str:
    """The per-trial table, then the per-setting table (mean +- std over seeds)."""
    keys = setting_keys(grid)
    widths = {k: max([len(k)] + [len(str(t.get(k))) for t in per_trial]) for k in keys}
    head = "  ".join(f"{k:>{widths[k]}}" for k in keys)
    lines = ["per trial (final = last committed round):",
             f"{head}  {'seed':>6}  {'rounds':>6}  {'labels':>6}  {'final acc':>9}  {'AUC':>6}"]
    lines.append("-" * len(lines[-1]))
    for t in sorted(per_trial, key=lambda t: [str(t.get(k)) for k in keys] + [t["seed"]]):
        cells = "  ".join(f"{t.get(k)!s:>{widths[k]}}" for k in keys)
        lines.append(f"{cells}  {t['seed']:>6}  {t['rounds']:>6}  {t['final_labels']:>6}  "
                     f"{t['final_accuracy']:9.4f}  {t['auc']:6.4f}")
    lines += ["", "mean +- std over seeds:",
              f"{head}  {'seeds':>5}  {'labels':>6}  {'final accuracy':>16}  {'AUC':>16}"]
    lines.append("-" * len(lines[-1]))
    for s in sorted(per_setting, key=lambda s: [str(s.get(k)) for k in keys]):
        cells = "  ".join(f"{s.get(k)!s:>{widths[k]}}" for k in keys)
        lines.append(f"{cells}  {s['seeds']:>5}  {s['final_labels']:>6}  "
                     f"{s['final_accuracy_mean']:7.4f} +- {s['final_accuracy_std']:6.4f}  "
                     f"{s['auc_mean']:7.4f} +- {s['auc_std']:6.4f}")
    return "\n".join(lines)


def flat_row(row: dict) -> dict:
    """A result row with its per-stage seconds as columns seconds_<stage>."""
    out = {k: v for k, v in row.items() if k != "seconds"}
    out.update({f"seconds_{stage}": float(v) for stage, v in (row.get("seconds") or {}).items()})
    return out


def results_table(rows: list[dict]) -> Any:
    """pyarrow table of the flat rows; a column with mixed value types (grid of 0.1 and 1) becomes text."""
    import pyarrow as pa

    flat = [flat_row(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    arrays = {}
    for c in columns:
        values = [r.get(c) for r in flat]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else str(v) for v in values]
        arrays[c] = pa.array(values)
    return pa.table(arrays)


def parquet_bytes(rows: list[dict]) -> bytes:
    """`results_table(rows)` as Parquet file bytes."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(results_table(rows), sink)
    return sink.getvalue()


def csv_text(rows: list[dict]) -> str:
    """CSV with a column for every key any row has (in first-seen order)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for s in rows for k in s)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def paired_gains(rows: list[dict], grid: dict, key: str = "select.method", reference: str = "random") -> list[dict]:
    """Per setting other than the reference's: its accuracy minus the reference's at the same seed and the same
    other grid values, in points, mean and standard error over the seeds both have, at each labelled-set
    size and as the mean over the sizes (the AUC of ray_al.bench.lowbudget). [] when the grid has no reference."""
    if reference not in grid.get(key, []):
        return []
    keys = setting_keys(grid)
    acc: dict[tuple, dict[int, float]] = defaultdict(dict)  # (setting, seed) -> labels -> accuracy
    for r in rows:
        if r.get("accuracy") is not None:
            acc[(tuple(json.dumps(r.get(k)) for k in keys), _seed_of(r, grid))][int(r["labels"])] = float(r["accuracy"])
    at = keys.index(key)
    diffs: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))  # setting -> size | "mean" -> gains
    for (setting, seed), curve in acc.items():
        base = acc.get((setting[:at] + (json.dumps(reference),) + setting[at + 1:], seed))
        if json.loads(setting[at]) == reference or not base:
            continue
        sizes = sorted(set(curve) & set(base))
        for n in sizes:
            diffs[setting][n].append(100.0 * (curve[n] - base[n]))
        diffs[setting]["mean"].append(100.0 * float(np.mean([curve[n] - base[n] for n in sizes])))
    return [{**{k: json.loads(v) for k, v in zip(keys, setting)}, "reference": reference,
             "gains": {n: (_mean(g), _se(g), len(g)) for n, g in by_size.items()}}
            for setting, by_size in sorted(diffs.items())]


def format_paired_gains(gains: list[dict], grid: dict) -> str:
    """Settings as rows, sizes then their mean as columns: gain on the reference, mean +- SE in points."""
    keys = setting_keys(grid)
    columns = sorted({n for g in gains for n in g["gains"] if n != "mean"}) + ["mean"]
    names = [" / ".join(str(g.get(k)) for k in keys) for g in gains]
    width = max([len(n) for n in names] + [len(" / ".join(keys))])
    lines = [f"gain on {gains[0]['reference']} in points of accuracy, paired by seed (mean +- SE); mean = over the sizes:",
             f"{' / '.join(keys):<{width}}  " + "  ".join(f"{c!s:>11}" for c in columns)]
    lines.append("-" * len(lines[-1]))
    for name, g in zip(names, gains):
        cells = [f"{g['gains'][c][0]:+.1f}+-{g['gains'][c][1]:.1f}" if c in g["gains"] else "-" for c in columns]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def sweep_summary(rows: list[dict], grid: dict) -> tuple[str, str]:
    """(summary.txt: the per-trial, per-setting and per-budget tables, and the paired gains on random when
    the grid runs it; summary.csv: the per-setting rows)."""
    per_trial, per_setting = summarize(rows, grid)
    text = format_summary(per_trial, per_setting, grid) + "\n\n" + format_per_budget(per_budget(rows, grid), grid)
    gains = paired_gains(rows, grid)
    if gains:
        text += "\n\n" + format_paired_gains(gains, grid)
    return text, csv_text(per_setting)
