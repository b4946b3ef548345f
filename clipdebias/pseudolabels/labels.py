"""Debiased pseudo-labels from any teacher's logits: the dataset prior and the labels.

The core, :func:`debiased_pseudo_labels`, streams over row chunks of an ``[N, C]`` logit matrix.
With the paper's correction (``mode="paper"``) it takes two passes and never holds ``[N, C]``:

1. the dataset prior ``q = mean_i softmax(z_i)`` (the numbers of :func:`clipdebias.debias.dataset_prior`)
   and, from the same softmax, per row the plain (raw) label and confidence ``max softmax(z)``;
2. per row, the debiased label and confidence ``max softmax(z - tau log q)`` (as
   :func:`clipdebias.debias.select_pseudo_labels` computes them) and ``selected = confidence >= threshold``.

Each pass computes one softmax per chunk, into buffers allocated once
(:class:`~clipdebias.pseudolabels.rows.ChunkBuffers`): the work of the two matrix products and two
softmaxes that any two-pass method needs, and little more.

``mode="none"`` is the same with ``tau = 0`` (plain zero-shot labels). ``mode="balance"`` replaces
``tau log q`` by per-class offsets whose corrected marginal is a target prior
(:mod:`clipdebias.pseudolabels.balance`): estimated on a subsample held in memory, then polished by
passes over all the rows (the first of which also gives the plain labels and the prior).

The matrix is anything with ``shape``, ``ndim`` and row slicing (:mod:`clipdebias.pseudolabels.rows`):
a memory-mapped ``.npy`` of a teacher's logits (``--logits``), or ``ZeroShotLogits``, which computes
``scale * embeddings @ classifier.T`` one slice at a time from cached CLIP embeddings. The files made
of them are in :mod:`clipdebias.pseudolabels.files`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from clipdebias.config import defaults
from clipdebias.debias import log_prior
from clipdebias.metrics import known_accuracy
from clipdebias.pseudolabels.balance import (
    BalancedOffsets,
    StartingPoint,
    balance_offsets,
    check_target_prior,
    plain_and_corrected_pass,
    subsample_offsets,
)
from clipdebias.pseudolabels.rows import ChunkBuffers, LogitRows, ReportingRows
from clipdebias.utils.errors import UserError
from clipdebias.utils.progress import NoProgress, Progress

DEFAULT_TAU = defaults.TAU
DEFAULT_THRESHOLD = defaults.SELECT_THRESHOLD
DEFAULT_CHUNK_ROWS = defaults.CHUNK_ROWS


@dataclass(frozen=True)
class PseudoLabels:
    """Per logit row: corrected ``label``/``confidence`` (``mode``: ``paper``, ``balance`` or ``none``),
    plain ``raw_label``/``raw_confidence`` and ``selected`` (``confidence >= threshold``); ``prior`` is
    the dataset prior ``q`` (``[C]``). With ``top_k``: ``ranked_label`` / ``ranked_prob`` (``[N, k]``)
    are the ``k`` most probable classes of the corrected probabilities, most probable first.
    ``balance`` holds the balanced correction's offsets, the marginal they reach and the passes that
    took (``mode == "balance"`` only)."""

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
    mode: str = defaults.DEBIAS
    balance: BalancedOffsets | None = None
    target_prior: np.ndarray | None = None

    @property
    def correction(self) -> str:
        """The correction in a few words, for tables: ``debiased (tau 0.4)``, ``balanced (uniform prior)``."""
        if self.mode == "balance":
            return f"balanced ({'uniform' if self.target_prior is None else 'given'} prior)"
        if self.mode == "none":
            return "no correction"
        return f"debiased (tau {self.tau:g})"


PAPER_STAGES = ("class prior (pass 1/2)", "pseudo-labels (pass 2/2)")
SUBSAMPLE_STAGE = "balancing a subsample of the rows"
BALANCE_STAGES = ("class prior, plain labels and balancing (pass 1)", "balancing (pass {n})")


def debiased_pseudo_labels(
    logits: LogitRows,
    tau: float = DEFAULT_TAU,
    threshold: float = DEFAULT_THRESHOLD,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    top_k: int = 0,
    *,
    mode: str = defaults.DEBIAS,
    target_prior: np.ndarray | None = None,
    progress: Progress | None = None,
) -> PseudoLabels:
    """Pseudo-labels of ``logits`` corrected by ``mode``, streamed over row chunks.

    ``paper``: two passes (see the module docstring), memory O(chunk_rows x C); ``none`` is ``paper``
    with ``tau = 0``. ``balance``: offsets estimated on an evenly strided subsample of the rows held in
    memory (:func:`~clipdebias.pseudolabels.balance.subsample_offsets`), one pass for the plain labels,
    the dataset prior and the marginal at those offsets, then the passes of
    :func:`~clipdebias.pseudolabels.balance.balance_offsets` that polish them, the last of which labels
    the rows ``argmax(z - b)``; memory O(chunk_rows x C) plus the subsample (at most
    :data:`~clipdebias.pseudolabels.balance.SUBSAMPLE_VALUES` logits); ``tau`` does not apply. ``top_k`` > 0 also
    keeps the ``min(top_k, C)`` most probable corrected classes of every row. ``progress`` sees one
    stage per pass.
    """
    if mode not in defaults.DEBIAS_MODES:
        raise ValueError(f"unknown debias mode {mode!r}; choose one of: {', '.join(defaults.DEBIAS_MODES)}")
    if top_k < 0:
        raise ValueError(f"top_k must be 0 or more, got {top_k}")
    if tau < 0:
        raise ValueError(f"tau must be 0 or more (0 = plain zero-shot), got {tau}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise UserError(f"logits must have shape [N, C] with N >= 1 and C >= 2, got {tuple(logits.shape)}")
    k = min(top_k, int(logits.shape[1]))
    if mode == "balance":
        return _balanced(logits, threshold, chunk_rows, k, target_prior, progress or NoProgress())
    if target_prior is not None:
        raise ValueError("a target prior applies to the balance mode only")
    return _paper(logits, 0.0 if mode == "none" else tau, threshold, chunk_rows, k, mode, progress or NoProgress())


def _ranked(rows: int, k: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    return (np.empty((rows, k), np.int32), np.empty((rows, k), np.float32)) if k else (None, None)


def _paper(
    logits: LogitRows, tau: float, threshold: float, chunk_rows: int, k: int, mode: str, progress: Progress
) -> PseudoLabels:
    logits = ReportingRows(logits, progress, PAPER_STAGES)
    buffers = ChunkBuffers(logits, chunk_rows)
    prior, raw_label, raw_confidence = _prior_pass(logits, buffers, chunk_rows)
    if not torch.isfinite(prior).all():
        raise UserError("the logits contain NaN or infinite values")
    rows = logits.shape[0]
    label = np.empty(rows, np.int64)
    confidence = np.empty(rows, np.float32)
    ranked_label, ranked_prob = _ranked(rows, k)
    shift = (tau * log_prior(prior, buffers.logits.device)).to(buffers.logits.dtype)  # as debias_logits subtracts
    for start in range(0, rows, chunk_rows):
        chunk = buffers.read(logits, slice(start, start + chunk_rows)).sub_(shift)
        probs = buffers.softmax(chunk)  # softmax(z - tau log q), as select_pseudo_labels computes it
        part = slice(start, start + probs.shape[0])
        conf, targets = probs.max(dim=-1)
        label[part], confidence[part] = targets.cpu().numpy(), conf.cpu().numpy()
        if k:
            top, classes = probs.topk(k, dim=-1)
            ranked_label[part], ranked_prob[part] = classes.cpu().numpy(), top.cpu().numpy()
    return PseudoLabels(
        prior.cpu().numpy(),
        label,
        confidence,
        raw_label,
        raw_confidence,
        confidence >= threshold,
        float(tau),
        float(threshold),
        ranked_label,
        ranked_prob,
        mode=mode,
    )


def _prior_pass(
    logits: LogitRows, buffers: ChunkBuffers, chunk_rows: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The first pass: the dataset prior ``q`` (the numbers :func:`clipdebias.debias.dataset_prior`
    gives with ``chunk_size=chunk_rows``) and, from the same softmax, the plain label and confidence."""
    rows = logits.shape[0]
    raw_label, raw_confidence = np.empty(rows, np.int64), np.empty(rows, np.float32)
    total = torch.zeros(logits.shape[1], dtype=torch.float64)
    for start in range(0, rows, chunk_rows):
        probs = buffers.softmax(buffers.read(logits, slice(start, start + chunk_rows)))
        total += probs.sum(dim=0).to(device="cpu", dtype=torch.float64)
        conf, targets = probs.max(dim=-1)
        part = slice(start, start + probs.shape[0])
        raw_label[part], raw_confidence[part] = targets.cpu().numpy(), conf.cpu().numpy()
    mean = total / rows
    return (mean / mean.sum()).float(), raw_label, raw_confidence


