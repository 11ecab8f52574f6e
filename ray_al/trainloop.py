"""The training loop proper, in plain PyTorch (no Ray): ray_al.train wraps it for Ray Train workers and the
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

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ----------------------------------------------------------------------------- per-sample keys and seeds


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrap-around arithmetic is the point)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def ids_to_keys(ids: np.ndarray) -> np.ndarray:
    """Stable int64 key per record id (int or string ids; same id -> same key in every process)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return _splitmix64(ids.astype(np.int64).view(np.uint64)).view(np.int64)
    # Python's hash() is salted per process; blake2b is not.
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True)
                        for i in ids.tolist()), dtype=np.int64, count=len(ids))


def view_seeds(keys: torch.Tensor, seed: int, epoch: int, step: int) -> torch.Tensor:
    """(B,) int64 augmentation seeds: hash of (sample key, run seed, epoch, global step in the epoch)."""
    mix = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(step)) & 0x7FFFFFFFFFFFFFFF
    salt = _splitmix64(np.array([mix], dtype=np.int64).view(np.uint64))
    mixed = _splitmix64(keys.numpy().view(np.uint64) ^ salt)
    return torch.from_numpy(mixed.view(np.int64))


# ----------------------------------------------------------------------------- data


@dataclass
class TrainTensors:
    """One worker's data, sorted by id: uint8 images (N, H, W, C), int64 labels, int64 per-sample keys.

    labeled_*: the whole labeled set (every rank holds it). unlabeled_*: the SSL pool without the labeled
    images: all of it (global) or this rank's Ray Data shard (local), see `train_epoch(ssl_global=...)`.
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


def to_model_input(pixels: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]; models normalise internally. The permuted view
    keeps channels-last memory, which CPU convolutions run about 30% faster than a contiguous NCHW copy."""
    return pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("step", "cosine")


def check_optimizer_names(optimizer: str, schedule: str) -> None:
    """train.optimizer / train.lr_schedule: checked by the cycle before Ray starts and by make_optimizer."""
    from ray_al.config import ConfigError

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


def _cycling_batches(n: int, batch: int, gen: torch.Generator, world: int = 1, rank: int = 0) -> Iterator[torch.Tensor]:
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
    world: int = 1,
    ssl_global: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One epoch. `objective` is a JointObjective (or its DDP wrapper) around `learner`.

    batch_size / unlabeled_batch_size are per rank; the labeled stream is global (see the module
    docstring), the SSL stream global when `ssl_global`. Returns mean losses and the images this rank fed
    through the model (`images`: labeled + SSL inputs, before views).
    """
    objective.train()
    labeled = None
    if use_ce and len(data.labeled_x):
        labeled = _cycling_batches(len(data.labeled_x), batch_size, epoch_generator(seed, epoch, 0, 0), world, rank)
    ssl_x = ssl_keys = unlabeled = None
    if use_ssl:
        ssl_x, ssl_keys = data.ssl_source(world, rank, ssl_global)
        gen = epoch_generator(seed, epoch, 0 if ssl_global else rank, 1)
        unlabeled = _cycling_batches(len(ssl_x), unlabeled_batch_size, gen, *((world, rank) if ssl_global else (1, 0)))
    totals = {"loss": 0.0, "ce": 0.0, "ssl": 0.0}
    images = 0
    for step in range(n_steps):
        x_l = y_l = x_u = seeds = None
        if labeled is not None:
            idx = next(labeled)
            x_l, y_l = to_model_input(data.labeled_x[idx], device), data.labeled_y[idx].to(device)
            images += len(idx)
        if unlabeled is not None:
            idx = next(unlabeled)
            x_u = to_model_input(ssl_x[idx], device)
            seeds = view_seeds(ssl_keys[idx], seed, epoch, step).to(device)
            images += len(idx)
        loss, ce, ssl = objective(x_l, y_l, x_u, ssl_weight, None, seeds)
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
    out = {k: v / n_steps for k, v in totals.items()}
    out["images"] = images
    return out


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
