"""Batch streams for the training loop, and the evaluation function, built in one place.

Every stream is *keyed by epoch*: the rows of epoch ``e`` are a function of ``(seed, stream,
e)`` only (concatenated random permutations of the stream's rows), and so is every image's
augmentation (each image gets its own seed in the plan). A resumed run therefore sees exactly the
batches an uninterrupted run would have seen, whatever the number of DataLoader workers.

Two kinds of data:

- grayscale arrays (digits): all images live as one tensor on the training device and the views
  are made a batch at a time (:class:`clipdebias.data.augment.GrayAugment`);
- RGB images (CIFAR arrays, image files): a ``DataLoader`` over the rows with per-image
  torchvision transforms (:func:`clipdebias.data.augment.natural_transforms`) in worker processes, with
  pinned memory on CUDA and ``prefetch_factor`` batches loaded ahead per worker.

Under torchrun the batch sizes are *global*: every rank draws the same epoch plan and keeps its
own contiguous part of each batch (:func:`clipdebias.utils.distributed.shard_slice`), like a
``DistributedSampler`` over the per-epoch index sequence. The ranks' parts together are exactly the
single-process batch, image seeds included, so a run's data does not depend on the number of
processes and a checkpoint resumes with another number of processes on the same batches.
Evaluation is split too (rank ``r`` takes every ``world``-th row from ``r``) and the counts are
summed over the ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import default_collate

from clipdebias.config import defaults
from clipdebias.data.augment import GrayAugment, gray_to_tensor, natural_transforms
from clipdebias.data.batches import Evaluator, LabeledBatch, UnlabeledBatch
from clipdebias.data.skipped import SkippedImage, SkippedImages
from clipdebias.data.sources import ArraySource, ImageSource, UnreadableImage
from clipdebias.metrics import EvalResult, eval_counts, eval_result_from_counts
from clipdebias.utils import distributed
from clipdebias.utils.errors import OptionError, UserError

# Stream identifiers mixed into the plan seeds, so the labeled and unlabeled streams differ.
LABELED_STREAM, UNLABELED_STREAM = 1, 2
_SEED_LIMIT = 2**63 - 1
DEFAULT_PREFETCH_FACTOR = defaults.PREFETCH_FACTOR


def epoch_plan(
    num_rows: int, batch_size: int, steps: int, seed: int, stream: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, seeds)``, both ``[steps, batch_size]``: which of the ``num_rows`` rows each batch
    holds (random permutations laid end to end, so every row appears before any repeats) and a seed
    for each drawn image's augmentation. A pure function of its arguments."""
    if num_rows < 1:
        raise ValueError("a batch stream needs at least one row")
    rng = np.random.default_rng([seed, stream, epoch])
    needed = steps * batch_size
    rounds = -(-needed // num_rows)
    positions = np.concatenate([rng.permutation(num_rows) for _ in range(rounds)])[:needed]
    seeds = rng.integers(0, _SEED_LIMIT, size=needed, dtype=np.int64)
    return positions.reshape(steps, batch_size), seeds.reshape(steps, batch_size)


@dataclass(frozen=True)
class StreamSpec:
    """How to batch and view the data (resolved options of the command)."""

    dataset: str
    batch_size: int
    mu: int
    views: int  # weak/strong views per unlabeled image: 1, or 2 with --multiviews
    seed: int
    image_size: int
    workers: int
    eval_batch_size: int
    prefetch_factor: int = DEFAULT_PREFETCH_FACTOR


RowsT = TypeVar("RowsT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Shard:
    """This process's part of every batch: rank ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        """The part of the initialised process group (the whole batch without one)."""
        return cls(distributed.rank() if distributed.is_distributed() else 0, distributed.world_size())

    def batch(self, global_size: int) -> slice:
        return distributed.shard_slice(global_size, self.rank, self.world)

    def eval_rows(self, rows: RowsT) -> RowsT:
        """Every ``world``-th of ``rows`` from ``rank`` on (a view of an array or a tensor)."""
        return rows[self.rank :: self.world]


@dataclass(frozen=True)
class Streams:
    labeled: GrayStream | LoaderStream
    unlabeled: GrayStream | LoaderStream
    evaluate: Evaluator
    in_channels: int
    skipped: SkippedImages = dataclasses.field(default_factory=SkippedImages)
    """The unreadable images met while loading (none for in-memory datasets)."""


# --- grayscale arrays, augmented a batch at a time on the device --------------------------------


class GrayStream:
    """Batches of in-memory grayscale images (a ``[N, 1, H, W]`` tensor on the training device)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        rows: Tensor,
        batch_size: int,
        seed: int,
        stream: int,
        augment: GrayAugment,
        views: int = 0,
        shard: Shard = Shard(),
    ):
        self.images, self.labels, self.rows = images, labels, rows
        self.batch_size, self.seed, self.stream = batch_size, seed, stream
        self.augment = augment
        self.views = views  # 0: labeled stream (one weak view); n >= 1: n weak + n strong views
        self.part = shard.batch(batch_size)

    def batches(self, epoch: int, steps: int) -> Iterator[LabeledBatch | UnlabeledBatch]:
        """Views are drawn for the whole global batch (one generator per epoch, as with a single
        process) and each rank keeps its part: cheap for small grayscale images, and exact."""
        positions, seeds = epoch_plan(len(self.rows), self.batch_size, steps, self.seed, self.stream, epoch)
        generator = torch.Generator(device=self.images.device)
        generator.manual_seed(int(seeds[0, 0]))
        plan = torch.as_tensor(positions, device=self.images.device)
        part = self.part
        for chosen in plan:
            images = self.images[chosen]
            mine = chosen[part]
            if self.views == 0:
                yield LabeledBatch(self.augment.weak(images, generator)[part], self.labels[mine], self.rows[mine])
            else:
                weak = tuple(self.augment.weak(images, generator)[part] for _ in range(self.views))
                strong = tuple(self.augment.strong(images, generator)[part] for _ in range(self.views))
                yield UnlabeledBatch(weak, strong, self.rows[mine], self.labels[mine])


def global_eval_result(logits: list[Tensor], labels: list[Tensor], num_classes: int) -> EvalResult:
    """The evaluation result of every rank's rows together (this rank's may be none)."""
    if logits:
        counts = eval_counts(torch.cat(logits), torch.cat(labels))
    else:
        counts = torch.zeros(2 * num_classes + 1, dtype=torch.long)
    counts = distributed.all_reduce_sum(counts)
    if int(counts[:num_classes].sum()) == 0:
        raise UserError("no image of the evaluation split could be read")
    return eval_result_from_counts(counts)


def _gray_streams(
    train: ArraySource,
    labeled: np.ndarray,
    unlabeled: np.ndarray,
    evaluation: ImageSource,
    eval_rows: np.ndarray,
    spec: StreamSpec,
    device: torch.device,
    shard: Shard,
) -> Streams:
    augment = GrayAugment()
    images = gray_to_tensor(train.images, spec.image_size).to(device)
    labels = torch.as_tensor(train.labels, device=device)

    def stream(rows: np.ndarray, batch_size: int, tag: int, views: int) -> GrayStream:
        index = torch.as_tensor(rows, device=device)
        return GrayStream(images[index], labels[index], index, batch_size, spec.seed, tag, augment, views, shard)

    if not isinstance(evaluation, ArraySource) or evaluation.images.ndim != 3:
        raise ValueError("grayscale training data needs a grayscale evaluation split")
    mine = shard.eval_rows(eval_rows)
    eval_images = gray_to_tensor(evaluation.images[mine], spec.image_size).to(device)
    eval_labels = torch.as_tensor(evaluation.labels[mine])

    def evaluate(model: nn.Module) -> EvalResult:
        logits = [model(chunk).float().cpu() for chunk in eval_images.split(spec.eval_batch_size)]
        return global_eval_result(logits, [eval_labels] if logits else [], train.num_classes)

    return Streams(
        labeled=stream(labeled, spec.batch_size, LABELED_STREAM, 0),
        unlabeled=stream(unlabeled, spec.batch_size * spec.mu, UNLABELED_STREAM, spec.views),
        evaluate=evaluate,
        in_channels=1,
    )


# --- RGB images through a DataLoader ----------------------------------------------------------


class _PlanBatches:
    """A batch sampler that yields the ``(row position, image seed)`` pairs of one epoch's plan.

    The main process iterates it, so setting ``epoch``/``steps`` before ``iter(loader)`` works with
    persistent workers too.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, stream: int, shard: Shard = Shard()):
        self.num_rows, self.batch_size, self.seed, self.stream = num_rows, batch_size, seed, stream
        self.part = shard.batch(batch_size)
        self.epoch, self.steps = 0, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        positions, seeds = epoch_plan(self.num_rows, self.batch_size, self.steps, self.seed, self.stream, self.epoch)
        for batch_positions, batch_seeds in zip(positions[:, self.part].tolist(), seeds[:, self.part].tolist()):
            yield list(zip(batch_positions, batch_seeds))

    def __len__(self) -> int:
        return self.steps


Unreadable = tuple[tuple[int, str], ...]
"""``(dataset index, reason)`` of the unreadable images a dataset item met (usually none)."""


class _ViewDataset(torch.utils.data.Dataset):
    """Row ``(position, seed)`` -> ``(view_1, ..., view_k, dataset index, label, unreadable)``; the
    views are drawn under ``torch.manual_seed(seed)`` in a forked RNG, so they depend on the seed alone.

    An image that cannot be read is replaced by the next readable row of the stream (cyclically),
    with the same seed, and reported in ``unreadable``: which row replaces which depends only on the
    position and the files, so a resumed run, or one with other workers, sees the same batches.
    """

    def __init__(self, source: ImageSource, rows: np.ndarray, transforms: Sequence[Callable], name: str = "training"):
        self.source, self.rows, self.transforms, self.name = source, rows, tuple(transforms), name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        position, seed = key
        index, image, unreadable = self._readable(position)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = [transform(image) for transform in self.transforms]
        return (*views, index, int(self.source.labels[index]), unreadable)

    def _readable(self, position: int) -> tuple[int, Image.Image, Unreadable]:
        count = len(self.rows)
        index, image, unreadable = _first_readable(
            self.source, (self.rows[(position + k) % count] for k in range(count))
        )
        if index is None:
            raise _none_readable(self.source, self.name, unreadable)
        return index, image, tuple(unreadable)


def _first_readable(
    source: ImageSource, indices: Iterable[Any]
) -> tuple[int | None, Image.Image | None, list[tuple[int, str]]]:
    """The first of ``indices`` whose image can be read, that image, and the unreadable ones met
    before it as ``(index, reason)``; the index is ``None`` when none can be read."""
    unreadable: list[tuple[int, str]] = []
    for index in map(int, indices):
        try:
            return index, source.load(index), unreadable
        except UnreadableImage as err:
            unreadable.append((index, err.reason))
    return None, None, unreadable


def _none_readable(source: ImageSource, name: str, unreadable: Sequence[tuple[int, str]]) -> UserError:
    first, reason = unreadable[0]
    return UserError(f"none of the {len(unreadable)} {name} images can be read (first: {source.path(first)}: {reason})")


def check_some_readable(source: ImageSource, rows: np.ndarray, name: str) -> None:
    """Raise :class:`UserError` unless one of ``rows`` can be read: trying them in order stops at
    the first readable image (the first row, normally), so a folder of nothing but broken files
    fails before training starts instead of at its first batch."""
    if isinstance(source, ArraySource):
        return
    index, _, unreadable = _first_readable(source, rows)
    if index is None:
        raise _none_readable(source, name, unreadable)


class _EvalDataset(torch.utils.data.Dataset):
    """Position -> ``(view, label, readable, unreadable)``: an unreadable image gives a blank view
    with ``readable`` false, which the evaluation leaves out."""

    def __init__(self, source: ImageSource, rows: np.ndarray, transform: Callable, size: int):
        self.source, self.rows, self.transform, self.size = source, rows, transform, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[Tensor, int, bool, Unreadable]:
        index = int(self.rows[position])
        label = int(self.source.labels[index])
        try:
            image = self.source.load(index)
        except UnreadableImage as err:
            return torch.zeros(3, self.size, self.size), label, False, ((index, err.reason),)
        return self.transform(image), label, True, ()


def _collate(items: list[tuple]) -> list:
    """Default collation of every field but the last, the ``unreadable`` pairs of all items as one list."""
    batch = default_collate([item[:-1] for item in items])
    return [*batch, [pair for item in items for pair in item[-1]]]


def _report(skipped: SkippedImages, source: ImageSource, unreadable: Sequence[Sequence[Any]]) -> None:
    for index, reason in unreadable:
        skipped.add(SkippedImage(source.split, int(index), source.path(int(index)), str(reason)))


def _one_line(err: Exception) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback: keep its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.split("UserError: ", 1)[-1]


class LoaderStream:
    """Batches of RGB images from a ``DataLoader`` whose batch sampler follows :func:`epoch_plan`."""

    def __init__(
        self,
        dataset: _ViewDataset,
        sampler: _PlanBatches,
        weak_views: int,
        labeled: bool,
        workers: int,
        device: torch.device,
        prefetch_factor: int = DEFAULT_PREFETCH_FACTOR,
        skipped: SkippedImages | None = None,
    ):
        self.sampler, self.weak_views, self.labeled, self.device = sampler, weak_views, labeled, device
        self.source = dataset.source
        self.skipped = skipped if skipped is not None else SkippedImages()
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=_collate, **_loader_options(workers, device, prefetch_factor)
        )

    def batches(self, epoch: int, steps: int) -> Iterator[LabeledBatch | UnlabeledBatch]:
        self.sampler.epoch, self.sampler.steps = epoch, steps
        try:
            for *tensors, unreadable in self.loader:
                _report(self.skipped, self.source, unreadable)
                *views, indices, labels = (t.to(self.device, non_blocking=True) for t in tensors)
                if self.labeled:
                    yield LabeledBatch(views[0], labels, indices)
                else:
                    yield UnlabeledBatch(
                        tuple(views[: self.weak_views]), tuple(views[self.weak_views :]), indices, labels
                    )
        except UserError as err:
            raise UserError(_one_line(err)) from err


def _loader_options(workers: int, device: torch.device, prefetch_factor: int) -> dict:
    """DataLoader keywords: worker processes kept between epochs, batches prefetched per worker,
    page-locked (pinned) host memory for asynchronous copies to a GPU."""
    options: dict = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return options


def _natural_streams(
    train: ImageSource,
    labeled: np.ndarray,
    unlabeled: np.ndarray,
    evaluation: ImageSource,
    eval_rows: np.ndarray,
    spec: StreamSpec,
    device: torch.device,
    shard: Shard,
    skipped: SkippedImages,
) -> Streams:
    transforms = natural_transforms(spec.dataset, spec.image_size, small_images=isinstance(train, ArraySource))

    def stream(
        rows: np.ndarray, batch_size: int, tag: int, views: tuple[Callable, ...], weak_views: int
    ) -> LoaderStream:
        name = "labeled" if tag == LABELED_STREAM else "unlabeled"
        check_some_readable(train, rows, name)
        sampler = _PlanBatches(len(rows), batch_size, spec.seed, tag, shard)
        return LoaderStream(
            _ViewDataset(train, rows, views, name),
            sampler,
            weak_views,
            tag == LABELED_STREAM,
            spec.workers,
            device,
            spec.prefetch_factor,
            skipped,
        )

    check_some_readable(evaluation, eval_rows, "evaluation")

    unlabeled_views = (transforms.weak,) * spec.views + (transforms.strong,) * spec.views
    mine = shard.eval_rows(eval_rows)
    eval_loader = torch.utils.data.DataLoader(
        _EvalDataset(evaluation, mine, transforms.eval, spec.image_size),
        batch_size=spec.eval_batch_size,
        shuffle=False,
        collate_fn=_collate,
        **_loader_options(spec.workers, device, spec.prefetch_factor),
    )

    def evaluate(model: nn.Module) -> EvalResult:
        logits, labels = [], []
        try:
            for images, targets, readable, unreadable in eval_loader:
                _report(skipped, evaluation, unreadable)
                if not readable.all():
                    images, targets = images[readable], targets[readable]
                if len(targets):
                    logits.append(model(images.to(device, non_blocking=True)).float().cpu())
                    labels.append(targets)
        except UserError as err:
            raise UserError(_one_line(err)) from err
        return global_eval_result(logits, labels, train.num_classes)

    return Streams(
        labeled=stream(labeled, spec.batch_size, LABELED_STREAM, (transforms.weak,), 1),
        unlabeled=stream(unlabeled, spec.batch_size * spec.mu, UNLABELED_STREAM, unlabeled_views, spec.views),
        evaluate=evaluate,
        in_channels=3,
        skipped=skipped,
    )


def build_streams(
    train: ImageSource,
    labeled: np.ndarray,
    unlabeled: np.ndarray,
    evaluation: ImageSource,
    eval_rows: np.ndarray,
    spec: StreamSpec,
    device: torch.device,
    skipped: SkippedImages | None = None,
) -> Streams:
    """The labeled and unlabeled streams over rows of ``train`` and the evaluator over rows of
    ``evaluation`` (every sampler and loader of a run is built here).

    Image files that cannot be read are skipped: a training row is replaced by the next readable
    row of its stream, an evaluation row is left out of the counts; each is added to ``skipped``
    (``streams.skipped``) as it is met.

    Under torchrun (an initialised process group) the streams yield this rank's part of every
    global batch and the evaluator returns the result over all ranks' rows; ``spec.batch_size`` is
    the global labeled batch and must be divisible by the number of processes.
    """
    if len(labeled) == 0 or len(unlabeled) == 0:
        raise UserError(
            f"training needs labeled and unlabeled images; got {len(labeled)} labeled and {len(unlabeled)} unlabeled"
        )
    if len(eval_rows) == 0:
        raise UserError("the evaluation split is empty")
    shard = Shard.current()
    if spec.batch_size % shard.world:
        raise OptionError(
            "batch_size",
            f"{spec.batch_size} is the global labeled batch of all {shard.world} processes and must be "
            f"divisible by {shard.world}",
        )
    skipped = skipped if skipped is not None else SkippedImages()
    if isinstance(train, ArraySource) and train.images.ndim == 3:
        streams = _gray_streams(train, labeled, unlabeled, evaluation, eval_rows, spec, device, shard)
        return dataclasses.replace(streams, skipped=skipped)
    return _natural_streams(train, labeled, unlabeled, evaluation, eval_rows, spec, device, shard, skipped)
