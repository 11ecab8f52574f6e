"""Batched view pipelines for self-supervised learning (pure torch, never imports ray).

Every function takes a float batch ``x`` of shape (B, C, H, W) with values in [0, 1] and
returns a batch of the same shape and range. Each sample draws its own random parameters,
vectorised over the batch (no Python loop over samples). :func:`to_model_input` makes such a batch
from uint8 images (B, H, W, C): the one pixel conversion of training, embedding and the benchmarks.

Randomness comes from a :class:`RandomSource`, built from one of:

* ``generator``: a ``torch.Generator`` (reproducible for a given batch, but the parameters of
  sample i depend on the batch it sits in);
* ``seeds``: one int64 seed per sample (e.g. a hash of the sample id and the epoch). Draws are a
  counter-based hash of (seed, draw index), so sample i gets the same view whatever batch or
  worker it lands in: splitting a batch of 2b across two workers reproduces one worker with 2b.
* neither: the global torch RNG.

Pipelines (defaults from the papers; CIFAR-sized crop scale, see :class:`AugmentParams`):

* ``weak``: random crop with zero padding (pad = image_size // 8, i.e. 4 px at 32x32) + horizontal
  flip (p = 0.5). The standard CIFAR training augmentation, MoBYv2AL's weak view.
* ``strong``: MoCo-v2 set: random resized crop + colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8 +
  grayscale p = 0.2 + Gaussian blur sigma in [0.1, 2] with p = 0.5 + flip.
* ``byol``: BYOL set (used by DALBT / Barlow Twins): random resized crop + flip + colour jitter
  (0.4, 0.4, 0.2, 0.1) p = 0.8 + grayscale p = 0.2; view 1 blur p = 1.0, solarize p = 0; view 2 blur
  p = 0.1, solarize p = 0.2.
* ``rotations``: the batch rotated by 0/90/180/270 degrees, with labels 0..3 (RotNet).

Single-channel images: saturation, hue and grayscale are no-ops (there is no colour); brightness,
contrast, blur and solarize still apply. Digits (8x8 / 28x28) should use ``flip=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AugmentParams",
    "RandomSource",
    "VIEW_KINDS",
    "weak",
    "strong",
    "byol",
    "rotations",
    "make_views",
    "grayscale",
    "solarize",
    "gaussian_blur",
    "hash_uniform",
    "to_model_input",
    "resize_center_crop",
]

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class AugmentParams:
    """Knobs of the view pipelines. Defaults: MoCo-v2 / BYOL values, crop scale for small images.

    crop_scale: area fraction of random resized crops. MoCo-v2 and BYOL use (0.08, 1.0) at 224 px;
        CIFAR implementations use (0.2, 1.0), our default because pools are small images.
    pad: padding of the weak random crop; None means max(1, image_size // 8) (4 px at 32x32).
    """

    flip: bool = True
    pad: int | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    @classmethod
    def from_options(cls, flip: bool = True, augment: dict[str, Any] | None = None) -> "AugmentParams":
        """Build from an SSL method's ``flip`` / ``augment`` options; unknown keys are errors."""
        augment = dict(augment or {})
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(augment) - valid)
        if unknown:
            raise ValueError(f"unknown augment option(s) {unknown}; valid options: {sorted(valid)}")
        augment.setdefault("flip", flip)
        for key in ("crop_scale", "crop_ratio", "jitter", "blur_sigma"):
            if key in augment:
                augment[key] = tuple(augment[key])
        return cls(**augment)


