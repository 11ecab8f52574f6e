"""ray_al: active learning on Ray. The Python API (ray_al.api):

    ray_al.select(embeddings, labeled, budget, method="auto", probs=None, seed=0)  # pure numpy, no Ray
    ray_al.run(config_or_path, **overrides)                                        # a cycle, as `python -m ray_al.cycle`
    ray_al.__version__

`import ray_al` imports neither Ray nor torch (tests/test_api.py checks it).
"""
from __future__ import annotations

import types as _types

# The one version: pyproject.toml reads it from here ([tool.setuptools.dynamic] version = attr).
__version__ = "0.1.0"

from ray_al.api import select  # noqa: E402
import ray_al.run as _run_package  # noqa: E402  light: its __init__ imports nothing


class _CallableRunPackage(_types.ModuleType):
    """`ray_al.run` is the run-state subpackage (ray_al/run/) and, called, the cycle API: a plain function
    named run would be replaced by the subpackage the first time any `ray_al.run.*` module is imported."""

    def __call__(self, *args, **kwargs):
        from ray_al.api import run as _run_cycle

        return _run_cycle(*args, **kwargs)


_run_package.__class__ = _CallableRunPackage
run = _run_package

__all__ = ["__version__", "run", "select"]
