"""Label statistics and evaluation metrics: pure functions over arrays and tensors, no I/O.

Accuracies are percent (0-100), rates are fractions (0-1), as everywhere in clipdebias's output
files (docs/formats.md). The statistics over numpy arrays, as the reports show them, return ``nan``
for a value that is not defined (a class with no labeled row, no pseudo-label at all), never an
exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# --- label statistics ----------------------------------------------------------------------------


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """How many times each class ``0..num_classes-1`` occurs in ``labels`` (int64, length ``C``)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def imbalance_ratio(counts: Iterable[float] | np.ndarray | Tensor, all_zero: float = math.nan) -> float:
    """Largest class count / smallest class count, the smallest floored at 1 (docs/formats.md);
    ``all_zero`` when no class has a positive count (nan unless given: ``metrics.json`` records 0.0
    for no confident pseudo-label, see :class:`PseudoLabelStats`, so that it always holds a number).

    A class that never appears counts as 1, so the ratio stays finite and still grows with the
    largest class (``[50, 0, 10] -> 50.0``).
    """
    if isinstance(counts, Tensor):
        counts = counts.tolist()
    values = np.asarray(counts if isinstance(counts, np.ndarray) else list(counts), dtype=np.float64)
    if values.size == 0 or values.max() <= 0:
        return all_zero
    return float(values.max() / max(values.min(), 1.0))


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Percent of rows where ``predictions == labels``; nan for no rows."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return math.nan
    return float(100.0 * np.mean(np.asarray(predictions) == labels))


def known_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float | None:
    """:func:`accuracy` over the rows with a known label (``labels >= 0``; ``-1`` = unknown);
    ``None`` when no row has one (as ``metrics.json`` and the pseudo-label sidecar record it)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    known = labels >= 0
    return accuracy(labels[known], predictions[known]) if known.any() else None


def per_class_recall(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class accuracy (recall) in percent: of the rows of class ``c``, how many are predicted ``c``.

    ``nan`` for a class without labeled rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    hits = class_counts(labels[np.asarray(predictions) == labels], num_classes).astype(np.float64)
    totals = class_counts(labels, num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * hits / totals, np.nan)


def per_class_precision(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class precision in percent: of the rows predicted ``c``, how many are of class ``c``.

    ``nan`` for a class that is never predicted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    hits = class_counts(predictions[predictions == labels], num_classes).astype(np.float64)
    totals = class_counts(predictions, num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * hits / totals, np.nan)


def array_entropy(probs: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector read from a file (normalised first; zeros
    contribute 0); nan for an empty vector or one whose sum is not a positive number."""
    probs = np.asarray(probs, dtype=np.float64)
    total = probs.sum()
    if probs.size == 0 or not np.isfinite(total) or total <= 0:
        return math.nan
    probs = probs[probs > 0] / total
    return float(-(probs * np.log(probs)).sum())


def entropy(probs: Tensor) -> float:
    """Shannon entropy in nats of a probability tensor (a class prior), in float64: negative values
    count as 0, the rest is normalised."""
    p = probs.double().clamp_min(0)
    p = p / p.sum()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the finite values; std is nan for one value."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    if finite.size == 1:
        return float(finite[0]), math.nan
    return float(finite.mean()), float(finite.std(ddof=1))


def median(values: Sequence[float | None]) -> float:
    """Median of the finite values; nan for none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


# --- evaluation ----------------------------------------------------------------------------------


def topk_correct(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """Boolean ``[N]``: is ``targets[i]`` among the ``k`` largest logits of row ``i``.

    ``k`` is capped at the number of classes (top-5 of a 3-class problem is top-3).
    """
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == targets.reshape(-1, 1)).any(dim=-1)


def per_class_accuracy(predictions: Tensor, targets: Tensor, num_classes: int) -> list[float | None]:
    """Top-1 accuracy (percent) of every class; ``None`` for a class absent from ``targets``."""
    predictions, targets = predictions.reshape(-1).cpu(), targets.reshape(-1).cpu()
    totals = torch.bincount(targets, minlength=num_classes)
    correct = torch.bincount(targets[predictions == targets], minlength=num_classes)
    return [100.0 * int(c) / int(t) if t > 0 else None for c, t in zip(correct, totals)]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of a model on an evaluation split."""

    top1: float
    top5: float
    per_class_top1: list[float | None]
    count: int


