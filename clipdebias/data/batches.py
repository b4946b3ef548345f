"""The batches the training loop consumes, and the protocols of what produces them.

The data streams (:mod:`clipdebias.data.streams`, :mod:`clipdebias.training.embedding_streams`)
produce these; the loop (:mod:`clipdebias.training.loop`) consumes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from torch import Tensor, nn

from clipdebias.metrics import EvalResult


@dataclass(frozen=True)
class LabeledBatch:
    """Labeled inputs (already augmented, weak view), their targets and dataset indices."""

    inputs: Tensor
    targets: Tensor
    indices: Tensor


@dataclass(frozen=True)
class UnlabeledBatch:
    """Weak and strong views of the same unlabeled rows, their dataset indices, and their
    ground-truth labels (``-1`` when unknown; used only for statistics, never for training)."""

    weak: tuple[Tensor, ...]
    strong: tuple[Tensor, ...]
    indices: Tensor
    labels: Tensor


BatchT = TypeVar("BatchT", covariant=True)


class BatchStream(Protocol[BatchT]):
    """Yields ``steps`` batches for ``epoch``; the same epoch always yields the same batches."""

    def batches(self, epoch: int, steps: int) -> Iterator[BatchT]: ...


Evaluator = Callable[[nn.Module], EvalResult]
