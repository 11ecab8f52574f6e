"""Shared parts of the SSL methods: the base classes, heads, key queues, InfoNCE, EMA, DDP helpers.

Pure torch (never imports ray). Distributed behaviour follows ``torch.distributed`` when it is
initialised (as inside a Ray Train worker) and is a no-op otherwise.

Equivalence of N workers x batch b with 1 worker x batch N*b (DDP averages gradients):
* per-sample losses (MoBY / MoCo InfoNCE against a queue, SimSiam, RotNet) need nothing more than
  keys gathered in rank order before they are enqueued, and global BN statistics (SyncBN /
  :func:`ray_al.models.convert_sync_batchnorm`);
* batch-coupled losses (Barlow Twins cross-correlation, SimCLR NT-Xent) gather the embeddings,
  keep the gradient of the local slice, compute the global loss on every rank and scale its
  gradient by the world size (:func:`exact_global_loss`), so DDP's average is the exact gradient.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ray_al.core import augment
from ray_al.core.augment import AugmentParams

Views = tuple[Tensor, Tensor]

__all__ = [
    "SSLMethod",
    "MomentumContrast",
    "KeyQueue",
    "info_nce",
    "cosine_momentum",
    "ema_update",
    "world",
    "concat_all_gather",
    "gather_with_local_grad",
    "exact_global_loss",
    "mlp",
    "projector_stack",
    "projection_head",
    "frozen_copy",
    "check_momentum",
]


# ----------------------------------------------------------------------------- distributed


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_padded(x: Tensor, world_size: int) -> list[Tensor]:
    """all_gather that tolerates a different batch size per rank (Ray Data shards may differ)."""
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    m = max(counts)
    pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
    buf = [x.new_empty((m, *x.shape[1:])) for _ in range(world_size)]
    dist.all_gather(buf, torch.cat([x, pad], 0).contiguous())
    return [b[:c] for b, c in zip(buf, counts)]


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B_r, ...) from every rank in rank order (no gradient); identity when alone."""
    _, world_size = world()
    if world_size == 1:
        return x
    return torch.cat(_gather_padded(x.detach(), world_size), 0)


def gather_with_local_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated in rank order; only this rank's slice carries gradient."""
    rank, world_size = world()
    if world_size == 1:
        return x
    parts = _gather_padded(x.detach(), world_size)
    parts[rank] = x
    return torch.cat(parts, 0)


def exact_global_loss(loss: Tensor) -> Tensor:
    """Same value, gradient x world_size: with :func:`gather_with_local_grad` inputs, DDP's gradient
    average then equals the gradient of the global loss on one worker with the whole batch."""
    _, world_size = world()
    if world_size == 1:
        return loss
    return loss * world_size - loss.detach() * (world_size - 1)


# ----------------------------------------------------------------------------- building blocks


