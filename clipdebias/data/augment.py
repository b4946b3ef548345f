"""Weak and strong views of images, for FixMatch-style training.

Two families:

- :class:`GrayAugment`: small grayscale images held as one tensor (digits). The views are made
  for a whole batch at once with ``affine_grid``/``grid_sample`` on the training device, driven by
  an explicit ``torch.Generator``, which is much faster than per-image PIL transforms.
- :func:`natural_transforms`: per-image torchvision transforms for RGB images (CIFAR, ImageNet,
  image folders): weak = flip + crop, strong = weak + RandAugment(2, 10) + cutout. They run in
  DataLoader workers; :mod:`clipdebias.data.streams` seeds every image's randomness explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms as T

# Channel statistics used to normalise RGB inputs.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# RandAugment as in the FixMatch and DebiasPL papers: 2 operations of magnitude 10 (of 30).
RANDAUGMENT_OPS = 2
RANDAUGMENT_MAGNITUDE = 10
# Cutout: one square whose area is this fraction range of the image, filled with grey.
CUTOUT_AREA = (0.02, 0.25)
CUTOUT_FILL = 0.5
# Weak view of small images: a random crop after reflect-padding by this fraction of the side.
PAD_CROP_FRACTION = 0.125
# Evaluation of folder images: resize the short side to size / this ratio, then centre-crop.
CENTER_CROP_RATIO = 0.875


@dataclass(frozen=True)
class GrayAugment:
    """Batched augmentation of small grayscale images in ``[0, 1]`` (shape ``[B, 1, H, W]``).

    Weak: a random whole-pixel shift of up to ``weak_shift`` pixels. Strong: a random affine map
    (rotation, scale, shear, shift), a contrast change around each image's mean, Gaussian noise and
    one ``cutout`` x ``cutout`` square set to 0. Sizes are in pixels of the (upsampled) image.
    The defaults are those of the digits prototype (docs/usage.md).
    """

    weak_shift: int = 2
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear_deg: float = 10.0
    strong_shift: float = 3.0
    contrast: tuple[float, float] = (0.5, 1.5)
    noise_std: float = 0.1
    cutout: int = 7

    def weak(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = images.shape
        shifts = torch.randint(
            -self.weak_shift, self.weak_shift + 1, (batch, 2), generator=generator, device=generator.device
        ).to(images.device, images.dtype)
        theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = shifts[:, 0] * 2.0 / width
        theta[:, 1, 2] = shifts[:, 1] * 2.0 / height
        return _warp(images, theta)

    def strong(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = images.shape

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            draw = torch.rand(batch, *shape, generator=generator, device=generator.device)
            return (low + (high - low) * draw).to(images.device, images.dtype)

        angle = uniform(-math.radians(self.rotation_deg), math.radians(self.rotation_deg))
        shear = uniform(-math.radians(self.shear_deg), math.radians(self.shear_deg))
        scale = uniform(*self.scale)
        shift = uniform(-self.strong_shift, self.strong_shift, 2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output-to-input map: rotate, then shear along x, then divide by the scale.
        theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
        theta[:, 0, 0] = cos / scale
        theta[:, 0, 1] = (cos * torch.tan(shear) - sin) / scale
        theta[:, 1, 0] = sin / scale
        theta[:, 1, 1] = (sin * torch.tan(shear) + cos) / scale
        theta[:, 0, 2] = shift[:, 0] * 2.0 / width
        theta[:, 1, 2] = shift[:, 1] * 2.0 / height
        out = _warp(images, theta)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = mean + (out - mean) * uniform(*self.contrast).reshape(batch, 1, 1, 1)
        noise = torch.randn(out.shape, generator=generator, device=generator.device).to(out.device, out.dtype)
        out = (out + self.noise_std * noise).clamp(0.0, 1.0)
        return _cutout(out, self.cutout, generator)


def _warp(images: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _cutout(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Zero one ``size`` x ``size`` square per image, centred anywhere (it may leave the image)."""
    if size <= 0:
        return images
    batch, _, height, width = images.shape
    centres = torch.rand(batch, 2, generator=generator, device=generator.device).to(images.device)
    cy = (centres[:, 0] * height).floor().reshape(batch, 1, 1)
    cx = (centres[:, 1] * width).floor().reshape(batch, 1, 1)
    rows = torch.arange(height, device=images.device).reshape(1, height, 1)
    cols = torch.arange(width, device=images.device).reshape(1, 1, width)
    half = size // 2
    inside = ((rows - cy).abs() <= half) & ((cols - cx).abs() <= half)
    return images.masked_fill(inside.unsqueeze(1), 0.0)


def gray_to_tensor(images: np.ndarray, size: int) -> Tensor:
    """uint8 ``[N, H, W]`` images to float ``[N, 1, size, size]`` in ``[0, 1]`` (bilinear resize)."""
    tensor = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return tensor.clamp(0.0, 1.0)


@dataclass(frozen=True)
class ViewTransforms:
    """Per-image callables from an RGB ``PIL.Image`` to a normalised ``[3, size, size]`` tensor."""

    weak: Callable
    strong: Callable
    eval: Callable


def normalisation_for(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if dataset == "cifar10":
        return CIFAR10_MEAN, CIFAR10_STD
    if dataset == "cifar100":
        return CIFAR100_MEAN, CIFAR100_STD
    return IMAGENET_MEAN, IMAGENET_STD


def natural_transforms(dataset: str, size: int, small_images: bool) -> ViewTransforms:
    """Weak/strong/eval transforms for RGB images, ``size`` pixels square.

    ``small_images`` (CIFAR-like, already about ``size`` pixels): weak = horizontal flip + random
    crop after reflect-padding by 1/8 of the side; eval = resize to ``size``. Otherwise (photos of
    any size): weak = RandomResizedCrop + flip; eval = resize the short side + centre crop.
    Strong = weak + RandAugment(2, 10) + cutout, for both.
    """
    mean, std = normalisation_for(dataset)
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    cutout = T.RandomErasing(p=1.0, scale=CUTOUT_AREA, ratio=(1.0, 1.0), value=CUTOUT_FILL)
    if small_images:
        geometry = [
            T.Resize((size, size)),
            T.RandomHorizontalFlip(),
            T.RandomCrop(size, padding=max(1, round(size * PAD_CROP_FRACTION)), padding_mode="reflect"),
        ]
        evaluation = [T.Resize((size, size))]
    else:
        geometry = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        evaluation = [T.Resize(round(size / CENTER_CROP_RATIO)), T.CenterCrop(size)]
    randaugment = T.RandAugment(num_ops=RANDAUGMENT_OPS, magnitude=RANDAUGMENT_MAGNITUDE)
    return ViewTransforms(
        weak=T.Compose(geometry + to_tensor),
        strong=T.Compose(geometry + [randaugment, T.ToTensor(), cutout, T.Normalize(mean, std)]),
        eval=T.Compose(evaluation + to_tensor),
    )
