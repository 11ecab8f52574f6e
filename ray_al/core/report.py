"""Results as people read them: the per-round table, learning curves, area under the curve.

Pure functions of the result rows (dicts as in results.jsonl); plots are a pure function of the table.
"""
from __future__ import annotations

import io
from collections import defaultdict
from typing import IO, Iterable

import numpy as np

STAGES = ("train", "embed", "select", "label")


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
