"""The training loop proper, in plain PyTorch (no Ray): ray_al.workers.train wraps it for Ray Train workers and the
benchmark runs it bare, so both measure the same code.

Determinism and data-parallel equivalence:
* every batch is drawn from in-memory tensors sorted by id, with permutations from generators seeded by
  (seed, epoch, stream[, rank]), so a resumed or repeated run trains the same model whatever order Ray
  Data delivered the rows in;
* "global" streams are sliced like torch's DistributedSampler: every rank holds the same rows, draws the
  same permutation, cuts it into global batches of world x b and takes its own b. One step of N workers
  x b is then one step of 1 worker x N*b (DDP averages the gradients, global BN and gathered keys do the
  rest). The labeled set is always global (it is small; no label is dropped by uneven sharding); the SSL
  pool is global when replicated to every worker (sharding="replicate") and local to the rank otherwise
  (Ray Data shards: the scalable default);
* SSL views come from per-sample seeds, a hash of (sample id, seed, epoch, step), not from a shared
  generator, so a sample gets the same views whichever rank or batch it lands in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_al.core.augment import to_model_input
from ray_al.core.config import ConfigError, LrSchedule, Optimizer, choices
from ray_al.core.ids import id_keys, splitmix64

# ----------------------------------------------------------------------------- per-sample keys and seeds


def ids_to_keys(ids: np.ndarray) -> np.ndarray:
    """Stable int64 key per record id (int or string ids; same id -> same key in every process)."""
    return id_keys(ids).view(np.int64)


def view_seeds(keys: torch.Tensor, seed: int, epoch: int, step: int) -> torch.Tensor:
    """(B,) int64 augmentation seeds: hash of (sample key, run seed, epoch, global step in the epoch)."""
    mix = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(step)) & 0x7FFFFFFFFFFFFFFF
    salt = splitmix64(np.array([mix], dtype=np.int64).view(np.uint64))
    mixed = splitmix64(keys.numpy().view(np.uint64) ^ salt)
    return torch.from_numpy(mixed.view(np.int64))


# ----------------------------------------------------------------------------- data


@dataclass
class TrainTensors:
    """One worker's data, sorted by id: uint8 images (N, H, W, C), int64 labels, int64 per-sample keys.

    labeled_*: the whole labeled set (every rank holds it). unlabeled_*: the SSL pool without the labeled
    images: all of it (global) or this rank's Ray Data shard (local), see `EpochPlan.ssl_global`.
    """

    labeled_x: torch.Tensor
    labeled_y: torch.Tensor
    unlabeled_x: torch.Tensor  # (M, H, W, C); empty when SSL does not use the pool
    labeled_keys: torch.Tensor | None = None  # (N,) int64; None: derived from the position
    unlabeled_keys: torch.Tensor | None = None  # (M,)
    _ssl_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.labeled_keys is None:
            self.labeled_keys = torch.from_numpy(ids_to_keys(np.arange(len(self.labeled_x))))
        if self.unlabeled_keys is None:
            self.unlabeled_keys = torch.from_numpy(ids_to_keys(-1 - np.arange(len(self.unlabeled_x))))
        for name, x, k in (("labeled", self.labeled_x, self.labeled_keys),
                           ("unlabeled", self.unlabeled_x, self.unlabeled_keys)):
            if len(x) != len(k):
                raise ValueError(f"{name}: {len(x)} images but {len(k)} keys")

    def ssl_source(self, world: int, rank: int, ssl_global: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SSL rows (labeled + unlabeled) and their keys. Local: this rank's unlabeled shard plus every
        world-th labeled image, so each labeled image is used by exactly one rank."""
        key = (world, rank, ssl_global)
        if key not in self._ssl_cache:
            lx, lk = (self.labeled_x, self.labeled_keys) if ssl_global else (self.labeled_x[rank::world],
                                                                             self.labeled_keys[rank::world])
            parts = [(x, k) for x, k in ((lx, lk), (self.unlabeled_x, self.unlabeled_keys)) if len(x)]
            if not parts:
                raise ValueError("no images for self-supervised training on this worker")
            self._ssl_cache.clear()
            self._ssl_cache[key] = (torch.cat([x for x, _ in parts]), torch.cat([k for _, k in parts]))
        return self._ssl_cache[key]


