"""The balanced correction of zero-shot logits: per-class offsets that make the pseudo-labels follow a
target class prior.

The paper's correction subtracts ``tau * log q`` (``q``: the mean softmax over the dataset) with a fixed
``tau``; on a strongly biased teacher it leaves most of the bias in place. The balanced correction
instead finds offsets ``b`` (one per class) such that the corrected posteriors' marginal equals the
target prior ``pi`` (uniform unless given)::

    mean_i softmax(z_i - b) = pi

by the fixed point ``b <- b + log(mean_i softmax(z_i - b) / pi)``: the prior-shift correction of
Saerens et al. (2002) with the target prior held fixed, each step scaled per class by a Newton factor
(see :func:`balance_offsets`). Each iteration is one streaming pass over the logits (memory
``O(chunk_rows x C)``) that also labels every row with the offsets it evaluates, so the pass that finds
the marginal within the tolerance has labelled the rows too: the labels are ``argmax(z - b)``. Adding a
constant to every offset changes nothing; the offsets returned have mean 0.

Passes over all the rows recompute the logits (at ImageNet's shape, mostly the ``[N x D] x [D x C]``
product), so ``pseudolabel`` makes few of them: :func:`subsample_offsets` first solves the same fixed
point on an evenly strided subsample held in memory (:data:`SUBSAMPLE_VALUES` logits at most), and
:func:`plain_and_corrected_pass` then takes, from each chunk computed once, both the plain labels
with the dataset prior and the corrected marginal at those offsets; :func:`balance_offsets` continues
from there (:class:`StartingPoint`) until the marginal over all the rows is within the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipdebias.config import defaults
from clipdebias.pseudolabels.rows import ChunkBuffers, LogitRows, is_finite, read_rows, rows_device
from clipdebias.utils.errors import OptionError, UserError

DEFAULT_TOLERANCE = defaults.BALANCE_TOLERANCE
DEFAULT_MAX_ITERATIONS = defaults.BALANCE_MAX_ITERATIONS
# The smallest divisor of a step: a class whose posteriors are all near one-hot moves its share little
# per unit of offset; its step is at most 20x the fixed point's.
MIN_CURVATURE = 0.05
# The most logits read_subsample keeps in memory for the first estimate of the offsets: 128 MB of
# float16, 67,108 rows of 1000 classes (5.2% of ImageNet's train split).
SUBSAMPLE_VALUES = 2**26
# Rows per chunk of the passes over the in-memory subsample (two [4096, 1000] float32 buffers: 32 MB).
SUBSAMPLE_CHUNK_ROWS = 4096
# Where read_subsample clips logits (less their row's largest): finite in float16, 0 after exp.
FLOAT16_FLOOR = -60_000.0


@dataclass(frozen=True)
class BalancedOffsets:
    """``offsets`` ``b`` ``[C]`` (mean 0), the corrected ``marginal`` ``mean_i softmax(z_i - b)`` they
    reach, the ``target`` prior it aims at, the passes over the rows that took, and whether the marginal
    came within the tolerance; with a subsample start, its size and its passes."""

    offsets: np.ndarray
    marginal: np.ndarray
    target: np.ndarray
    iterations: int
    converged: bool
    subsample_rows: int = 0  # rows of the in-memory subsample the start was fitted on (0: none)
    subsample_iterations: int = 0  # passes over that subsample (not counted in ``iterations``)


def check_target_prior(values: np.ndarray, num_classes: int) -> np.ndarray:
    """``values`` (one frequency or count per class) as a probability vector; raises
    :class:`OptionError` (option ``target_prior``) for a wrong length, a value that is not finite
    or not positive."""
    prior = np.asarray(values, dtype=np.float64).reshape(-1)
    if prior.shape[0] != num_classes:
        raise OptionError("target_prior", f"has {prior.shape[0]} values; there are {num_classes} classes")
    if not np.isfinite(prior).all():
        raise OptionError("target_prior", "holds a value that is not a finite number")
    if (prior <= 0).any():
        first = int(np.flatnonzero(prior <= 0)[0])
        raise OptionError("target_prior", f"must be > 0 for every class; class {first} has {prior[first]:g}")
    return prior / prior.sum()


def read_target_prior(path: str | Path, num_classes: int) -> np.ndarray:
    """The target prior of ``--target-prior``: a ``.npy`` vector, or a text file with one number per
    line (a frequency or a count per class, in label order; blank lines and ``#`` comments skipped),
    checked by :func:`check_target_prior`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise OptionError("target_prior", f"{str(path)!r}: no such file")
    try:
        if file.suffix.lower() == ".npy":
            values = np.load(file, allow_pickle=False)
        else:
            lines = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
            values = np.array([float(line) for line in lines if line], dtype=np.float64)
    except (OSError, ValueError) as err:
        raise OptionError("target_prior", f"{str(path)!r}: not one number per line or a .npy vector ({err})") from err
    return check_target_prior(values, num_classes)


@dataclass
class CorrectedPass:
    """One pass over the logits with offsets ``b``: per class ``mean_i p_ic`` (``first``, the corrected
    marginal) and ``mean_i p_ic^2`` (``second``, for the step size) of ``p_i = softmax(z_i - b)``, in
    float64, and per row the label ``argmax p_i``, the confidence ``max p_i`` and, with ``top_k``, the
    ``k`` most probable classes and their probabilities."""

    first: torch.Tensor
    second: torch.Tensor
    label: np.ndarray
    confidence: np.ndarray
    ranked_label: np.ndarray | None
    ranked_prob: np.ndarray | None


@dataclass(frozen=True)
class PlainPass:
    """The plain half of :func:`plain_and_corrected_pass`: ``mean_i softmax(z_i)`` per class (``first``,
    float64) and per row the plain label and confidence."""

    first: torch.Tensor
    label: np.ndarray
    confidence: np.ndarray


class _Tally:
    """What a pass accumulates from each chunk of probabilities: the per-class sums (in float32 per chunk,
    as ``dataset_prior`` sums, in float64 across chunks), optionally of the squares, and per row the label,
    the confidence and the ``top_k`` classes."""

    def __init__(self, num_rows: int, num_classes: int, top_k: int, squares: bool):
        self.num_rows, self.top_k = num_rows, top_k
        self.first = torch.zeros(num_classes, dtype=torch.float64)
        self.second = torch.zeros(num_classes, dtype=torch.float64) if squares else None
        self.label, self.confidence = np.empty(num_rows, np.int64), np.empty(num_rows, np.float32)
        self.ranked_label = np.empty((num_rows, top_k), np.int32) if top_k else None
        self.ranked_prob = np.empty((num_rows, top_k), np.float32) if top_k else None

    def add(self, probs: torch.Tensor, start: int) -> None:
        """Counts the rows ``start, start + 1, ...`` whose probabilities are ``probs`` (squared in place)."""
        part = slice(start, start + probs.shape[0])
        self.first += probs.sum(dim=0).to("cpu", torch.float64)
        if self.top_k:
            top, classes = probs.topk(self.top_k, dim=-1)
            self.ranked_label[part], self.ranked_prob[part] = classes.cpu().numpy(), top.cpu().numpy()
            self.label[part], self.confidence[part] = self.ranked_label[part][:, 0], self.ranked_prob[part][:, 0]
        else:
            top1, classes1 = probs.max(dim=-1)
            self.label[part], self.confidence[part] = classes1.cpu().numpy(), top1.cpu().numpy()
        if self.second is not None:
            self.second += probs.square_().sum(dim=0).to("cpu", torch.float64)

    def corrected(self) -> CorrectedPass:
        assert self.second is not None
        first, second = self.first / self.num_rows, self.second / self.num_rows
        return CorrectedPass(first, second, self.label, self.confidence, self.ranked_label, self.ranked_prob)

    def plain(self) -> PlainPass:
        return PlainPass(self.first / self.num_rows, self.label, self.confidence)


def _read_checked(buffers: ChunkBuffers, rows: LogitRows, part: slice, check_finite: bool) -> torch.Tensor:
    chunk = buffers.read(rows, part)
    if check_finite and not is_finite(chunk):
        raise UserError("the logits contain NaN or infinite values")
    return chunk


def corrected_pass(
    rows: LogitRows, offsets: torch.Tensor, chunk_rows: int, top_k: int = 0, check_finite: bool = True
) -> CorrectedPass:
    """One streaming pass of ``softmax(z - offsets)`` over every row (see :class:`CorrectedPass`).
    With ``check_finite`` (the first pass over a source), raises
    :class:`~clipdebias.utils.errors.UserError` at a chunk holding NaN or an infinity."""
    num_rows, num_classes = int(rows.shape[0]), int(rows.shape[1])
    buffers = ChunkBuffers(rows, chunk_rows)  # two [chunk_rows, C] float32 tensors for the whole pass
    shift = offsets.to(buffers.logits.device, torch.float32)
    tally = _Tally(num_rows, num_classes, top_k, squares=True)
    for start in range(0, num_rows, chunk_rows):
        chunk = _read_checked(buffers, rows, slice(start, start + chunk_rows), check_finite)
        tally.add(buffers.softmax(chunk.sub_(shift)), start)
    return tally.corrected()


def plain_and_corrected_pass(
    rows: LogitRows, offsets: torch.Tensor, chunk_rows: int, top_k: int = 0
) -> tuple[PlainPass, CorrectedPass]:
    """One streaming pass that computes each chunk of logits once and takes both ``softmax(z)`` (the
    plain labels and the dataset prior) and ``softmax(z - offsets)`` (:class:`CorrectedPass`); raises
    :class:`~clipdebias.utils.errors.UserError` at a chunk holding NaN or an infinity."""
    num_rows, num_classes = int(rows.shape[0]), int(rows.shape[1])
    buffers = ChunkBuffers(rows, chunk_rows)
    shift = offsets.to(buffers.logits.device, torch.float32)
    plain = _Tally(num_rows, num_classes, 0, squares=False)
    corrected = _Tally(num_rows, num_classes, top_k, squares=True)
    for start in range(0, num_rows, chunk_rows):
        chunk = _read_checked(buffers, rows, slice(start, start + chunk_rows), True)
        plain.add(buffers.softmax(chunk), start)
        corrected.add(buffers.softmax(chunk.sub_(shift)), start)
    return plain.plain(), corrected.corrected()


def read_subsample(rows: LogitRows, chunk_rows: int, max_values: int | None = None) -> torch.Tensor:
    """Every ``s``-th row of ``rows`` (``s`` the smallest stride that keeps at most ``max_values``
    logits, :data:`SUBSAMPLE_VALUES` when ``None``; all rows when they fit) as one float16 tensor: rows
    spread evenly over the file, so a dataset stored class by class is sampled in its proportions.
    Each row is stored less its largest value (which changes no softmax), so float16 keeps the logits
    near the top to 0.4% and clips only those far below it (``exp`` of them is 0 in float32 as well).
    Raises :class:`~clipdebias.utils.errors.UserError` for a value that is not finite."""
    num_rows, num_classes = int(rows.shape[0]), int(rows.shape[1])
    max_values = SUBSAMPLE_VALUES if max_values is None else max_values
    step = max(1, math.ceil(num_rows * num_classes / max_values))
    count, device = math.ceil(num_rows / step), rows_device(rows)
    sample = torch.empty((count, num_classes), dtype=torch.float16, device=device)
    buffer = torch.empty((min(chunk_rows, count), num_classes), dtype=torch.float32, device=device)
    for index, start in enumerate(range(0, num_rows, chunk_rows * step)):
        chunk = read_rows(rows, slice(start, min(start + chunk_rows * step, num_rows), step), buffer)
        if not is_finite(chunk):
            raise UserError("the logits contain NaN or infinite values")
        chunk.sub_(chunk.amax(dim=-1, keepdim=True)).clamp_(min=FLOAT16_FLOOR)
        sample[index * chunk_rows : index * chunk_rows + chunk.shape[0]] = chunk
    return sample


@dataclass(frozen=True)
class StartingPoint:
    """Where :func:`balance_offsets` starts: ``offsets`` (float64, mean 0), the caller's pass over all
    the rows at those offsets, and the ``passes`` over the rows it cost (counted in ``iterations``)."""

    offsets: torch.Tensor
    evaluated: CorrectedPass
    passes: int = 1


def _worst_gap(marginal: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``log(marginal / prior)`` per class and the largest relative distance ``|marginal / prior - 1|``
    (bounded above by ``exp|gap| - 1``)."""
    gap = torch.log(marginal.clamp_min(torch.finfo(torch.float64).tiny) / prior)
    return gap, float((torch.exp(gap.abs()) - 1.0).max())


def balance_offsets(
    rows: LogitRows,
    target: np.ndarray | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    chunk_rows: int = defaults.CHUNK_ROWS,
    top_k: int = 0,
    plain: CorrectedPass | None = None,
    start: StartingPoint | None = None,
) -> tuple[BalancedOffsets, CorrectedPass]:
    """Offsets ``b`` with ``mean_i softmax(z_i - b) = target`` (uniform when ``None``), to a relative
    ``tolerance`` per class, in at most ``max_iterations`` passes over ``rows`` (``[N, C]`` logits), and
    the pass at those offsets (its labels are the balanced labels).

    Each step is the fixed point's ``log(m / pi)`` divided by ``1 - mean_i p_ic^2 / m_c`` (a Newton step
    for each class on its own: confident posteriors move little per unit of offset, so they need
    larger steps); a step that makes the largest gap worse is replaced by the plain fixed-point step
    ``b <- b + log(m / pi)``, which costs one more pass. ``start``: offsets to start from and the
    caller's pass at them (e.g. :func:`subsample_offsets`, then :func:`plain_and_corrected_pass`);
    ``plain``: the caller's pass at ``b = 0`` (:func:`corrected_pass` with zero offsets; counted as no
    pass). Either saves the first pass."""
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < 2:
        raise ValueError(f"logits must have shape [N, C] with N >= 1 and C >= 2, got {tuple(rows.shape)}")
    num_classes = int(rows.shape[1])
    prior = torch.from_numpy(
        check_target_prior(target, num_classes) if target is not None else np.full(num_classes, 1.0 / num_classes)
    )
    if start is None:
        zeros = torch.zeros(num_classes, dtype=torch.float64)
        evaluated = plain if plain is not None else corrected_pass(rows, zeros, chunk_rows, top_k)
        start = StartingPoint(zeros, evaluated, 0 if plain is not None else 1)
    offsets, current, iterations = start.offsets.to(torch.float64), start.evaluated, start.passes
    gap, worst = _worst_gap(current.first, prior)
    while worst > tolerance and iterations < max_iterations:
        tiny = torch.finfo(torch.float64).tiny
        curvature = (1.0 - current.second / current.first.clamp_min(tiny)).clamp_min(MIN_CURVATURE)
        candidate = offsets + gap / curvature
        candidate = candidate - candidate.mean()
        tried = corrected_pass(rows, candidate, chunk_rows, top_k, check_finite=False)
        iterations += 1
        if _worst_gap(tried.first, prior)[1] > worst and iterations < max_iterations:
            candidate = offsets + gap
            candidate = candidate - candidate.mean()
            tried = corrected_pass(rows, candidate, chunk_rows, top_k, check_finite=False)
            iterations += 1
        offsets, current = candidate, tried
        gap, worst = _worst_gap(current.first, prior)
    result = BalancedOffsets(offsets.numpy(), current.first.numpy(), prior.numpy(), iterations, worst <= tolerance)
    return result, current


def subsample_offsets(
    rows: LogitRows,
    target: np.ndarray | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    chunk_rows: int = defaults.CHUNK_ROWS,
    max_values: int | None = None,
) -> tuple[BalancedOffsets, int]:
    """:func:`balance_offsets` on :func:`read_subsample`'s rows, held in memory: a start for the passes
    over all the rows that costs one read of the subsample (a twentieth of ImageNet's rows at 1000
    classes). Returns the offsets and the number of rows they were fitted on. The subsample's marginal
    differs from the whole set's by its sampling noise, which the passes over all the rows then remove.
    The passes over the subsample take at most :data:`SUBSAMPLE_CHUNK_ROWS` rows at a time, so their
    buffers add little to the subsample's memory."""
    sample = read_subsample(rows, chunk_rows, max_values)
    in_memory_rows = min(chunk_rows, SUBSAMPLE_CHUNK_ROWS)
    result, _ = balance_offsets(
        sample, target, tolerance=tolerance, max_iterations=max_iterations, chunk_rows=in_memory_rows
    )
    return result, int(sample.shape[0])
