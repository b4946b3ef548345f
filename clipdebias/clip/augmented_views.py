"""Augmented views of images for CLIP's image tower: a random crop, flip and colour change of a PIL
image, made into CLIP's input tensor.

``zeroshot``'s ``head`` student encodes every train image ``K`` more times through
:class:`AugmentedView` (views ``1..K``) into the embedding cache; its randomness is seeded by the
image's own pixels and the view number, so a cache entry is the same however the encoding is
chunked, resumed or spread over DataLoader workers. :func:`augmented_view_id` names a view in the
cache key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

# AugmentedView: the share of the image a random crop keeps, and the colour changes (SimCLR-style
# strengths, lighter on hue). Documented in docs/usage.md (zeroshot, head student).
CROP_SCALE = (0.25, 1.0)
COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
COLOR_JITTER_P = 0.8
GRAYSCALE_P = 0.2
AUGMENTATION_VERSION = 1  # bump when the augmentation changes, so old cache entries are not reused


class AugmentedView:
    """A PIL image to CLIP's input tensor through a random crop, flip and colour change, seeded by the
    image content and ``view`` (a pure function of both). Picklable, for DataLoader workers."""

    def __init__(self, view: int, preprocess_cfg: dict[str, Any]):
        self.view = int(view)
        size = preprocess_cfg["size"]
        size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        interpolation = T.InterpolationMode(preprocess_cfg.get("interpolation", "bicubic"))
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(size, scale=CROP_SCALE, interpolation=interpolation),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(*COLOR_JITTER)], p=COLOR_JITTER_P),
                T.RandomGrayscale(p=GRAYSCALE_P),
                T.ToTensor(),
                T.Normalize(preprocess_cfg["mean"], preprocess_cfg["std"]),
            ]
        )

    def seed(self, image: Image.Image) -> int:
        digest = hashlib.blake2b(digest_size=8, key=self.view.to_bytes(8, "little"))
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
        return int.from_bytes(digest.digest(), "little") & (2**63 - 1)

    def __call__(self, image: Image.Image) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed(image))
            return self.transform(image)


def augmented_view_id(view: int, preprocess_cfg: dict[str, Any]) -> str:
    """The cache key of view ``view`` (it names the augmentation and CLIP's preprocessing)."""
    spec = {
        "version": AUGMENTATION_VERSION,
        "crop_scale": CROP_SCALE,
        "color_jitter": COLOR_JITTER,
        "color_jitter_p": COLOR_JITTER_P,
        "grayscale_p": GRAYSCALE_P,
        "preprocess": preprocess_cfg,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"clip-aug-view{view}-{digest}"
