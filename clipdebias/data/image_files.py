"""Reading one image file as an 8-bit RGB ``PIL.Image``, whatever its mode, or saying why not.

Every path that decodes image files (``encode``, ``pseudolabel``, ``zeroshot``, ``ssl``) goes
through :func:`read_image`, so every odd-but-valid kind is converted the same way
(docs/reliability.md lists them):

- grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``: Pillow's conversion to RGB;
- 16-bit grayscale (``I;16*``, and ``I``, which Pillow uses for 16-bit PGM): scaled from
  0..65535 to 0..255 (Pillow's own conversion clips everything above 255 to white);
- 32-bit float (``F``): values taken as 0..255 and clipped, as Pillow does;
- transparency (an alpha band, or a palette/grayscale/RGB image with a transparent colour):
  composited on :data:`BACKGROUND` (white), as a viewer shows it, instead of dropping the alpha,
  which would expose whatever colour the transparent pixels happen to hold;
- an EXIF orientation (phone photos are often stored sideways with a tag that says so): turned
  upright, as a viewer shows it. An orientation tag that cannot be read is ignored.

A file that cannot be decoded raises :class:`UnreadableImage` with the reason: zero bytes, not an
image, truncated or corrupt data (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off: a truncated file
is unreadable, never half grey), and images above Pillow's decompression-bomb limit
(``2 * PIL.Image.MAX_IMAGE_PIXELS``, 178,956,970 pixels by default, e.g. 13,000 x 13,000; a
program that embeds clipdebias may change ``PIL.Image.MAX_IMAGE_PIXELS``). Pillow's warnings
about odd files (corrupt EXIF, large images) are silenced for the one call, so they cannot break
into the progress bars.

Reduced-size decoding: ``read_image(path, min_side=S)`` lets a JPEG's decoder scale the image down by
1/2, 1/4 or 1/8 in the DCT (Pillow's ``Image.draft``), never below ``S`` pixels on the shortest side
(the encoders ask for twice the model's input size: docs/performance.md has the measurements).
Decoding a 1600x1200 photo for a 224 px model at half its size costs a fraction of the full decode,
and the resize that follows works on a quarter of the pixels. Other formats ignore ``min_side``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
"""Colour under transparent pixels."""
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class UnreadableImage(Exception):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _TRANSPARENT_MODES or "transparency" in image.info


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.int64)
    scaled = (np.clip(values, 0, _SIXTEEN_BIT_MAX) * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX
    return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")


_ORIENTATION_TAG = 0x0112
_TURNED = range(2, 9)  # orientations other than 1 (upright) that EXIF defines


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (itself when there is none, or it is unreadable)."""
    try:
        if image.getexif().get(_ORIENTATION_TAG, 1) not in _TURNED:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not make a good image unreadable
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit RGB image (see the module docstring for each mode)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def draft_request(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The ``(width, height)`` to ask ``Image.draft`` for, so that an image of ``size`` keeps at least
    ``min_side`` pixels on its shortest side (Pillow keeps both sides at or above the request)."""
    width, height = size
    shortest = max(1, min(width, height))
    return max(1, math.ceil(width * min_side / shortest)), max(1, math.ceil(height * min_side / shortest))


def read_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB; :class:`UnreadableImage` if it cannot be decoded.

    ``min_side``: a JPEG at least twice as large may be decoded at 1/2, 1/4 or 1/8 of its size,
    keeping at least this many pixels on its shortest side; ``None`` decodes every pixel.
    """
    path = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd-but-readable files
            with Image.open(path) as image:
                if min_side is not None and image.format == "JPEG" and min(image.size) >= 2 * min_side:
                    image.draft("RGB", draft_request(image.size, min_side))
                image.load()
                return to_rgb(upright(image))
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many kinds for a corrupt file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnreadableImage(path, f"{type(err).__name__}: {reason}" if reason else type(err).__name__) from err