def _balanced(
    logits: LogitRows,
    threshold: float,
    chunk_rows: int,
    k: int,
    target_prior: np.ndarray | None,
    progress: Progress,
) -> PseudoLabels:
    num_classes = int(logits.shape[1])
    target = check_target_prior(target_prior, num_classes) if target_prior is not None else None
    progress.start(SUBSAMPLE_STAGE, 1)
    estimate, sample_rows = subsample_offsets(logits, target, chunk_rows=chunk_rows)
    progress.advance(1)
    rows = ReportingRows(logits, progress, BALANCE_STAGES)
    start = torch.from_numpy(estimate.offsets)
    plain, first = plain_and_corrected_pass(rows, start, chunk_rows, k)
    result, final = balance_offsets(rows, target, chunk_rows=chunk_rows, top_k=k, start=StartingPoint(start, first))
    result = replace(result, subsample_rows=sample_rows, subsample_iterations=estimate.iterations)
    prior = plain.first / plain.first.sum()
    return PseudoLabels(
        prior.float().numpy(),
        final.label,
        final.confidence,
        plain.label,
        plain.confidence,
        final.confidence >= threshold,
        0.0,
        float(threshold),
        final.ranked_label,
        final.ranked_prob,
        mode="balance",
        balance=result,
        target_prior=target,
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
