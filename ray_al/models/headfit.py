"""A linear head trained on stored encoder features (pure torch: no Ray, no images).

A frozen encoder in eval mode maps an image to the same features every epoch (the labeled stream has no
augmentation, ray_al.models.trainloop), so a head-only round can train on the features the run stored once
(ray_al.loop.features.RunFeatures.frozen_features) instead of running the encoder over every labeled image
every epoch. The batches, optimiser, schedule and dropout are the ones trainloop's one-worker head-only fit
uses, so both train the same head up to floating-point summation order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ray_al.models import trainloop


def fit_linear_head(learner: torch.nn.Module, features: np.ndarray, labels: np.ndarray, seed: int, epochs: int,
                    train) -> list[dict]:
    """Train `learner.classifier` (after `learner.dropout`) on (n, feature_dim) features and their labels
    for `epochs` passes, in place. `train`: the run's TrainConfig (batch size, optimiser, lr, schedule).
    Returns per-epoch metrics (loss, ce, epoch, steps, train_seconds)."""
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    x = torch.from_numpy(np.array(features, dtype=np.float32, order="C"))  # a copy: stored features are read-only
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    params = list(learner.classifier.parameters())
    n_steps = trainloop.steps_per_epoch(len(x), 0, train.batch_size, train.unlabeled_batch_size, False)
    optimizer, scheduler = trainloop.make_optimizer(params, train.lr, train.momentum, train.weight_decay,
                                                    n_steps * epochs, tuple(train.milestones), train.optimizer,
                                                    train.lr_schedule)
    learner.eval()  # the encoder is not run; dropout before the head is switched on alone
    learner.dropout.train()
    run = _HeadRun(learner, x, y, optimizer, scheduler, seed, n_steps, train.batch_size)
    return [_epoch(run, epoch) for epoch in range(epochs)]


@dataclass
class _HeadRun:
    learner: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    seed: int
    n_steps: int
    batch_size: int


def _epoch(run: _HeadRun, epoch: int) -> dict:
    torch.manual_seed((run.seed * 7919 + epoch) * 1009)  # dropout masks: as the one-worker fit seeds them
    started = time.perf_counter()
    batches = trainloop.cycling_batches(len(run.x), run.batch_size, trainloop.epoch_generator(run.seed, epoch, 0, 0))
    total = 0.0
    for _ in range(run.n_steps):
        idx = next(batches)
        loss = F.cross_entropy(run.learner.classifier(run.learner.dropout(run.x[idx])), run.y[idx])
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        total += float(loss.detach())
    mean = total / run.n_steps
    return {"loss": mean, "ce": mean, "ssl": 0.0, "epoch": epoch, "steps": run.n_steps,
            "train_seconds": time.perf_counter() - started}
