"""RotNet (Gidaris et al., 2018): predict which of 0/90/180/270 degrees an image was rotated by.

Used as pre-training before AL with entropy acquisition (Barda et al., 2023: ResNet-18, 100 epochs,
batch 512, Adam + cosine annealing; then the 4-way head is dropped and a linear classifier added).
Defaults: every image in all four rotations (4B inputs, as the RotNet paper), head = Linear(d, 4)
on the encoder features (``hidden_dim`` > 0 adds a hidden Linear-BN-ReLU layer); loss = mean CE over
the 4B rotated images. ``weak_first=True`` applies the weak crop/flip before rotating.
Per-sample loss: under DDP only global BN statistics are needed for equivalence.

``views`` for this method are (rotated batch (4B, C, H, W), rotation labels (4B,)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ray_al.core import augment
from ray_al.ssl.base import SSLMethod, Views, mlp


def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of (4B, 4) rotation logits against labels (4B,) in {0, 1, 2, 3}."""
    return F.cross_entropy(logits, labels)


class RotNet(SSLMethod):
    """4-way rotation prediction head. See the module docstring for the defaults."""

    name = "rotnet"
    view_kind = "rotations"

    def setup(self, hidden_dim: int = 0, weak_first: bool = False) -> None:
        self.weak_first = bool(weak_first)
        dims = [self.feature_dim, hidden_dim, 4] if hidden_dim > 0 else [self.feature_dim, 4]
        self.head = mlp(dims)

    def make_views(self, x: Tensor, generator: torch.Generator | None = None, seeds: Tensor | None = None) -> Views:
        if self.weak_first:
            x = augment.weak(x, generator, self.aug, seeds=seeds)
        return augment.rotations(x)

    def _loss(self, views: Views) -> Tensor:
        xr, labels = views  # (4B, C, H, W), (4B,)
        return rotation_loss(self.head(self.encoder(xr)), labels)
