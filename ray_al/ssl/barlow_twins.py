"""Barlow Twins (Zbontar et al., 2021) as used by DALBT (Mandivarapu et al., deep AL with Barlow Twins).

Loss on two BYOL-style views (``augment.byol``): with z1, z2 the projector outputs batch-normalised
over the batch (mean 0, std 1 per dimension), C = z1^T z2 / N (D x D cross-correlation) and

    L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2        (lambda = 5e-3 default)

Defaults: projector = 3-layer MLP (Linear-BN-ReLU, Linear-BN-ReLU, Linear); the paper uses 8192
units per layer, here ``proj_dim=512`` so it runs on a CPU (configurable). DALBT trains
CE(clean labeled image) + gamma * L (gamma is the trainer's SSL weight), batch 64, lr 1e-3,
weight decay 1e-5, and reports a "Barlow Twins constant" of 1e-3 (set ``lambd`` to reproduce).
The loss grows with proj_dim (about proj_dim at initialisation); ``scale`` multiplies it (the
reference implementation once used 1/32) so a joint CE + gamma * L stays balanced.

DDP: the embeddings of all ranks are gathered (local slice keeps its gradient), the batch
normalisation and C use the global batch, and the gradient is scaled so that DDP's average equals
the one-worker gradient (``base.exact_global_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ray_al.ssl.base import SSLMethod, Views, exact_global_loss, gather_with_local_grad, projector_stack


def batch_standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """(N, D) -> (N, D): per-dimension (z - mean) / sqrt(biased var + eps), as BatchNorm1d(affine=False)."""
    mean = z.mean(0, keepdim=True)
    var = z.var(0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins loss of projector outputs z1, z2 (N, D); N >= 2."""
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"Barlow Twins needs a batch of at least 2 samples to standardise, got {n}")
    c = batch_standardize(z1, eps).t() @ batch_standardize(z2, eps) / n  # (D, D)
    on_diag = (torch.diagonal(c) - 1.0).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwins(SSLMethod):
    """Barlow Twins head (DALBT). See the module docstring for the defaults."""

    name = "barlow_twins"
    view_kind = "byol"

    def setup(self, proj_dim: int = 512, proj_layers: int = 3, lambd: float = 5e-3, scale: float = 1.0) -> None:
        self.lambd = float(lambd)
        self.scale = float(scale)
        self.projector = projector_stack(self.feature_dim, proj_dim, proj_layers)  # Linear-BN-ReLU x (L-1), Linear

    def embed(self, v: Tensor) -> Tensor:  # (B, C, H, W) -> (B, proj_dim)
        return self.projector(self.encoder(v))

    def _loss(self, views: Views) -> Tensor:
        z1 = gather_with_local_grad(self.embed(views[0]))  # (N_global, D)
        z2 = gather_with_local_grad(self.embed(views[1]))
        return exact_global_loss(self.scale * barlow_twins_loss(z1, z2, self.lambd))