OPTIMIZERS = choices(Optimizer)
LR_SCHEDULES = choices(LrSchedule)


def check_optimizer_names(optimizer: str, schedule: str) -> None:
    """train.optimizer / train.lr_schedule for callers that bypass the config (which checks them on load)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer='{optimizer}' is not valid; choose one of {', '.join(OPTIMIZERS)}.")
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule='{schedule}' is not valid; choose one of {', '.join(LR_SCHEDULES)}.")


def make_optimizer(params, lr: float, momentum: float, weight_decay: float, total_steps: int,
                   milestones: tuple[float, ...], optimizer: str = "sgd",
                   schedule: str = "step") -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser, stepped per batch by its schedule.

    sgd: momentum SGD (MoBYv2AL, SimSiam, MoCo-v2); adam: Adam with L2 weight decay (the RotNet AL paper;
    `momentum` is unused). step: 10x drops at fractions `milestones` of the run (MoBYv2AL: 60% and 80%);
    cosine: cosine annealing from lr to 0 over the run (SimSiam, RotNet)."""
    check_optimizer_names(optimizer, schedule)
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if schedule == "step":
        steps = sorted({max(1, int(round(m * total_steps))) for m in milestones})
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))


def steps_per_epoch(n_labeled: int, n_ssl: int, batch_size: int, ssl_batch_size: int, ssl: bool,
                    world: int = 1, ssl_global: bool = True, ce: bool = True) -> int:
    """One pass over the labeled set in global batches of world x batch_size; with SSL, also one pass over
    the SSL rows (n_ssl: global count, or this rank's count when not ssl_global); the shorter cycles."""
    n = math.ceil(n_labeled / (batch_size * world)) if ce and n_labeled else 0
    if ssl and n_ssl:
        n = max(n, math.ceil(n_ssl / (ssl_batch_size * (world if ssl_global else 1))))
    return max(n, 1)


def cycling_batches(n: int, batch: int, gen: torch.Generator, world: int = 1, rank: int = 0) -> Iterator[torch.Tensor]:
    """Endless index batches: permute n, cut global batches of world*batch (the last partial one is
    dropped unless n is smaller than a global batch), yield this rank's contiguous slice."""
    if n < 1:
        raise ValueError("no rows to draw batches from")
    size = batch * world
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, size):
            chunk = perm[start:start + size]
            if len(chunk) == size or n < size:
                yield torch.tensor_split(chunk, world)[rank] if world > 1 else chunk


