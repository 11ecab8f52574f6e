"""The training loop proper, in plain PyTorch (no Ray): ray_al.train wraps it for Ray Train workers and the
benchmark runs it bare, so both measure the same code.

Determinism: batches come from in-memory tensors sorted by id and permuted by a generator seeded from
(seed, epoch, rank), so a resumed or repeated run trains the same model whatever order Ray Data delivered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TrainTensors:
    """One worker's share of the data: uint8 images (N, H, W, C) and int64 labels, sorted by id."""

    labeled_x: torch.Tensor
    labeled_y: torch.Tensor
    unlabeled_x: torch.Tensor  # (M, H, W, C); empty when SSL does not use the pool


def to_model_input(pixels: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]; models normalise internally."""
    return pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def make_optimizer(params, lr: float, momentum: float, weight_decay: float, total_steps: int,
                   milestones: tuple[float, ...]) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with 10x drops at fractions of the run (MoBYv2AL: lr 0.01, drops at 60% and 80%)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = sorted({max(1, int(round(m * total_steps))) for m in milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)


def steps_per_epoch(n_labeled: int, n_unlabeled: int, batch_size: int, unlabeled_batch_size: int, ssl: bool) -> int:
    """One pass over the labeled set; with SSL on the pool, one pass over the unlabeled set (labeled cycles)."""
    n = math.ceil(n_labeled / batch_size)
    if ssl and n_unlabeled:
        n = max(n, math.ceil(n_unlabeled / unlabeled_batch_size))
    return max(n, 1)


def _cycling_batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            chunk = perm[start:start + batch]
            if len(chunk) == batch or n < batch:
                yield chunk


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 1009 + rank)


class JointObjective(nn.Module):
    """CE(labeled) + ssl_weight * SSL(labeled + unlabeled) in one forward, so DDP sees every parameter use
    through its own forward (gradients of both losses are averaged across workers in one all-reduce)."""

    def __init__(self, learner: nn.Module):
        super().__init__()
        self.learner = learner

    def forward(self, x_labeled: torch.Tensor | None, y_labeled: torch.Tensor | None,
                x_ssl: torch.Tensor | None, ssl_weight: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zero = next(self.learner.parameters()).new_zeros(())
        ce = zero
        if x_labeled is not None:
            logits, _ = self.learner(x_labeled)  # (B, C)
            ce = F.cross_entropy(logits, y_labeled)
        ssl = self.learner.ssl_loss(x_ssl, generator=generator) if x_ssl is not None else zero
        return ce + ssl_weight * ssl, ce.detach(), ssl.detach()


def train_epoch(
    objective: nn.Module,
    learner: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: TrainTensors,
    *,
    epoch: int,
    epochs: int,
    seed: int,
    rank: int,
    batch_size: int,
    unlabeled_batch_size: int,
    ssl_weight: float,
    use_ssl: bool,
    use_ce: bool = True,
    n_steps: int,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One epoch. `objective` is a JointObjective (or its DDP wrapper) around `learner`."""
    objective.train()
    gen = epoch_generator(seed, epoch, rank)
    labeled = _cycling_batches(len(data.labeled_x), batch_size, gen) if use_ce and len(data.labeled_x) else None
    ssl_source = torch.cat([data.labeled_x, data.unlabeled_x]) if use_ssl else None
    unlabeled = _cycling_batches(len(ssl_source), unlabeled_batch_size, gen) if use_ssl else None
    totals = {"loss": 0.0, "ce": 0.0, "ssl": 0.0}
    for step in range(n_steps):
        x_l = y_l = x_u = None
        if labeled is not None:
            idx = next(labeled)
            x_l, y_l = to_model_input(data.labeled_x[idx], device), data.labeled_y[idx].to(device)
        if unlabeled is not None:
            x_u = to_model_input(ssl_source[next(unlabeled)], device)
        loss, ce, ssl = objective(x_l, y_l, x_u, ssl_weight, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        learner.on_train_step_end((epoch * n_steps + step + 1) / max(epochs * n_steps, 1))
        totals["loss"] += float(loss.detach())
        totals["ce"] += float(ce)
        totals["ssl"] += float(ssl)
        if on_step is not None:
            on_step(step)
    return {k: v / n_steps for k, v in totals.items()}


@torch.no_grad()
def predict(learner: nn.Module, pixels: torch.Tensor, batch_size: int = 512, device="cpu",
            dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, d), probs (N, C)) in eval mode."""
    learner.eval()
    feats, probs = [], []
    for start in range(0, len(pixels), batch_size):
        x = to_model_input(pixels[start:start + batch_size], device)
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            logits, f = learner(x)
        feats.append(f.float().cpu())
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()
