"""The joint learner (normalise -> backbone -> classifier, plus an optional SSL head) and a global
batch norm that works on CPU / gloo, where torch's SyncBatchNorm refuses to run.

Pure torch: never imports ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ray_al import ssl as ssl_methods
from ray_al.models.backbones import build_backbone

__all__ = ["Normalize", "Encoder", "LearnerSpec", "JointLearner", "GlobalBatchNorm", "convert_sync_batchnorm"]


class Normalize(nn.Module):
    """(x - mean) / std per channel; x (B, C, H, W) in [0, 1]. Buffers, so they follow .to(device)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).flatten()
        std_t = torch.as_tensor(list(std), dtype=torch.float32).flatten()
        if mean_t.numel() == 1:
            mean_t = mean_t.repeat(channels)
        if std_t.numel() == 1:
            std_t = std_t.repeat(channels)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}) or a single value; "
                f"got {mean_t.numel()} and {std_t.numel()}"
            )
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, channels, 1, 1))
        self.register_buffer("std", std_t.view(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Encoder(nn.Sequential):
    """Normalize followed by a backbone; (B, C, H, W) in [0, 1] -> (B, feature_dim)."""

    def __init__(self, normalize: Normalize, backbone: nn.Module) -> None:
        super().__init__(normalize, backbone)
        self.feature_dim: int = int(backbone.feature_dim)


@dataclass(frozen=True)
class LearnerSpec:
    """What a JointLearner is. Its fields are the keys of ray_al.models.weights.learner_kwargs, the dict
    that travels to the workers (`build_learner` turns it into a learner).

    backbone: a name from ``ray_al.models.BACKBONES``.
    num_classes: classifier outputs.
    in_channels, image_size: input geometry (B, in_channels, image_size, image_size).
    mean, std: per-dataset channel statistics; normalisation is the encoder's first layer, so
        callers (and augmentations) work on [0, 1] images.
    ssl: "none" or a name from ``ray_al.ssl.METHODS``; ssl_options go to ``ray_al.ssl.build``.
    dropout: dropout before the classifier (training only; MC-dropout committees apply their own
        masks to the features, ray_al.workers.embed).
    """

    backbone: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    ssl: str = "none"
    ssl_options: dict[str, Any] | None = None
    dropout: float = 0.0


class JointLearner(nn.Module):
    """Encoder + classifier (+ SSL method sharing the encoder), as `spec` (a LearnerSpec) describes.

    ``forward(x) -> (logits (B, num_classes), features (B, feature_dim))``; ``ssl_loss`` is the SSL
    method's loss (ray_al.models.trainloop.JointObjective routes both through one DDP forward).
    """

    def __init__(self, spec: LearnerSpec) -> None:
        super().__init__()
        if spec.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {spec.num_classes}")
        if not 0.0 <= spec.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {spec.dropout}")
        net = build_backbone(spec.backbone, spec.in_channels, spec.image_size)
        self.encoder = Encoder(Normalize(spec.mean, spec.std, spec.in_channels), net)
        self.feature_dim: int = self.encoder.feature_dim
        self.num_classes = int(spec.num_classes)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(self.feature_dim, spec.num_classes)
        self.ssl_name = spec.ssl
        self.ssl: ssl_methods.SSLMethod | None = None
        if spec.ssl != "none":
            self.ssl = ssl_methods.build(spec.ssl, self.encoder, self.feature_dim, spec.image_size, spec.in_channels,
                                         **(spec.ssl_options or {}))
        elif spec.ssl_options:
            raise ValueError(f"ssl_options {sorted(spec.ssl_options)} given but ssl='none'")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.encoder(x)  # (B, feature_dim)
        return self.classifier(self.dropout(feats)), feats  # (B, num_classes), (B, feature_dim)

    def ssl_loss(
        self,
        x: Tensor | None,
        generator: torch.Generator | None = None,
        views: tuple[Tensor, Tensor] | None = None,
        seeds: Tensor | None = None,
    ) -> Tensor:
        """SSL loss of x (B, C, H, W) in [0, 1] with the method's own views; 0 when ssl='none'."""
        if self.ssl is None:
            ref = x if x is not None else views[0]  # type: ignore[index]
            return ref.new_zeros(())
        return self.ssl.loss(x, generator=generator, views=views, seeds=seeds)

    def on_train_step_end(self, progress: float) -> None:
        """Call after every optimiser step; progress in [0, 1] over the whole run (EMA schedules)."""
        if self.ssl is not None:
            self.ssl.on_step_end(progress)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that take gradients (momentum / key branches and frozen parts excluded)."""
        return [p for p in self.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- global batch norm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the incoming gradients over ranks (each rank's loss
    depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def _all_reduce_sum(t: Tensor, group: Any) -> Tensor:
    return _AllReduceSum.apply(t, group)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    Like ``nn.SyncBatchNorm`` but backend-agnostic (gloo on CPU works; torch's SyncBatchNorm only
    runs on GPU/XPU). Two differentiable all-reduces per call (sum, then squared deviations), so
    with DDP averaging, N ranks x b samples give the gradients of one process with N*b samples.
    Outside training or without an initialised process group it is a plain BatchNorm.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1
        if not (self.training and distributed):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        local_n = x.new_full((1,), x.numel() / c)
        packed = _all_reduce_sum(torch.cat([x.sum(dims), local_n]), self.process_group)  # (C+1,)
        n = packed[-1]
        mean = packed[:c] / n  # (C,)
        var = _all_reduce_sum(((x - mean.view(shape)) ** 2).sum(dims), self.process_group) / n  # biased
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[operator]
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=f)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None, backend: str = "auto") -> nn.Module:
    """Replace every BatchNorm by a cross-rank one so N workers x b behave as 1 worker x N*b.

    backend: "torch" (``nn.SyncBatchNorm``, CUDA only), "global" (:class:`GlobalBatchNorm`, any
    device / gloo), or "auto" (torch when the module's parameters are on CUDA, else global).
    Parameters and buffers are shared with the originals, so call it before building the optimiser.
    Modules held by reference (the SSL method's encoder) are converted in place through their owner.
    """
    if backend == "auto":
        on_cuda = any(p.is_cuda for p in module.parameters())
        backend = "torch" if on_cuda else "global"
    if backend == "torch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    if backend != "global":
        raise ValueError(f"unknown backend {backend!r}; valid: ['auto', 'torch', 'global']")
    return _convert_global(module, process_group)


def _convert_global(module: nn.Module, process_group: Any) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, process_group
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_global(child, process_group))
    return out
