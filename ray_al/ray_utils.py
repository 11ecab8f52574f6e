"""Ray start-up in one place: `ray.init()` with no address joins the cluster under `ray job submit` and
starts a local one otherwise (DESIGN.md)."""
from __future__ import annotations

import logging
import os

# Variables Ray workers must see too (S3 endpoint for tests/MinIO, auth mode, thread caps).
_FORWARDED_ENV = ("RAY_AL_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AL_SHARED")


def init_ray(num_cpus: int = 0, quiet: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    # Local clusters use token auth by default since Ray 2.59; a laptop run has nobody to authenticate.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    kwargs: dict = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    if quiet:
        kwargs["logging_level"] = logging.WARNING
    joining = bool(os.environ.get("RAY_ADDRESS"))
    if num_cpus and not joining:
        kwargs["num_cpus"] = num_cpus
    if not joining:
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


def data_context_quiet() -> None:
    """Ray Data progress bars: one line per operator is plenty in a terminal."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.enable_operator_progress_bars = False
