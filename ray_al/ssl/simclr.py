"""SimCLR (Chen et al., 2020): NT-Xent over two views, used by the zero-shot AL paper as pre-training.

Defaults: projection MLP Linear(d, d)-ReLU-Linear(d, 128) (``hidden_dim`` = feature_dim,
``proj_dim=128``); temperature 0.5 (the paper's CIFAR-10 setting; 0.1 at large batch on ImageNet);
views from the MoCo-v2 set (``augment.strong``, the SimCLR set plus blur). NT-Xent over the 2N
embeddings: for each, the positive is its other view and the negatives are the other 2N - 2.

DDP: embeddings of all ranks are gathered (local slice keeps its gradient) so the negatives are the
global batch, and the gradient is scaled so that DDP's average equals the one-worker gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ray_al.ssl.base import SSLMethod, Views, exact_global_loss, gather_with_local_grad, projection_head


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of projector outputs z1, z2 (N, D): mean over the 2N anchors."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], 0), dim=1)  # (2N, D)
    sim = z @ z.t() / temperature  # (2N, 2N)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # no self-pairs
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # index of the other view
    return F.cross_entropy(sim, target)


class SimCLR(SSLMethod):
    """SimCLR projection head + NT-Xent. See the module docstring for the defaults."""

    name = "simclr"
    view_kind = "strong"

    def setup(self, proj_dim: int = 128, hidden_dim: int | None = None, temperature: float = 0.5) -> None:
        self.temperature = float(temperature)
        self.head = projection_head(self.feature_dim, hidden_dim, proj_dim)

    def _loss(self, views: Views) -> Tensor:
        z1 = gather_with_local_grad(self.head(self.encoder(views[0])))  # (N_global, proj_dim)
        z2 = gather_with_local_grad(self.head(self.encoder(views[1])))
        return exact_global_loss(nt_xent(z1, z2, self.temperature))
