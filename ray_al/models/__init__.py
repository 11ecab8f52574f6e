"""Backbones and the joint learner (pure torch; never imports ray)."""

from ray_al.models.backbones import BACKBONES, build_backbone
from ray_al.models.learner import (
    Encoder,
    GlobalBatchNorm,
    JointLearner,
    LearnerSpec,
    Normalize,
    convert_sync_batchnorm,
)

__all__ = [
    "BACKBONES",
    "build_backbone",
    "Encoder",
    "GlobalBatchNorm",
    "JointLearner",
    "LearnerSpec",
    "Normalize",
    "convert_sync_batchnorm",
]
