"""Debiased pseudo-labels from any teacher's logits: the dataset prior and the labels.

The core, :func:`debiased_pseudo_labels`, streams over row chunks of an ``[N, C]`` logit matrix
in two passes and never holds ``[N, C]`` in memory:

1. the dataset prior ``q = mean_i softmax(z_i)`` (:func:`clipdebias.debias.dataset_prior`);
2. per row, the debiased label and confidence ``max softmax(z - tau log q)``, the plain (raw)
   label and confidence ``max softmax(z)``, and ``selected = confidence >= threshold``.

The matrix is anything with ``shape``, ``ndim`` and row slicing: a memory-mapped ``.npy`` of a
teacher's logits (``--logits``), or :class:`ZeroShotLogits`, which computes
``scale * embeddings @ classifier.T`` one slice at a time from cached CLIP embeddings.
``tau = 0`` gives plain zero-shot labels. The files made of them are in
:mod:`clipdebias.pseudolabels.files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from clipdebias.config import defaults
from clipdebias.debias import dataset_prior, debias_logits, select_pseudo_labels
from clipdebias.metrics import known_accuracy
from clipdebias.utils.errors import UserError
from clipdebias.utils.progress import Progress

DEFAULT_TAU = defaults.TAU
DEFAULT_THRESHOLD = defaults.SELECT_THRESHOLD
DEFAULT_CHUNK_ROWS = defaults.CHUNK_ROWS


class LogitRows(Protocol):
    """An ``[N, C]`` matrix of logits read by row slices (``numpy.memmap``, tensor, :class:`ZeroShotLogits`)."""

    shape: tuple[int, ...]
    ndim: int

    def __getitem__(self, rows: slice) -> np.ndarray | torch.Tensor: ...


class ZeroShotLogits:
    """``scale * embeddings @ classifier.T``, computed for one row slice at a time.

    ``embeddings``: ``[N, D]`` float32 (a memory-mapped view is fine), ``classifier``: ``[C, D]``.
    """

    ndim = 2

    def __init__(
        self, embeddings: np.ndarray, classifier: torch.Tensor, scale: float, device: str | torch.device = "cpu"
    ):
        if embeddings.ndim != 2 or embeddings.shape[1] != classifier.shape[1]:
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} and classifier {tuple(classifier.shape)} do not match"
            )
        self.embeddings = embeddings
        self.device = torch.device(device)
        self.scale = float(scale)
        self.classifier_t = (self.scale * classifier.to(self.device, torch.float32)).T.contiguous()  # scale folded in
        self.shape = (int(embeddings.shape[0]), int(classifier.shape[0]))

    def __getitem__(self, rows: slice) -> torch.Tensor:
        chunk = torch.from_numpy(np.array(self.embeddings[rows], dtype=np.float32)).to(self.device)
        return chunk @ self.classifier_t


class FiniteRows:
    """A :class:`LogitRows` over a numpy matrix that raises :class:`UserError` at the first row holding
    NaN or an infinity, checked as the rows are read (no extra pass over a large file)."""

    ndim = 2

    def __init__(self, rows: np.ndarray, name: str):
        self.rows, self.name, self.shape = rows, name, tuple(rows.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        chunk = self.rows[rows]
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0]) + (rows.start or 0)
            raise UserError(
                f"{self.name}: row {first} holds NaN or infinite values; every logit must be a finite number"
            )
        return chunk


class ReportingRows:
    """A :class:`LogitRows` that reports each pass over its rows as a progress stage."""

    ndim = 2
    STAGES = ("class prior (pass 1/2)", "pseudo-labels (pass 2/2)")

    def __init__(self, rows: LogitRows, progress: Progress):
        self.rows = rows
        self.shape = tuple(rows.shape)
        self.progress = progress
        self.passes = 0

    def __getitem__(self, rows: slice) -> np.ndarray | torch.Tensor:
        chunk = self.rows[rows]  # first: a bad first chunk fails before a bar is drawn
        if not rows.start:
            self.progress.start(self.STAGES[min(self.passes, len(self.STAGES) - 1)], self.shape[0])
            self.passes += 1
        self.progress.advance(int(chunk.shape[0]))
        return chunk


@dataclass(frozen=True)
class PseudoLabels:
    """Per logit row: debiased ``label``/``confidence``, plain ``raw_label``/``raw_confidence`` and
    ``selected`` (``confidence >= threshold``); ``prior`` is the dataset prior ``q`` (``[C]``).
    With ``top_k``: ``ranked_label`` / ``ranked_prob`` (``[N, k]``) are the ``k`` most probable
    classes of ``softmax(z - tau log q)`` and their probabilities, most probable first."""

    prior: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    raw_label: np.ndarray
    raw_confidence: np.ndarray
    selected: np.ndarray
    tau: float
    threshold: float
    ranked_label: np.ndarray | None = None
    ranked_prob: np.ndarray | None = None


def _as_tensor(chunk: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(chunk, np.ndarray):
        return torch.from_numpy(np.array(chunk, dtype=np.float32))
    return chunk.float()


def debiased_pseudo_labels(
    logits: LogitRows,
    tau: float = DEFAULT_TAU,
    threshold: float = DEFAULT_THRESHOLD,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    top_k: int = 0,
) -> PseudoLabels:
    """Two streaming passes over ``logits`` (see the module docstring); memory is O(chunk_rows x C).
    ``top_k`` > 0 also keeps the ``min(top_k, C)`` most probable debiased classes of every row."""
    if top_k < 0:
        raise ValueError(f"top_k must be 0 or more, got {top_k}")
    if tau < 0:
        raise ValueError(f"tau must be 0 or more (0 = plain zero-shot), got {tau}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise UserError(f"logits must have shape [N, C] with N >= 1 and C >= 2, got {tuple(logits.shape)}")
    prior = dataset_prior(logits, chunk_size=chunk_rows)
    if not torch.isfinite(prior).all():
        raise UserError("the logits contain NaN or infinite values")
    rows = logits.shape[0]
    label = np.empty(rows, np.int64)
    raw_label = np.empty(rows, np.int64)
    confidence = np.empty(rows, np.float32)
    raw_confidence = np.empty(rows, np.float32)
    selected = np.empty(rows, bool)
    k = min(top_k, logits.shape[1])
    ranked_label = np.empty((rows, k), np.int32) if k else None
    ranked_prob = np.empty((rows, k), np.float32) if k else None
    for start in range(0, rows, chunk_rows):
        chunk = _as_tensor(logits[start : start + chunk_rows])
        part = slice(start, start + chunk.shape[0])
        targets, conf, mask = select_pseudo_labels(chunk, prior, tau, threshold)
        raw_conf, raw_targets = torch.softmax(chunk, dim=-1).max(dim=-1)
        label[part], confidence[part], selected[part] = (
            targets.cpu().numpy(),
            conf.cpu().numpy(),
            mask.cpu().numpy() > 0,
        )
        raw_label[part], raw_confidence[part] = raw_targets.cpu().numpy(), raw_conf.cpu().numpy()
        if k:
            probs, classes = torch.softmax(debias_logits(chunk, prior, tau), dim=-1).topk(k, dim=-1)
            ranked_label[part], ranked_prob[part] = classes.cpu().numpy(), probs.cpu().numpy()
    return PseudoLabels(
        prior.cpu().numpy(),
        label,
        confidence,
        raw_label,
        raw_confidence,
        selected,
        float(tau),
        float(threshold),
        ranked_label,
        ranked_prob,
    )


@dataclass(frozen=True)
class PseudoLabelSummary:
    """Numbers for the terminal summary and the JSON sidecar. Accuracies in percent; ``None``
    where no row has a known label."""

    num_rows: int
    num_selected: int
    zeroshot_top1: float | None
    zeroshot_debiased_top1: float | None
    selected_top1: float | None
    raw_counts: np.ndarray
    counts: np.ndarray
    selected_counts: np.ndarray


def summarize(result: PseudoLabels, truth: np.ndarray, num_classes: int) -> PseudoLabelSummary:
    """``truth``: ground-truth labels of the logit rows (``-1`` = unknown)."""
    truth, selected = np.asarray(truth), result.selected
    return PseudoLabelSummary(
        num_rows=len(result.label),
        num_selected=int(selected.sum()),
        zeroshot_top1=known_accuracy(truth, result.raw_label),
        zeroshot_debiased_top1=known_accuracy(truth, result.label),
        selected_top1=known_accuracy(truth[selected], result.label[selected]),
        raw_counts=np.bincount(result.raw_label, minlength=num_classes),
        counts=np.bincount(result.label, minlength=num_classes),
        selected_counts=np.bincount(result.label[result.selected], minlength=num_classes),
    )
