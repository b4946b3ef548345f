"""Where logit rows come from: anything ``[N, C]`` read by row slices, never held whole in float32.

:class:`ZeroShotLogits` computes ``scale * embeddings @ classifier.T`` one slice at a time from cached
CLIP embeddings; :class:`FiniteRows` checks a teacher's ``--logits`` file as it is read;
:class:`ReportingRows` reports each pass as a progress stage.

The streaming passes read chunks with :func:`read_rows` into :class:`ChunkBuffers` allocated once per
pass: a fresh ``[16384, 1000]`` float32 tensor per chunk and per step cost about as much in page faults
(the allocator maps and unmaps blocks that large each time) as the softmax itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from clipdebias.utils.errors import UserError
from clipdebias.utils.progress import Progress


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

        self._inputs: np.ndarray | None = None  # read_into's reused copy of an embedding chunk

    def __getitem__(self, rows: slice) -> torch.Tensor:
        chunk = torch.from_numpy(np.array(self.embeddings[rows], dtype=np.float32)).to(self.device)
        return chunk @ self.classifier_t

    def read_into(self, rows: slice, out: torch.Tensor) -> torch.Tensor:
        """The logits of ``rows`` written into the first rows of ``out`` (``[at least len(rows), C]``, on
        this object's device): the same numbers as ``self[rows]`` without allocating a chunk."""
        embeddings = self.embeddings[rows]
        count = int(embeddings.shape[0])
        if self._inputs is None or self._inputs.shape[0] < count:
            self._inputs = np.empty((count, self.embeddings.shape[1]), np.float32)
        np.copyto(self._inputs[:count], embeddings, casting="same_kind")
        inputs = torch.from_numpy(self._inputs[:count]).to(self.device)
        return torch.matmul(inputs, self.classifier_t, out=out[:count])


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
            first = int(np.flatnonzero(bad)[0]) * (rows.step or 1) + (rows.start or 0)
            raise UserError(
                f"{self.name}: row {first} holds NaN or infinite values; every logit must be a finite number"
            )
        return chunk


class ReportingRows:
    """A :class:`LogitRows` that reports each pass over its rows as a progress stage, named by
    ``stages`` in order (the last name repeats; ``{n}`` in a name is the pass number, from 1)."""

    ndim = 2

    def __init__(self, rows: LogitRows, progress: Progress, stages: Sequence[str]):
        self.rows = rows
        self.shape = tuple(rows.shape)
        self.device = rows_device(rows)
        self.progress = progress
        self.stages = tuple(stages)
        self.passes = 0

    def __getitem__(self, rows: slice) -> np.ndarray | torch.Tensor:
        chunk = self.rows[rows]  # first: a bad first chunk fails before a bar is drawn
        self._report(rows, int(chunk.shape[0]))
        return chunk

    def read_into(self, rows: slice, out: torch.Tensor) -> torch.Tensor:
        """:func:`read_rows` of the wrapped rows, reported as ``self[rows]`` is."""
        chunk = read_rows(self.rows, rows, out)
        self._report(rows, int(chunk.shape[0]))
        return chunk

    def _report(self, rows: slice, count: int) -> None:
        if not rows.start:
            name = self.stages[min(self.passes, len(self.stages) - 1)]
            self.progress.start(name.format(n=self.passes + 1), self.shape[0])
            self.passes += 1
        self.progress.advance(count)


def as_tensor(chunk: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A chunk of logit rows as a float32 tensor (a copy for numpy input, so memory maps stay read-only)."""
    if isinstance(chunk, np.ndarray):
        return torch.from_numpy(np.array(chunk, dtype=np.float32))
    return chunk.float()


def rows_device(rows: LogitRows) -> torch.device:
    """Where the chunks of ``rows`` are computed: its ``device`` (tensors, :class:`ZeroShotLogits`), else the CPU."""
    return torch.device(getattr(rows, "device", None) or "cpu")


def read_rows(rows: LogitRows, part: slice, out: torch.Tensor) -> torch.Tensor:
    """Rows ``part`` of ``rows`` as float32, in the first rows of ``out`` (a view of it, which the caller
    may change in place: the source is never shared). A source with ``read_into`` (:class:`ZeroShotLogits`,
    :class:`ReportingRows`) writes there itself; any other is read and copied (cast to float32 as
    :func:`as_tensor` does)."""
    reader = getattr(rows, "read_into", None)
    if reader is not None:
        return reader(part, out)
    chunk = rows[part]
    target = out[: int(chunk.shape[0])]
    if isinstance(chunk, np.ndarray) and target.device.type == "cpu":
        np.copyto(target.numpy(), chunk, casting="unsafe")  # straight from a memory map, no temporary
    else:
        target.copy_(torch.as_tensor(chunk) if isinstance(chunk, np.ndarray) else chunk)
    return target


class ChunkBuffers:
    """Two ``[chunk_rows, C]`` float32 tensors on the device of ``rows``, reused by every chunk of a pass:
    ``logits`` (where :func:`read_rows` writes) and ``probs`` (a softmax's output)."""

    def __init__(self, rows: LogitRows, chunk_rows: int):
        size = (min(int(chunk_rows), int(rows.shape[0])), int(rows.shape[1]))
        device = rows_device(rows)
        self.logits = torch.empty(size, dtype=torch.float32, device=device)
        self.probs = torch.empty(size, dtype=torch.float32, device=device)

    def read(self, rows: LogitRows, part: slice) -> torch.Tensor:
        """Rows ``part`` of ``rows`` in ``self.logits`` (see :func:`read_rows`)."""
        return read_rows(rows, part, self.logits)

    def softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """``torch.softmax(logits, dim=-1)`` (the same numbers) written into ``self.probs``."""
        return torch.softmax(logits, dim=-1, out=self.probs[: logits.shape[0]])


def is_finite(chunk: torch.Tensor) -> bool:
    """Whether every value of ``chunk`` is a finite number (one reduction, no ``[rows, C]`` mask)."""
    low, high = torch.aminmax(chunk)
    return bool(torch.isfinite(low) and torch.isfinite(high))