def to_model_input(pixels: Tensor, device: torch.device | str = "cpu", image_size: int | None = None) -> Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]; models normalise internally. The permuted view
    keeps channels-last memory, which CPU convolutions run about 30% faster than a contiguous NCHW copy.
    image_size: the model's input side; a batch of another size is brought to it by `resize_center_crop`
    (decoding already gives pool images that size: ray_al.data.images.fit_square)."""
    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x if image_size is None else resize_center_crop(x, image_size)


def resize_center_crop(x: Tensor, image_size: int) -> Tensor:
    """(B, C, H, W) -> (B, C, image_size, image_size): the shorter side resized to image_size (bilinear,
    antialiased when shrinking), aspect kept, then the centred square cut out; never squashed. The same
    geometry as ray_al.data.images.fit_square on PIL images."""
    _check(x)
    h, w = x.shape[2], x.shape[3]
    if (h, w) == (image_size, image_size):
        return x
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    return x[:, :, top:top + image_size, left:left + image_size]


# ----------------------------------------------------------------------------- randomness


def _pcg_hash(v: Tensor) -> Tensor:
    """PCG-RXS-M-XS 32-bit hash (Jarzynski & Olano 2020) on int64 tensors holding values < 2**32.

    All products stay below 2**63, so int64 arithmetic never overflows.
    """
    state = (v * 747796405 + 2891336453) & _M32
    word = ((torch.bitwise_right_shift(state, (state >> 28) + 4)) ^ state) * 277803737 & _M32
    return ((word >> 22) ^ word) & _M32


def hash_uniform(seeds: Tensor, counters: Tensor) -> Tensor:
    """Uniforms in [0, 1) from (seed, counter) pairs; broadcasting int64 tensors -> float32."""
    seeds = seeds.to(torch.int64)
    key = _pcg_hash((seeds & _M32) ^ _pcg_hash((seeds >> 32) & _M32))
    h = _pcg_hash(key ^ _pcg_hash(counters.to(torch.int64) & _M32))
    return (h >> 8).to(torch.float32) / float(1 << 24)  # 24 bits: exact in float32, < 1


class RandomSource:
    """Per-sample uniform draws for a batch of ``batch`` samples (see the module docstring)."""

    def __init__(
        self,
        batch: int,
        device: torch.device | str,
        generator: torch.Generator | None = None,
        seeds: Tensor | None = None,
    ) -> None:
        if generator is not None and seeds is not None:
            raise ValueError("pass either generator or seeds to the augmentations, not both")
        if seeds is not None:
            seeds = torch.as_tensor(seeds, dtype=torch.int64)
            if seeds.shape != (batch,):
                raise ValueError(f"seeds must have shape ({batch},) (one per sample), got {tuple(seeds.shape)}")
            seeds = seeds.to(device)
        self.batch = batch
        self.device = torch.device(device)
        self.generator = generator
        self.seeds = seeds
        self._counter = 0  # draws made so far per sample (seeds mode)

    @classmethod
    def of(
        cls, x: Tensor, generator: "torch.Generator | RandomSource | None" = None, seeds: Tensor | None = None
    ) -> "RandomSource":
        if isinstance(generator, RandomSource):
            return generator
        return cls(x.shape[0], x.device, generator=generator, seeds=seeds)

    def uniform(self, k: int = 1) -> Tensor:
        """(B, k) float32 uniforms in [0, 1) on the batch device."""
        if self.seeds is not None:
            counters = torch.arange(self._counter, self._counter + k, device=self.device)
            self._counter += k
            return hash_uniform(self.seeds[:, None], counters[None, :])
        if self.generator is not None:
            u = torch.rand((self.batch, k), generator=self.generator, device=self.generator.device)
            return u.to(self.device)
        return torch.rand((self.batch, k), device=self.device)

    def bernoulli(self, p: float) -> Tensor:
        """(B,) bool: True with probability p. Always consumes one draw, so streams stay aligned."""
        return self.uniform(1)[:, 0] < p


Randomness = torch.Generator | RandomSource | None  # what the pipelines accept as `generator`


# ----------------------------------------------------------------------------- primitive ops


def _check(x: Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augmentations expect a float batch (B, C, H, W) in [0, 1]; got {x.dtype} {tuple(x.shape)}")


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask[:, None, None, None], a, b)


def _gray(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma (ITU-R 601), or the channel mean when C != 3."""
    if x.shape[1] == 3:
        w = x.new_tensor([0.299, 0.587, 0.114])
        return (x * w[None, :, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def grayscale(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Replace every channel by the luma where ``mask`` (B,) is True (all samples if None)."""
    g = _gray(x).expand_as(x)
    return g.clone() if mask is None else _where(mask, g, x)


def solarize(x: Tensor, mask: Tensor | None = None, threshold: float = 0.5) -> Tensor:
    """x -> 1 - x for pixels >= threshold (BYOL), where ``mask`` is True."""
    s = torch.where(x >= threshold, 1.0 - x, x)
    return s if mask is None else _where(mask, s, x)


def _blur_kernel_size(h: int, w: int) -> int:
    """About 10% of the image side (BYOL / MoCo-v2 use 23 px at 224), odd, at least 3."""
    k = int(0.1 * min(h, w))
    return max(3, k + 1 - k % 2)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int | None = None) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (B,), reflect padding."""
    b, c, h, w = x.shape
    k = kernel_size or _blur_kernel_size(h, w)
    r = k // 2
    if r >= min(h, w):  # reflect padding needs pad < size
        raise ValueError(f"blur kernel {k} too large for a {h}x{w} image")
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)  # (k,)
    wts = torch.exp(-(t[None, :] ** 2) / (2.0 * sigma.to(x.dtype)[:, None] ** 2))  # (B, k)
    wts = wts / wts.sum(1, keepdim=True)
    wts = wts.repeat_interleave(c, 0)  # (B*C, k): one kernel per (sample, channel)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, wts[:, None, None, :], groups=b * c)  # horizontal pass
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    y = F.conv2d(y, wts[:, None, :, None], groups=b * c)  # vertical pass
    return y.reshape(b, c, h, w)


def _flip(x: Tensor, mask: Tensor) -> Tensor:
    return _where(mask, x.flip(3), x)


def _pad_crop(x: Tensor, u: Tensor, pad: int) -> Tensor:
    """Random crop of the zero-padded image back to (H, W); u (B, 2) uniforms pick the offsets."""
    b, c, h, w = x.shape
    if pad <= 0:
        return x
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zero fill as torchvision
    off = torch.clamp((u * (2 * pad + 1)).long(), max=2 * pad)  # (B, 2) in [0, 2p]
    rows = off[:, 0:1] + torch.arange(h, device=x.device)[None]  # (B, H)
    cols = off[:, 1:2] + torch.arange(w, device=x.device)[None]  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _resized_crop(x: Tensor, u: Tensor, flip: Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> Tensor:
    """Random resized crop (+ optional flip) via one affine grid per sample; u (B, 4) uniforms."""
    area = scale[0] + u[:, 0] * (scale[1] - scale[0])  # (B,) fraction of the image area
    log_r = math.log(ratio[0]) + u[:, 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image width
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2.0 * u[:, 2] - 1.0) * (1.0 - cw)  # crop centre in [-1, 1] coordinates, inside the image
    cy = (2.0 * u[:, 3] - 1.0) * (1.0 - ch)
    sx = torch.where(flip, -cw, cw)  # a negative x scale mirrors the crop
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# YIQ colour space: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)
_LUMA = _RGB2YIQ[0]


def _apply_color_matrix(x: Tensor, m: Tensor) -> Tensor:
    """Per-sample 3x3 colour transform: m (B, 3, 3), x (B, 3, H, W)."""
    b, c, h, w = x.shape
    return torch.bmm(m.to(x.dtype), x.reshape(b, c, h * w)).reshape(b, c, h, w)


def _saturation_matrix(s: Tensor) -> Tensor:
    """(B,) factors -> (B, 3, 3): blend with luma, y = s*x + (1-s)*gray(x)."""
    eye = torch.eye(3, dtype=torch.float64, device=s.device)
    gray = torch.ones(3, 1, dtype=torch.float64, device=s.device) * _LUMA.to(s.device)[None, :]  # (3, 3)
    s = s.double()[:, None, None]
    return s * eye + (1.0 - s) * gray


def _hue_matrix(h: Tensor) -> Tensor:
    """(B,) shifts in turns (h in [-0.5, 0.5]) -> (B, 3, 3) RGB->RGB chroma rotation."""
    a = h.double() * (2.0 * math.pi)
    cos, sin, one, zero = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).reshape(-1, 3, 3)
    return _YIQ2RGB.to(h.device) @ rot @ _RGB2YIQ.to(h.device)


def _color_jitter(x: Tensor, rng: RandomSource, strength: tuple[float, float, float, float], p: float) -> Tensor:
    """Brightness, contrast, saturation, hue (fixed order), each sample its own factors, with prob p."""
    apply = rng.bernoulli(p)
    u = rng.uniform(4)  # (B, 4)
    bri, con, sat, hue = strength
    y = x * (1.0 + (2.0 * u[:, 0] - 1.0) * bri)[:, None, None, None]
    y = y.clamp(0.0, 1.0)
    mean = _gray(y).mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    y = ((y - mean) * (1.0 + (2.0 * u[:, 1] - 1.0) * con)[:, None, None, None] + mean).clamp(0.0, 1.0)
    if x.shape[1] == 3:  # saturation and hue need colour
        y = _apply_color_matrix(y, _saturation_matrix(1.0 + (2.0 * u[:, 2] - 1.0) * sat)).clamp(0.0, 1.0)
        y = _apply_color_matrix(y, _hue_matrix((2.0 * u[:, 3] - 1.0) * hue)).clamp(0.0, 1.0)
    return _where(apply, y, x)


def _random_blur(x: Tensor, rng: RandomSource, p: float, sigma: tuple[float, float]) -> Tensor:
    apply = rng.bernoulli(p)
    s = sigma[0] + rng.uniform(1)[:, 0] * (sigma[1] - sigma[0])  # (B,)
    return _where(apply, gaussian_blur(x, s).clamp(0.0, 1.0), x)


# ----------------------------------------------------------------------------- pipelines


def _prepare(x: Tensor, generator: Randomness, params: AugmentParams | None,
             seeds: Tensor | None) -> tuple[AugmentParams, RandomSource]:
    """A pipeline's common start: check the batch, default the parameters, one random source."""
    _check(x)
    return (params if params is not None else AugmentParams()), RandomSource.of(x, generator, seeds)


def weak(x: Tensor, generator: Randomness = None, params: AugmentParams | None = None,
         seeds: Tensor | None = None) -> Tensor:
    """Random crop with zero padding + horizontal flip (if ``params.flip``)."""
    p, rng = _prepare(x, generator, params, seeds)
    pad = p.pad if p.pad is not None else max(1, min(x.shape[2], x.shape[3]) // 8)
    y = _pad_crop(x, rng.uniform(2), pad)
    flip = rng.bernoulli(0.5)
    return _flip(y, flip) if p.flip else y


def _crop_jitter_gray(x: Tensor, rng: RandomSource, p: AugmentParams, jitter: tuple[float, float, float, float]) -> Tensor:
    flip = rng.bernoulli(0.5) & p.flip
    y = _resized_crop(x, rng.uniform(4), flip, p.crop_scale, p.crop_ratio)
    y = _color_jitter(y, rng, jitter, p.jitter_p)
    return grayscale(y, rng.bernoulli(p.gray_p)) if x.shape[1] == 3 else y


def strong(x: Tensor, generator: Randomness = None, params: AugmentParams | None = None,
           seeds: Tensor | None = None) -> Tensor:
    """MoCo-v2 set: resized crop, flip, colour jitter (p=0.8), grayscale (p=0.2), blur (p=0.5)."""
    p, rng = _prepare(x, generator, params, seeds)
    y = _crop_jitter_gray(x, rng, p, p.jitter)
    y = _random_blur(y, rng, p.blur_p, p.blur_sigma)
    return solarize(y, rng.bernoulli(p.solarize_p))


def byol(x: Tensor, view: int, generator: Randomness = None, params: AugmentParams | None = None,
         seeds: Tensor | None = None) -> Tensor:
    """BYOL view 1 (blur p=1, no solarize) or view 2 (blur p=0.1, solarize p=0.2); jitter (0.4,0.4,0.2,0.1)."""
    if view not in (1, 2):
        raise ValueError(f"byol view must be 1 or 2, got {view}")
    p, rng = _prepare(x, generator, params, seeds)
    jitter = (p.jitter[0], p.jitter[1], p.jitter[2] / 2.0, p.jitter[3])  # BYOL halves saturation
    y = _crop_jitter_gray(x, rng, p, jitter)
    y = _random_blur(y, rng, 1.0 if view == 1 else 0.1, p.blur_sigma)
    return solarize(y, rng.bernoulli(0.0 if view == 1 else 0.2))


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations: ((4B, C, H, W), labels (4B,)) with block k = rotation by k*90 degrees."""
    _check(x)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"rotations need square images, got {tuple(x.shape[2:])}")
    xs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], 0)
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return xs, labels


VIEW_KINDS = ("weak", "strong", "weak_strong", "byol", "rotations")


def make_views(
    kind: str,
    x: Tensor,
    generator: torch.Generator | None = None,
    params: AugmentParams | None = None,
    seeds: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Two views of ``x`` for an SSL method.

    kind: "weak" (two weak views), "strong" (two MoCo-v2 views: MoCo-v2, SimCLR, SimSiam),
    "weak_strong" (view 1 weak, view 2 strong: MoBYv2AL), "byol" (BYOL views 1 and 2: Barlow
    Twins / DALBT), "rotations" (returns (rotated batch (4B, C, H, W), labels (4B,))).
    """
    _check(x)
    rng = RandomSource.of(x, generator, seeds)
    if kind == "weak":
        return weak(x, rng, params), weak(x, rng, params)
    if kind == "strong":
        return strong(x, rng, params), strong(x, rng, params)
    if kind == "weak_strong":
        return weak(x, rng, params), strong(x, rng, params)
    if kind == "byol":
        return byol(x, 1, rng, params), byol(x, 2, rng, params)
    if kind == "rotations":
        return rotations(x)
    raise ValueError(f"unknown view kind {kind!r}; valid kinds: {list(VIEW_KINDS)}")
