"""Small pure statistics over labels and pseudo-labels, as the reports show them.

Accuracies are percent (0-100), as everywhere in clipdebias's output files. A value that is not
defined (a class with no labeled row, no pseudo-label at all) is ``nan``, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """How many times each class ``0..num_classes-1`` occurs in ``labels`` (int64, length ``C``)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class count / smallest, the smallest floored at 1 (docs/formats.md); nan if all are 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0 or counts.max() <= 0:
        return math.nan
    return float(counts.max() / max(counts.min(), 1.0))


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Percent of rows where ``predictions == labels``; nan for no rows."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return math.nan
    return float(100.0 * np.mean(np.asarray(predictions) == labels))


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


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector (normalised first; zeros contribute 0)."""
    probs = np.asarray(probs, dtype=np.float64)
    total = probs.sum()
    if probs.size == 0 or not np.isfinite(total) or total <= 0:
        return math.nan
    probs = probs[probs > 0] / total
    return float(-(probs * np.log(probs)).sum())


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
