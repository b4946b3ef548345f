"""Where logit rows come from: anything ``[N, C]`` read by row slices, never held whole in float32.

:class:`ZeroShotLogits` computes ``scale * embeddings @ classifier.T`` one slice at a time from cached
CLIP embeddings; :class:`FiniteRows` checks a teacher's ``--logits`` file as it is read;
:class:`ReportingRows` reports each pass as a progress stage.
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
    """A :class:`LogitRows` that reports each pass over its rows as a progress stage, named by
    ``stages`` in order (the last name repeats; ``{n}`` in a name is the pass number, from 1)."""

    ndim = 2

    def __init__(self, rows: LogitRows, progress: Progress, stages: Sequence[str]):
        self.rows = rows
        self.shape = tuple(rows.shape)
        self.progress = progress
        self.stages = tuple(stages)
        self.passes = 0

    def __getitem__(self, rows: slice) -> np.ndarray | torch.Tensor:
        chunk = self.rows[rows]  # first: a bad first chunk fails before a bar is drawn
        if not rows.start:
            name = self.stages[min(self.passes, len(self.stages) - 1)]
            self.progress.start(name.format(n=self.passes + 1), self.shape[0])
            self.passes += 1
        self.progress.advance(int(chunk.shape[0]))
        return chunk


def as_tensor(chunk: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A chunk of logit rows as a float32 tensor (a copy for numpy input, so memory maps stay read-only)."""
    if isinstance(chunk, np.ndarray):
        return torch.from_numpy(np.array(chunk, dtype=np.float32))
    return chunk.float()
