"""Weak and strong views in embedding space, for students trained on frozen CLIP embeddings.

The ``head`` student of ``zeroshot`` never runs the image tower while it trains. Its views are
rows of cached embeddings:

- **augmented-view embeddings**, cached once: each train image is encoded ``K`` more times through
  :class:`AugmentedView` (random resized crop, flip, colour jitter, grayscale), whose randomness is
  seeded by the image's own pixels and the view number, so the cache entry is the same however the
  encoding is chunked, resumed or spread over workers;
- **feature noise** (:class:`FeatureNoise`): dropout of embedding coordinates plus Gaussian noise,
  then L2 normalisation, applied a batch at a time on the training device.

The unlabeled stream gives weak = the plain (centre-crop) embedding and strong = one of the ``K``
augmented embeddings (drawn per row and step) with feature noise; with ``K = 0`` the strong view is
the plain embedding with feature noise. The labeled (confident) stream gives one of the plain and
the ``K`` augmented embeddings, without noise: FixMatch's weak augmentation of labeled images.
Batches follow :func:`clipdebias.data.streams.epoch_plan`, so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipdebias.data.batches import Evaluator, LabeledBatch, UnlabeledBatch
from clipdebias.data.streams import LABELED_STREAM, UNLABELED_STREAM, Shard, epoch_plan, global_eval_result
from clipdebias.metrics import EvalResult

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
        from torchvision import transforms as T

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

    def seed(self, image: Any) -> int:
        digest = hashlib.blake2b(digest_size=8, key=self.view.to_bytes(8, "little"))
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
        return int.from_bytes(digest.digest(), "little") & (2**63 - 1)

    def __call__(self, image: Any) -> Tensor:
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


@dataclass(frozen=True)
class FeatureNoise:
    """Strong-view noise on embedding rows: zero each coordinate with probability ``dropout`` (and
    scale the rest by ``1 / (1 - dropout)``), add Gaussian noise whose expected norm is ``noise``
    times the row's norm, then L2-normalise."""

    dropout: float
    noise: float

    def __call__(self, rows: Tensor, generator: torch.Generator) -> Tensor:
        out = rows
        if self.dropout > 0:
            keep = torch.rand(rows.shape, generator=generator, device=generator.device) >= self.dropout
            out = out * keep.to(rows.device, rows.dtype) / (1.0 - self.dropout)
        if self.noise > 0:
            gauss = torch.randn(rows.shape, generator=generator, device=generator.device).to(rows.device, rows.dtype)
            scale = self.noise * rows.norm(dim=-1, keepdim=True) / rows.shape[-1] ** 0.5
            out = out + gauss * scale
        return F.normalize(out, dim=-1)


class EmbeddingStream:
    """Batches of cached embedding rows (a :class:`clipdebias.training.loop.BatchStream`).

    ``plain`` ``[N, D]`` and ``views`` ``[K, N, D]`` (``K`` may be 0) live on the training device;
    ``rows`` are the positions (into those arrays) this stream draws from, ``targets`` ``[N]`` the
    labels it yields (labeled stream: CLIP's labels; unlabeled stream: ground truth or -1, for
    statistics only) and ``ids`` ``[N]`` the dataset index of every row. Under torchrun every
    process draws the views of the whole global batch (one generator, as a single process does) and
    keeps its ``shard`` of it, so the batches are those of one process, split.
    """

    def __init__(
        self,
        plain: Tensor,
        views: Tensor,
        targets: Tensor,
        ids: Tensor,
        rows: Tensor,
        batch_size: int,
        seed: int,
        labeled: bool,
        noise: FeatureNoise,
        shard: Shard = Shard(),
    ):
        if views.ndim != 3 or views.shape[1:] != plain.shape:
            raise ValueError(f"views must be [K, {plain.shape[0]}, {plain.shape[1]}], got {tuple(views.shape)}")
        self.plain, self.views, self.targets, self.ids, self.rows = plain, views, targets, ids, rows
        self.batch_size, self.seed, self.labeled, self.noise = batch_size, seed, labeled, noise
        self.stream = LABELED_STREAM if labeled else UNLABELED_STREAM
        self.part = shard.batch(batch_size)

    def _random_view(self, chosen: Tensor, generator: torch.Generator, include_plain: bool) -> Tensor:
        """One embedding per row: a random augmented view (or, with ``include_plain``, the plain one too)."""
        count = self.views.shape[0]
        if count == 0:
            return self.plain[chosen]
        low = 0 if include_plain else 1
        pick = torch.randint(low, count + 1, (len(chosen),), generator=generator, device=generator.device)
        pick = pick.to(self.plain.device)
        augmented = self.views[(pick - 1).clamp_min(0), chosen]
        return torch.where((pick == 0).unsqueeze(1), self.plain[chosen], augmented)

    def batches(self, epoch: int, steps: int) -> Iterator[LabeledBatch | UnlabeledBatch]:
        positions, seeds = epoch_plan(len(self.rows), self.batch_size, steps, self.seed, self.stream, epoch)
        generator = torch.Generator(device=self.plain.device)
        generator.manual_seed(int(seeds[0, 0]))
        part = self.part
        for batch in torch.as_tensor(positions, device=self.rows.device):
            chosen = self.rows[batch]
            mine = chosen[part]
            if self.labeled:
                views = self._random_view(chosen, generator, True)[part]
                yield LabeledBatch(views, self.targets[mine], self.ids[mine])
            else:
                strong = self.noise(self._random_view(chosen, generator, False), generator)[part]
                yield UnlabeledBatch((self.plain[mine],), (strong,), self.ids[mine], self.targets[mine])


def embedding_evaluator(
    embeddings: Tensor, labels: Tensor, batch_size: int, num_classes: int, shard: Shard = Shard()
) -> Evaluator:
    """Top-1/top-5/per-class accuracy of a model on cached evaluation embeddings (under torchrun each
    process evaluates its ``shard`` of the rows and the counts are summed)."""
    mine, mine_labels = shard.eval_rows(embeddings), shard.eval_rows(labels)  # views: no copy

    def evaluate(model: nn.Module) -> EvalResult:
        logits = [model(chunk).float().cpu() for chunk in mine.split(batch_size)]
        return global_eval_result(logits, [mine_labels] if logits else [], num_classes)

    return evaluate


def as_device_tensor(array: np.ndarray, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A numpy array (a memory-mapped one too) on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(array)).to(device=device, dtype=dtype)