def epoch_generator(seed: int, epoch: int, rank: int, stream: int = 0) -> torch.Generator:
    """Permutation generator of one data stream (0 labeled, 1 SSL); pass rank 0 for global streams."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 1009 + rank + stream * 7_919_000)


def freeze_unused(learner: nn.Module, head_only: bool, use_ce: bool, use_ssl: bool) -> None:
    """Parameters no loss touches take no gradient: DDP (find_unused_parameters=False) would wait for
    their gradients forever, and the optimiser should not decay them."""
    if head_only:  # linear evaluation on frozen pre-trained features
        for p in learner.parameters():
            p.requires_grad_(False)
        for p in learner.classifier.parameters():
            p.requires_grad_(True)
        return
    if not use_ce:
        for p in learner.classifier.parameters():
            p.requires_grad_(False)
    if not use_ssl and learner.ssl is not None:
        for p in learner.ssl.parameters():
            p.requires_grad_(False)


class JointObjective(nn.Module):
    """CE(labeled) + ssl_weight * SSL(labeled + unlabeled) in one forward, so DDP sees every parameter use
    through its own forward (gradients of both losses are averaged across workers in one all-reduce)."""

    def __init__(self, learner: nn.Module):
        super().__init__()
        self.learner = learner

    def forward(self, x_labeled: torch.Tensor | None, y_labeled: torch.Tensor | None,
                x_ssl: torch.Tensor | None, ssl_weight: float, generator: torch.Generator | None = None,
                seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zero = next(self.learner.parameters()).new_zeros(())
        ce = zero
        if x_labeled is not None:
            logits, _ = self.learner(x_labeled)  # (B, C)
            ce = F.cross_entropy(logits, y_labeled)
        ssl = zero
        if x_ssl is not None:
            ssl = self.learner.ssl_loss(x_ssl, generator=generator, seeds=seeds)
        return ce + ssl_weight * ssl, ce.detach(), ssl.detach()


@dataclass(frozen=True)
class EpochPlan:
    """What each epoch of one worker needs: seeds, sizes (per-rank batches) and its place in the group."""

    seed: int
    epochs: int
    n_steps: int
    batch_size: int
    unlabeled_batch_size: int
    ssl_weight: float
    use_ssl: bool
    use_ce: bool = True
    rank: int = 0
    world: int = 1
    ssl_global: bool = True  # the SSL stream is global (every rank holds all of it) or this rank's shard
    device: torch.device | str = "cpu"


@dataclass
class TrainState:
    """A learner in training: its objective (a JointObjective, maybe DDP-wrapped), optimiser and schedule."""

    objective: nn.Module
    learner: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def checkpoint(self, epoch: int) -> dict:
        """Plain tensors, numbers and containers: loads with torch.load(weights_only=True)."""
        return {"model": self.learner.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch}

    def restore(self, checkpoint: dict) -> int:
        """Load a `checkpoint()`; returns the epoch to continue from."""
        self.learner.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        return checkpoint["epoch"] + 1


def _streams(data: TrainTensors, plan: EpochPlan, epoch: int) -> tuple[Iterator | None, tuple | None]:
    """The epoch's labeled index batches and (SSL rows, their keys, index batches); None where unused."""
    labeled = ssl = None
    if plan.use_ce and len(data.labeled_x):
        gen = epoch_generator(plan.seed, epoch, 0, 0)
        labeled = cycling_batches(len(data.labeled_x), plan.batch_size, gen, plan.world, plan.rank)
    if plan.use_ssl:
        ssl_x, ssl_keys = data.ssl_source(plan.world, plan.rank, plan.ssl_global)
        gen = epoch_generator(plan.seed, epoch, 0 if plan.ssl_global else plan.rank, 1)
        split = (plan.world, plan.rank) if plan.ssl_global else (1, 0)
        ssl = (ssl_x, ssl_keys, cycling_batches(len(ssl_x), plan.unlabeled_batch_size, gen, *split))
    return labeled, ssl


def _next_inputs(data: TrainTensors, labeled, ssl, plan: EpochPlan, epoch: int, step: int) -> tuple:
    """(x_labeled, y_labeled, x_ssl, view seeds, images) of one step, on the plan's device."""
    x_l = y_l = x_u = seeds = None
    images = 0
    if labeled is not None:
        idx = next(labeled)
        x_l, y_l = to_model_input(data.labeled_x[idx], plan.device), data.labeled_y[idx].to(plan.device)
        images += len(idx)
    if ssl is not None:
        ssl_x, ssl_keys, batches = ssl
        idx = next(batches)
        x_u = to_model_input(ssl_x[idx], plan.device)
        seeds = view_seeds(ssl_keys[idx], plan.seed, epoch, step).to(plan.device)
        images += len(idx)
    return x_l, y_l, x_u, seeds, images


def train_epoch(state: TrainState, data: TrainTensors, plan: EpochPlan, epoch: int,
                on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """One epoch of `plan.n_steps` steps. Returns mean losses and the images this rank fed through the
    model (`images`: labeled + SSL inputs, before views). `on_step(step)` runs after each step."""
    state.objective.train()
    if not any(p.requires_grad for p in state.learner.encoder.parameters()):
        # linear evaluation: a frozen encoder keeps its batch-norm statistics (the pre-training's), which
        # train mode would re-estimate from the few labeled images of each round
        state.learner.encoder.eval()
    labeled, ssl = _streams(data, plan, epoch)
    totals = {"loss": 0.0, "ce": 0.0, "ssl": 0.0}
    images = 0
    for step in range(plan.n_steps):
        x_l, y_l, x_u, seeds, n = _next_inputs(data, labeled, ssl, plan, epoch, step)
        images += n
        loss, ce, ssl_loss = state.objective(x_l, y_l, x_u, plan.ssl_weight, None, seeds)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.learner.on_train_step_end((epoch * plan.n_steps + step + 1) / max(plan.epochs * plan.n_steps, 1))
        totals["loss"] += float(loss.detach())
        totals["ce"] += float(ce)
        totals["ssl"] += float(ssl_loss)
        if on_step is not None:
            on_step(step)
    return {**{k: v / plan.n_steps for k, v in totals.items()}, "images": images}
