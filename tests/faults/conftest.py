"""The uninterrupted reference run every fault drill is compared with."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.drill import ARGS, launch


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with ARGS (resident worker group): what every killed run must end equal to."""
    tmp = tmp_path_factory.mktemp("faults-reference")
    run_dir = tmp / "run"
    run = launch("ray_al.cycle", *ARGS, f"run.dir={run_dir}", tmp=tmp)
    assert run.returncode == 0, run.tail()
    return run_dir
