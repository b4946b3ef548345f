"""Accuracy and pseudo-label statistics: pure functions over tensors, no I/O.

Accuracies are percent (0-100), rates are fractions (0-1), as in docs/formats.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def imbalance_ratio(counts: Iterable[int] | Tensor) -> float:
    """Largest class count / smallest class count, the smallest floored at 1
    (:func:`clipdebias.labelstats.imbalance_ratio`), and 0.0 when every count is 0 (no confident
    pseudo-label), so that ``metrics.json`` always holds a number.

    A class that never appears counts as 1, so the ratio stays finite and still grows with the
    largest class (``[50, 0, 10] -> 50.0``).
    """
    from clipdebias.labelstats import imbalance_ratio as ratio

    values = np.asarray(counts.tolist() if isinstance(counts, Tensor) else list(counts), dtype=np.int64)
    if values.size == 0:
        raise ValueError("imbalance_ratio needs at least one class count")
    value = ratio(values)
    return 0.0 if math.isnan(value) else value


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


def entropy(probs: Tensor) -> float:
    """Shannon entropy in nats of a probability vector."""
    p = probs.double().clamp_min(0)
    p = p / p.sum()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


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
        return imbalance_ratio(self.class_counts)

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
