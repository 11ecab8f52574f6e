"""Self-supervised objectives trained jointly with (or before) the classifier. Pure torch, no ray.

``build(name, encoder, feature_dim, image_size, channels, **options) -> SSLMethod``; ``METHODS`` (a
``ray_al.core.registry.Registry``) maps names to classes. Each method's paper defaults are in its module
docstring and keyword defaults.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ray_al.core.registry import Registry
from ray_al.ssl.barlow_twins import BarlowTwins, barlow_twins_loss
from ray_al.ssl.base import (
    KeyQueue,
    SSLMethod,
    concat_all_gather,
    cosine_momentum,
    exact_global_loss,
    gather_with_local_grad,
    info_nce,
)
from ray_al.ssl.mocov2 import MoCoV2
from ray_al.ssl.moby import MoBY
from ray_al.ssl.rotnet import RotNet, rotation_loss
from ray_al.ssl.simclr import SimCLR, nt_xent
from ray_al.ssl.simsiam import SimSiam, simsiam_loss

# "none" (supervised only) is a valid train.method but not a method
METHODS: Registry[type[SSLMethod]] = Registry("SSL method", "train.method", extra=("none",))
METHODS.add(MoBY.name, MoBY)
METHODS.add(BarlowTwins.name, BarlowTwins)
METHODS.add(SimSiam.name, SimSiam)
METHODS.add(MoCoV2.name, MoCoV2)
METHODS.add(SimCLR.name, SimCLR)
METHODS.add(RotNet.name, RotNet)

__all__ = [
    "METHODS",
    "build",
    "SSLMethod",
    "MoBY",
    "BarlowTwins",
    "SimSiam",
    "MoCoV2",
    "SimCLR",
    "RotNet",
    "KeyQueue",
    "info_nce",
    "barlow_twins_loss",
    "simsiam_loss",
    "nt_xent",
    "rotation_loss",
    "cosine_momentum",
    "concat_all_gather",
    "gather_with_local_grad",
    "exact_global_loss",
]


def build(name: str, encoder: nn.Module, feature_dim: int, image_size: int, channels: int, **options: Any) -> SSLMethod:
    """SSL method ``name`` on ``encoder`` (input (B, channels, image_size, image_size) in [0, 1] ->
    (B, feature_dim)). Unknown names or options raise ValueError listing the valid ones."""
    cls = METHODS.get(name)
    valid = cls.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for SSL method {name!r}; valid options: {valid}")
    return cls(encoder, feature_dim, image_size, channels, **options)