def mlp(dims: list[int], bn: bool = True, last_bn: bool = False, last_relu: bool = False, last_affine: bool = True) -> nn.Sequential:
    """Linear -> BN -> ReLU between consecutive ``dims``; BN/ReLU after the last Linear are optional."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if bn and (not last or last_bn):
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_affine or not last))
        if not last or last_relu:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def projector_stack(in_dim: int, out_dim: int, layers: int, **mlp_options: Any) -> nn.Sequential:
    """``layers`` Linear layers in_dim -> out_dim -> ... -> out_dim (Barlow Twins, SimSiam projectors)."""
    if layers < 1:
        raise ValueError(f"proj_layers must be >= 1, got {layers}")  # named as the methods' option
    return mlp([in_dim] + [out_dim] * layers, **mlp_options)


def projection_head(in_dim: int, hidden_dim: int | None, out_dim: int) -> nn.Sequential:
    """Linear-ReLU-Linear without BN, hidden width ``in_dim`` unless given (SimCLR, MoCo-v2 heads)."""
    return mlp([in_dim, hidden_dim or in_dim, out_dim], bn=False)


def frozen_copy(module: nn.Module) -> nn.Module:
    """Deep copy whose parameters take no gradient (momentum / key branch)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def check_momentum(momentum: float) -> float:
    """The EMA momentum as a float, refused outside [0, 1]."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return float(momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """EMA momentum rising from ``base`` at progress 0 to 1 at progress 1 on a half cosine (BYOL/MoBY):
    m = 1 - (1 - base) * (cos(pi * progress) + 1) / 2."""
    p = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * p) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameters only (buffers such as BN
    running statistics of the key branch come from its own forward passes, as in MoCo)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


class KeyQueue(nn.Module):
    """FIFO of ``size`` L2-normalised keys (size, dim), initialised with random unit vectors (MoCo).

    Enqueue writes the (rank-ordered, gathered) batch at the pointer and wraps around; a batch
    larger than the queue keeps its last ``size`` keys. Buffers, so they are checkpointed.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue_size must be >= 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:  # k (N, dim), already gathered across ranks
        size = self.keys.shape[0]
        k = k.detach().to(self.keys.dtype)
        if k.shape[0] >= size:
            self.keys.copy_(k[-size:])
            self.ptr.zero_()
            return
        idx = (self.ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.keys[idx] = k
        self.ptr.copy_((self.ptr + k.shape[0]) % size)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo InfoNCE: mean over i of -log softmax([q_i.k_i, q_i.queue_j for j] / T)[0].

    q, k: (B, D) L2-normalised queries and their positive keys; queue: (K, D) negatives.
    """
    l_pos = (q * k).sum(1, keepdim=True)  # (B, 1)
    l_neg = q @ queue.t()  # (B, K)
    logits = torch.cat([l_pos, l_neg], 1) / temperature  # (B, 1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------- base class


class SSLMethod(nn.Module):
    """A self-supervised objective on top of a shared encoder.

    The encoder is *not* a registered submodule: its owner (``JointLearner``) registers it once, so
    state dicts and DDP see each parameter once. Heads, momentum copies and queues are submodules.

    Subclasses set ``name`` and ``view_kind`` and implement ``setup(**options)``, which builds the
    heads and whose keyword parameters are the method's options besides ``flip`` and ``augment``, and
    ``_loss(views)``. ``loss`` makes the views (``ray_al.core.augment``) unless ``views`` are passed, e.g.
    precomputed identical views when comparing 2 workers x b with 1 worker x 2b. ``seeds`` (one int
    per sample) make the views a function of the sample alone, so a batch split across workers gets
    the same views.
    """

    name: ClassVar[str] = ""
    view_kind: ClassVar[str] = "strong"

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        image_size: int,
        channels: int,
        *,
        flip: bool = True,
        augment: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_encoder", encoder)  # bypass nn.Module registration on purpose
        self.feature_dim = int(feature_dim)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.aug = AugmentParams.from_options(flip=flip, augment=augment)
        self.setup(**options)

    def setup(self) -> None:
        """Build the method's heads, queues and buffers; subclasses take their options here."""

    @property
    def encoder(self) -> nn.Module:
        return self._encoder  # type: ignore[attr-defined]

    @classmethod
    def options(cls) -> list[str]:
        """Keyword options accepted by ``build`` for this method: those of ``setup``, then the views'."""
        own = [p for p in inspect.signature(cls.setup).parameters if p != "self"]
        return [*own, "flip", "augment"]

    def make_views(self, x: Tensor, generator: torch.Generator | None = None, seeds: Tensor | None = None) -> Views:
        return augment.make_views(self.view_kind, x, generator=generator, params=self.aug, seeds=seeds)

    def loss(
        self,
        x: Tensor | None,
        generator: torch.Generator | None = None,
        views: Views | None = None,
        seeds: Tensor | None = None,
    ) -> Tensor:
        """Scalar SSL loss of a batch x (B, C, H, W) in [0, 1] (or of the given ``views``)."""
        if views is None:
            if x is None:
                raise ValueError("pass a batch x or precomputed views")
            views = self.make_views(x, generator=generator, seeds=seeds)
        return self._loss(views)

    def _loss(self, views: Views) -> Tensor:
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """Called after each optimiser step; progress in [0, 1] over the whole run."""

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, image_size={self.image_size}, channels={self.channels}"


class MomentumContrast(SSLMethod):
    """Base of MoCo-v2 and MoBY: unit-norm queries from the encoder and ``query_heads``, unit-norm keys
    from a key branch of frozen copies (``encoder_k`` and ``<head>_k`` for each of ``key_heads``) that
    follows the query branch by EMA, contrasted by InfoNCE at ``temperature``.

    A subclass's ``setup`` calls ``init_contrast`` first and ``init_key_branch`` once its heads exist;
    the order in which it registers submodules is the order of the checkpoint's keys.
    """

    query_heads: ClassVar[tuple[str, ...]] = ()  # attribute names, applied in order after the encoder
    key_heads: ClassVar[tuple[str, ...]] = ()  # query heads that the key branch copies

    def init_contrast(self, temperature: float, momentum: float) -> None:
        self.base_momentum = check_momentum(momentum)
        self.temperature = float(temperature)

    def init_key_branch(self) -> None:
        self.encoder_k = frozen_copy(self.encoder)
        for head in self.key_heads:
            setattr(self, f"{head}_k", frozen_copy(getattr(self, head)))

    def query(self, v: Tensor) -> Tensor:  # (B, C, H, W) -> (B, proj_dim), unit norm
        h = self.encoder(v)
        for head in self.query_heads:
            h = getattr(self, head)(h)
        return F.normalize(h, dim=1)

    @torch.no_grad()
    def key(self, v: Tensor) -> Tensor:  # (B, C, H, W) -> (B, proj_dim), unit norm, no grad
        h = self.encoder_k(v)
        for head in self.key_heads:
            h = getattr(self, f"{head}_k")(h)
        return F.normalize(h, dim=1)

    @torch.no_grad()
    def ema_key_branch(self, momentum: float) -> None:
        ema_update(self.encoder_k, self.encoder, momentum)
        for head in self.key_heads:
            ema_update(getattr(self, f"{head}_k"), getattr(self, head), momentum)
