"""Building a learner from a config and moving its weights as bytes (pure torch: no Ray).

The one home for this: training workers, embedding actors, the cycle and the benchmarks all build the
learner from `learner_kwargs(cfg, spec)` and ship weights with `state_to_bytes` / `state_from_bytes`.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # types only: the model layer does not depend on the data or config layers
    from ray_al.config import Config
    from ray_al.data.pool import PoolSpec


def ssl_defaults(method: str, spec: PoolSpec) -> dict:
    """Options we set on top of the papers' defaults; explicit train.ssl_options win.

    * single-channel pools (the built-in digits, handwriting, scans): no horizontal flips in the views,
      since a mirrored glyph is another glyph or none (colour pools keep the papers' flips);
    * barlow_twins: the loss starts near proj_dim (512), far above the CE it is added to, so it is scaled
      by 1/32 as in the first Barlow Twins reference code (`scale-loss`); without it SGD at lr 0.05
      diverges in the first steps of the joint objective.
    """
    if method == "none":
        return {}
    out: dict = {}
    if spec.channels == 1:
        out["flip"] = False
    if method == "barlow_twins":
        out["scale"] = 1.0 / 32.0
    return out


def learner_kwargs(cfg: Config, spec: PoolSpec, method: str | None = None) -> dict:
    method = cfg.train.method if method is None else method
    return {
        "backbone": cfg.model.backbone, "num_classes": spec.num_classes, "in_channels": spec.channels,
        "image_size": spec.image_size, "mean": tuple(spec.mean), "std": tuple(spec.std),
        "ssl": method, "ssl_options": {**ssl_defaults(method, spec), **dict(cfg.train.ssl_options)},
        "dropout": cfg.model.dropout,
    }


def build_learner(kwargs: dict) -> torch.nn.Module:
    from ray_al.models.learner import JointLearner

    return JointLearner(**kwargs)


def state_to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