def eval_counts(logits: Tensor, targets: Tensor) -> Tensor:
    """The counts an :class:`EvalResult` is made of, as one int64 tensor ``[2 C + 1]``: images per
    class, top-1 hits per class, top-5 hits in all. Counts of disjoint parts of a split add up, so
    several processes can each count their part and sum (all-reduce) the counts."""
    num_classes = logits.shape[-1]
    logits, targets = logits.float().cpu(), targets.long().cpu().reshape(-1)
    hits = targets[topk_correct(logits, targets, 1)]
    return torch.cat(
        [
            torch.bincount(targets, minlength=num_classes),
            torch.bincount(hits, minlength=num_classes),
            topk_correct(logits, targets, 5).sum().reshape(1),
        ]
    )


def eval_result_from_counts(counts: Tensor) -> EvalResult:
    """The :class:`EvalResult` of :func:`eval_counts` (possibly summed over several parts)."""
    values = [int(v) for v in counts.reshape(-1).tolist()]
    num_classes = (len(values) - 1) // 2
    totals, correct, top5 = values[:num_classes], values[num_classes : 2 * num_classes], values[-1]
    count = sum(totals)
    if count == 0:
        raise ValueError("cannot evaluate on an empty split")
    per_class = [100.0 * c / t if t > 0 else None for c, t in zip(correct, totals)]
    return EvalResult(
        top1=100.0 * sum(correct) / count, top5=100.0 * top5 / count, per_class_top1=per_class, count=count
    )


def eval_result(logits: Tensor, targets: Tensor) -> EvalResult:
    """Top-1, top-5 and per-class top-1 (percent) from logits ``[N, C]`` and labels ``[N]``."""
    if logits.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty split")
    return eval_result_from_counts(eval_counts(logits, targets))


# --- pseudo-labels during training ---------------------------------------------------------------


@dataclass(frozen=True)
class PseudoLabelStats:
    """The confident (mask = 1) pseudo-labels of the unlabeled rows seen over some steps.

    A row seen in several steps counts once per step. ``accuracy`` is ``None`` when no confident
    row had a known ground-truth label.
    """

    rows: int
    confident: int
    correct: int
    known: int
    class_counts: list[int]

    @property
    def mask_rate(self) -> float:
        return self.confident / self.rows if self.rows else 0.0

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / self.known if self.known else None

    @property
    def imbalance_ratio(self) -> float:
        return imbalance_ratio(self.class_counts, all_zero=0.0)

    def as_dict(self) -> dict:
        """The ``pseudo_labels`` object of ``metrics.json``."""
        return {
            "mask_rate": self.mask_rate,
            "accuracy": self.accuracy,
            "class_counts": list(self.class_counts),
            "imbalance_ratio": self.imbalance_ratio,
        }


class PseudoLabelCounter:
    """Accumulates :class:`PseudoLabelStats` step by step, on the device, without syncing."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self._counts = torch.zeros(num_classes, dtype=torch.long, device=device)
        self._totals = torch.zeros(4, dtype=torch.long, device=device)  # rows, confident, correct, known

    @torch.no_grad()
    def add(self, targets: Tensor, mask: Tensor, labels: Tensor) -> None:
        """``targets`` pseudo-labels ``[B]``, ``mask`` 0/1 ``[B]``, ``labels`` ground truth (-1 unknown)."""
        selected = mask.reshape(-1) > 0
        chosen = targets.reshape(-1)[selected]
        truth = labels.reshape(-1).to(chosen.device)[selected]
        known = truth >= 0
        self._counts += torch.bincount(chosen, minlength=self.num_classes)
        self._totals += torch.stack(
            [
                torch.tensor(mask.numel(), device=self._totals.device),
                selected.sum(),
                (chosen[known] == truth[known]).sum(),
                known.sum(),
            ]
        ).to(self._totals.device)

    def result(self, reduce: Callable[[Tensor], Tensor] | None = None) -> PseudoLabelStats:
        """The statistics so far; ``reduce`` (e.g. :func:`clipdebias.utils.distributed.all_reduce_sum`)
        sums the counts of all processes first."""
        values = torch.cat([self._totals, self._counts])
        if reduce is not None:
            values = reduce(values)
        rows, confident, correct, known = (int(v) for v in values[:4].tolist())
        return PseudoLabelStats(rows, confident, correct, known, [int(c) for c in values[4:].tolist()])
