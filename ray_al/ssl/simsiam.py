"""SimSiam (Chen & He, 2021), as pre-training for AL (Bengar et al., 2021, "Reducing label effort").

Defaults: projector = Linear-BN-ReLU, Linear-BN (``proj_layers=2``, the paper's CIFAR variant;
3 on ImageNet), output BN without affine; predictor = bottleneck Linear(d, d/4)-BN-ReLU-Linear(d/4, d).
The paper uses d = 2048 and a 512-unit bottleneck; ``proj_dim=512`` / ``pred_dim=128`` here for CPU.
Views from the MoCo-v2 set (``augment.strong``). Loss, symmetric with stop-gradient:

    L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2,   D(p, z) = -mean_i cos(p_i, z_i)

Per-sample loss: under DDP only global BN statistics are needed for equivalence.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ray_al.ssl.base import SSLMethod, Views, mlp, projector_stack


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """-mean_i cos(p_i, z_i) with stop-gradient on z; p, z (B, D)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetric SimSiam loss, in [-1, 1]."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


class SimSiam(SSLMethod):
    """SimSiam projector + predictor. See the module docstring for the defaults."""

    name = "simsiam"
    view_kind = "strong"

    def setup(self, proj_dim: int = 512, pred_dim: int = 128, proj_layers: int = 2) -> None:
        self.projector = projector_stack(self.feature_dim, proj_dim, proj_layers, last_bn=True, last_affine=False)
        self.predictor = mlp([proj_dim, pred_dim, proj_dim])  # Linear-BN-ReLU-Linear bottleneck

    def _loss(self, views: Views) -> Tensor:
        z1 = self.projector(self.encoder(views[0]))  # (B, proj_dim)
        z2 = self.projector(self.encoder(views[1]))
        return simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2)
