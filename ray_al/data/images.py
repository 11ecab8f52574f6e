"""Image decoding for pool records (pure: numpy + PIL, no Ray).

Records carry their `id` end to end; a record whose image does not decode is reported by id, then either
dropped (`on_corrupt="skip"`) or raised (`on_corrupt="error"`).
"""
from __future__ import annotations

import io as _io
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError


class CorruptImageError(ValueError):
    """An image that cannot be decoded; the message names the record id."""


def crop_box(width: int, height: int, image_size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized (w, h), centre crop box (left, top, right, bottom)): the shorter side is resized to
    image_size, the aspect kept, and the centred image_size square is cut out; never squashed."""
    scale = image_size / min(width, height)
    w, h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return (w, h), (left, top, left + image_size, top + image_size)


def fit_square(img: Image.Image, image_size: int) -> Image.Image:
    """`img` at image_size x image_size: shorter side resized (bilinear, antialiased), then centre-cropped."""
    if img.size == (image_size, image_size):
        return img
    size, box = crop_box(img.size[0], img.size[1], image_size)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    return img.crop(box)


def decode_one(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """Encoded image bytes -> uint8 array (image_size, image_size, channels); any size and aspect goes in
    (`fit_square`). One channel: luma; three: RGB (a grey image repeated)."""
    with Image.open(_io.BytesIO(data)) as img:
        img = fit_square(img.convert("L" if channels == 1 else "RGB"), image_size)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, C) -> PNG bytes (lossless, for built-in datasets)."""
    img = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_batch(
    batch: dict[str, np.ndarray],
    image_size: int,
    channels: int,
    on_corrupt: str = "skip",
    read_uri: Callable[[str], bytes] | None = None,
) -> dict[str, np.ndarray]:
    """Decode the `image` (bytes) or `path` (URI) column into `pixels` uint8 (B, H, W, C).

    Row count is kept (ids stay aligned through Ray Data): an undecodable row gets zero pixels and
    `corrupt=True`, and the caller reports and drops it; with on_corrupt="error" it raises, naming the id.
    """
    ids = batch["id"]
    if "image" in batch:
        sources, fetch = batch["image"], None
    elif "path" in batch:
        sources, fetch = batch["path"], read_uri
        if fetch is None:
            raise ValueError("pool rows hold `path` URIs but no reader was given to fetch them")
    else:
        raise KeyError("pool batch has neither an `image` (bytes) nor a `path` (URI) column")
    pixels = np.zeros((len(ids), image_size, image_size, channels), dtype=np.uint8)
    corrupt = np.zeros(len(ids), dtype=bool)
    for i, src in enumerate(sources):
        try:
            data = fetch(src) if fetch is not None else src
            if data is None or len(data) == 0:
                raise ValueError("empty image")
            pixels[i] = decode_one(bytes(data), image_size, channels)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            if on_corrupt == "error":
                record_id = ids[i].item() if hasattr(ids[i], "item") else ids[i]
                raise CorruptImageError(
                    f"pool record id={record_id!r}: image cannot be decoded ({exc}). Fix or remove it, or set "
                    "data.on_corrupt=skip to leave such records out (they are reported by id)."
                ) from exc
            corrupt[i] = True
    out = {k: v for k, v in batch.items() if k not in ("image", "path")}
    out["pixels"] = pixels
    out["corrupt"] = corrupt
    return out

