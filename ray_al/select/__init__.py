"""Selection at pool scale: exact k-center greedy (CoreSet), single-process and over Ray shard actors.

`kcenter_greedy` / `zero_shot_order` are pure (numpy + faiss). `kcenter_select_distributed` lives in
`ray_al.select.distributed` and is imported lazily, so `import ray_al.select` never imports ray.
"""

from __future__ import annotations

from typing import Any

from ray_al.select.kcenter import kcenter_greedy, zero_shot_order

__all__ = ["kcenter_greedy", "kcenter_select_distributed", "zero_shot_order"]


def __getattr__(name: str) -> Any:
    if name == "kcenter_select_distributed":
        from ray_al.select.distributed import kcenter_select_distributed

        return kcenter_select_distributed
    raise AttributeError(f"module 'ray_al.select' has no attribute {name!r}")
