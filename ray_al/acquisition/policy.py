"""Which strategy a round runs: the budget-aware `auto` policy. Pure, no Ray.

`auto` follows the low-budget literature: typicality first (TypiClust, Hacohen et al. 2022), because
at a few labels per class uncertainty and k-center spend the budget on outliers; then margin (TCM,
Doucet et al. 2023: TypiClust, then margin) once the labeled set has `switch_per_class` labels per class,
where uncertainty overtakes typicality. The switch point is a config key (select.auto_switch_per_class),
3 by default: of the switches measured (3, 5, 10 labels per class, frozen SimCLR features, 5 seeds), 3 is
the one at or above random at every budget from 10 to 200 labels on both digits and CIFAR-10
(docs/RESULTS.md, commit 059c831).
"""
from __future__ import annotations

from dataclasses import dataclass

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
