"""Weak and strong views in embedding space, for students trained on frozen CLIP embeddings.

The ``head`` student of ``zeroshot`` never runs the image tower while it trains. Its views are
rows of cached embeddings:

- **augmented-view embeddings**, cached once: each train image is encoded ``K`` more times through
  :class:`clipdebias.clip.augmented_views.AugmentedView` (random resized crop, flip, colour jitter,
  grayscale), whose randomness is seeded by the image's own pixels and the view number, so the cache
  entry is the same however the encoding is chunked, resumed or spread over workers;
- **feature noise** (:class:`FeatureNoise`): dropout of embedding coordinates plus Gaussian noise,
  then L2 normalisation, applied a batch at a time on the training device.

The unlabeled stream gives weak = the plain (centre-crop) embedding and strong = one of the ``K``
augmented embeddings (drawn per row and step) with feature noise; with ``K = 0`` the strong view is
the plain embedding with feature noise. The labeled (confident) stream gives one of the plain and
the ``K`` augmented embeddings, without noise: FixMatch's weak augmentation of labeled images.
Batches follow :func:`clipdebias.data.streams.epoch_plan`, so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipdebias.data.batches import Evaluator, LabeledBatch, UnlabeledBatch
from clipdebias.data.streams import LABELED_STREAM, UNLABELED_STREAM, Shard, epoch_plan, global_eval_result
from clipdebias.metrics import EvalResult


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
    """Batches of cached embedding rows (a :class:`clipdebias.data.batches.BatchStream`).

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
        shard: Shard | None = None,
    ):
        if views.ndim != 3 or views.shape[1:] != plain.shape:
            raise ValueError(f"views must be [K, {plain.shape[0]}, {plain.shape[1]}], got {tuple(views.shape)}")
        self.plain, self.views, self.targets, self.ids, self.rows = plain, views, targets, ids, rows
        self.batch_size, self.seed, self.labeled, self.noise = batch_size, seed, labeled, noise
        self.stream = LABELED_STREAM if labeled else UNLABELED_STREAM
        self.part = (shard if shard is not None else Shard()).batch(batch_size)

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
    embeddings: Tensor, labels: Tensor, batch_size: int, num_classes: int, shard: Shard | None = None
) -> Evaluator:
    """Top-1/top-5/per-class accuracy of a model on cached evaluation embeddings (under torchrun each
    process evaluates its ``shard`` of the rows and the counts are summed)."""
    shard = shard if shard is not None else Shard()
    mine, mine_labels = shard.eval_rows(embeddings), shard.eval_rows(labels)  # views: no copy

    def evaluate(model: nn.Module) -> EvalResult:
        logits = [model(chunk).float().cpu() for chunk in mine.split(batch_size)]
        return global_eval_result(logits, [mine_labels] if logits else [], num_classes)

    return evaluate


def as_device_tensor(array: np.ndarray, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A numpy array (a memory-mapped one too) on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(array)).to(device=device, dtype=dtype)
