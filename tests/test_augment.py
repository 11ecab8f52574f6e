"""ray_al.core.augment: shapes, ranges, per-sample randomness, determinism, and ops against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_al.core import augment as A


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(c: int, s: int, b: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))


GEOMS = [(1, 8), (3, 32)]
KINDS = ["weak", "strong", "weak_strong", "byol"]


def test_to_model_input_is_unit_float_nchw() -> None:
    pixels = torch.randint(0, 256, (5, 6, 7, 3), dtype=torch.uint8)  # (B, H, W, C)
    x = A.to_model_input(pixels)
    assert x.shape == (5, 3, 6, 7) and x.dtype == torch.float32
    ref = pixels.numpy().transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    assert np.array_equal(x.numpy(), ref)  # bitwise: the embedder and the trainer feed the same floats
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@pytest.mark.parametrize("c,s", GEOMS)
@pytest.mark.parametrize("kind", KINDS)
def test_views_shape_range_dtype(kind: str, c: int, s: int) -> None:
    x = _batch(c, s)
    v1, v2 = A.make_views(kind, x, generator=torch.Generator().manual_seed(1))
    for v in (v1, v2):
        assert v.shape == x.shape and v.dtype == x.dtype
        assert torch.isfinite(v).all()
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not torch.equal(v1, v2)  # two views differ


@pytest.mark.parametrize("c,s", GEOMS)
@pytest.mark.parametrize("fn", ["weak", "strong", "byol1", "byol2"])
def test_each_sample_draws_its_own_params(fn: str, c: int, s: int) -> None:
    x = _batch(c, s, b=1).expand(16, c, s, s).contiguous()  # 16 copies of one image
    g = torch.Generator().manual_seed(3)
    f = {"weak": lambda: A.weak(x, g), "strong": lambda: A.strong(x, g),
         "byol1": lambda: A.byol(x, 1, g), "byol2": lambda: A.byol(x, 2, g)}[fn]
    y = f().flatten(1)
    distinct = torch.unique(y, dim=0).shape[0]
    assert distinct >= 8, f"{fn}: only {distinct} distinct outputs for 16 copies"


@pytest.mark.parametrize("kind", KINDS)
def test_generator_determinism(kind: str) -> None:
    x = _batch(3, 32)
    a = A.make_views(kind, x, generator=torch.Generator().manual_seed(7))
    b = A.make_views(kind, x, generator=torch.Generator().manual_seed(7))
    c = A.make_views(kind, x, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_views_do_not_depend_on_the_batch_split(kind: str) -> None:
    """Per-sample seeds: 2 halves (two workers with b) give the views of the whole batch (one with 2b)."""
    x = _batch(3, 32, b=10)
    seeds = torch.arange(100, 110)
    whole = A.make_views(kind, x, seeds=seeds)
    first = A.make_views(kind, x[:4], seeds=seeds[:4])
    second = A.make_views(kind, x[4:], seeds=seeds[4:])
    for w, f, s in zip(whole, first, second):
        torch.testing.assert_close(w, torch.cat([f, s]), rtol=0, atol=1e-6)
    other = A.make_views(kind, x, seeds=seeds + 1)
    assert not torch.equal(whole[1], other[1])


def test_seeds_and_generator_are_exclusive_and_sized() -> None:
    x = _batch(1, 8, b=4)
    with pytest.raises(ValueError, match="not both"):
        A.weak(x, torch.Generator(), seeds=torch.arange(4))
    with pytest.raises(ValueError, match="one per sample"):
        A.weak(x, seeds=torch.arange(3))


def test_hash_uniform_is_uniform_and_in_range() -> None:
    u = A.hash_uniform(torch.arange(4000)[:, None], torch.arange(8)[None, :]).numpy().ravel()
    assert u.min() >= 0.0 and u.max() < 1.0
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    expected = u.size / 10
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 40, f"chi2 {chi2} for 10 bins (99.99% quantile of chi2(9) is ~33.7)"
    # neighbouring seeds and counters are decorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.05


def _np_shifts(img: np.ndarray, pad: int) -> list[np.ndarray]:
    c, h, w = img.shape
    p = np.zeros((c, h + 2 * pad, w + 2 * pad), img.dtype)
    p[:, pad:pad + h, pad:pad + w] = img
    return [p[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


@pytest.mark.parametrize("flip", [True, False])
def test_weak_is_a_padded_crop_and_optional_flip(flip: bool) -> None:
    x = _batch(3, 8, b=24)
    y = A.weak(x, torch.Generator().manual_seed(0), A.AugmentParams(flip=flip, pad=2)).numpy()
    n_flipped = 0
    for xi, yi in zip(x.numpy(), y):
        shifts = _np_shifts(xi, 2)
        plain = any(np.array_equal(yi, s) for s in shifts)
        mirrored = any(np.array_equal(yi, s[:, :, ::-1]) for s in shifts)
        assert plain or mirrored
        n_flipped += int(mirrored and not plain)
    assert (n_flipped > 0) == flip


def test_resized_crop_of_full_area_is_identity_or_mirror() -> None:
    x = _batch(3, 16, b=16)
    keep = A.AugmentParams(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip=False)
    torch.testing.assert_close(A.strong(x, torch.Generator().manual_seed(0), keep), x, rtol=0, atol=1e-5)
    flips = A.strong(x, torch.Generator().manual_seed(0), A.AugmentParams(**{**keep.__dict__, "flip": True}))
    is_flip = [(torch.allclose(f, xi.flip(2), atol=1e-5), torch.allclose(f, xi, atol=1e-5)) for f, xi in zip(flips, x)]
    assert all(a or b for a, b in is_flip) and any(a for a, _ in is_flip)


def test_rotations_match_numpy() -> None:
    x = _batch(3, 8, b=5)
    xr, labels = A.rotations(x)
    assert xr.shape == (20, 3, 8, 8) and labels.tolist() == [k for k in range(4) for _ in range(5)]
    ref = np.concatenate([np.rot90(x.numpy(), k, axes=(2, 3)) for k in range(4)])
    np.testing.assert_array_equal(xr.numpy(), ref)
    with pytest.raises(ValueError, match="square"):
        A.rotations(torch.rand(2, 1, 8, 6))


def test_grayscale_and_solarize_match_formulas() -> None:
    x = _batch(3, 8, b=6)
    xn = x.numpy().astype(np.float64)
    luma = 0.299 * xn[:, 0] + 0.587 * xn[:, 1] + 0.114 * xn[:, 2]
    g = A.grayscale(x).numpy()
    for ch in range(3):
        np.testing.assert_allclose(g[:, ch], luma, atol=1e-6)
    mask = torch.tensor([True, False] * 3)
    s = A.solarize(x, mask).numpy()
    ref = np.where(xn >= 0.5, 1.0 - xn, xn)
    np.testing.assert_allclose(s[0::2], ref[0::2], atol=1e-7)
    np.testing.assert_array_equal(s[1::2], x.numpy()[1::2])


def _np_blur(img: np.ndarray, sigma: float, k: int) -> np.ndarray:
    r = k // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-t ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    p = np.pad(img, ((0, 0), (0, 0), (r, r)), mode="reflect")
    h = sum(w[i] * p[:, :, i:i + img.shape[2]] for i in range(k))
    p = np.pad(h, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(w[i] * p[:, i:i + img.shape[1], :] for i in range(k))


def test_gaussian_blur_per_sample_sigma_matches_numpy() -> None:
    x = _batch(3, 32, b=3)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    y = A.gaussian_blur(x, sigma, kernel_size=5).numpy()
    for i in range(3):
        np.testing.assert_allclose(y[i], _np_blur(x.numpy()[i].astype(np.float64), float(sigma[i]), 5), atol=1e-5)


def test_color_matrices() -> None:
    torch.testing.assert_close(A._hue_matrix(torch.zeros(2)), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    sat0 = A._saturation_matrix(torch.zeros(1))[0]  # saturation 0 -> every channel is the luma
    torch.testing.assert_close(sat0, torch.tensor([[0.299, 0.587, 0.114]] * 3, dtype=torch.float64))
    grey = torch.full((1, 3, 2, 2), 0.4)  # a hue rotation leaves greys grey
    out = A._apply_color_matrix(grey, A._hue_matrix(torch.tensor([0.3])))
    torch.testing.assert_close(out, grey, atol=1e-4, rtol=0)


def test_single_channel_strong_keeps_one_channel_and_no_colour_ops() -> None:
    x = _batch(1, 8, b=8)
    y = A.strong(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_errors_name_what_is_valid() -> None:
    with pytest.raises(ValueError, match="valid kinds"):
        A.make_views("nope", _batch(1, 8))
    with pytest.raises(ValueError, match="float batch"):
        A.weak(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="valid options"):
        A.AugmentParams.from_options(augment={"colour": 1})
