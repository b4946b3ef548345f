"""kNN refinement of a teacher's probabilities with the nearest neighbours of its images' embeddings.

With ``p_i = softmax(z_i)`` and ``kNN(i)`` the K nearest other images of image ``i``
(:mod:`clipdebias.clip.neighbours`)::

    p'_i = (1 - alpha) p_i + alpha * mean_{j in kNN(i)} p_j

and, with ``steps`` T > 1, label propagation anchored to the teacher: ``F^0 = p``,
``F^t_i = (1 - alpha) p_i + alpha * mean_{j in kNN(i)} F^{t-1}_j``, ``p' = F^T`` (T = 1 is the formula
above). :class:`KnnRefinedRows` is a :class:`~clipdebias.pseudolabels.rows.LogitRows` of ``log p'``,
so every correction of :func:`~clipdebias.pseudolabels.labels.debiased_pseudo_labels` applies to the
refined probabilities unchanged (``softmax(log p' - b) ∝ p' / exp(b)``; ``softmax(log p') = p'``).

Memory: the neighbours ``j`` of a chunk of rows are anywhere in the matrix, so ``F^{T-1}`` is kept
in RAM as float16 (2 bytes per probability: 2.6 GB for ImageNet's 1.28 M x 1000), one pass over the
logits builds it; T > 1 needs a second such buffer while a step is computed (5.1 GB) and one pass
per extra step. Rows of ``p'`` themselves are computed on demand, one chunk at a time, from the
logits chunk (``p_i``, read in order) and the buffer; no ``[N, C]`` float32 array is ever held.
float16 keeps probabilities to a relative 5e-4 (those below 6e-8 lose precision or become 0), which
moves ``p'`` by less than that: far below what changes a label. ``log p'`` is clamped at
``log 1e-30`` so that every row stays finite.
"""

from __future__ import annotations

import numpy as np
import torch

from clipdebias.config import defaults
from clipdebias.pseudolabels.rows import LogitRows, as_tensor
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.progress import NoProgress, Progress

SMALLEST = 1e-30  # the floor of p' before its log


def check_refinement(alpha: float, steps: int) -> None:
    """:class:`OptionError` unless ``alpha`` is in [0, 1] and ``steps`` >= 1."""
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):  # also refuses NaN
        raise OptionError("knn_alpha", f"must be in [0, 1] (got {alpha})")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise OptionError("knn_steps", f"must be 1 or more (got {steps})")


class KnnRefinedRows:
    """``log p'`` of ``logits`` refined with the neighbour rows ``neighbours`` (``[N, K]`` int64 row
    positions, e.g. :attr:`clipdebias.clip.neighbours.Neighbours.indices`), read by row slices.

    Building it makes ``steps`` passes over ``logits`` (see the module docstring); each slice is then
    one chunk of ``logits`` plus a gather of its neighbours' rows of the float16 buffer. Slices come
    back as float32 tensors on the device of the logits' chunks.
    """

    ndim = 2

    def __init__(
        self,
        logits: LogitRows,
        neighbours: np.ndarray,
        alpha: float = defaults.KNN_ALPHA,
        steps: int = defaults.KNN_STEPS,
        *,
        chunk_rows: int = defaults.CHUNK_ROWS,
        progress: Progress | None = None,
    ):
        check_refinement(alpha, steps)
        if logits.ndim != 2:
            raise UserError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
        rows = int(logits.shape[0])
        neighbours = np.asarray(neighbours)
        if neighbours.ndim != 2 or neighbours.shape[0] != rows:
            raise OptionError(
                "embeddings",
                f"give neighbours of {rows} rows, one per logit row (got shape {tuple(neighbours.shape)})",
            )
        if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= rows):
            raise ValueError(
                f"neighbour indices must be rows in [0, {rows}), got [{neighbours.min()}, {neighbours.max()}]"
            )
        self.logits = logits
        self.shape = (rows, int(logits.shape[1]))
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.chunk_rows = int(chunk_rows)
        self.neighbours = torch.from_numpy(np.ascontiguousarray(neighbours, dtype=np.int64))
        self.progress = progress or NoProgress()
        # F^{T-1}, float16, in RAM. Gathered with torch: numpy's float16 -> float32 is 5x slower on the
        # subnormal numbers (6e-8 to 6e-5) that small probabilities are.
        self.buffer: torch.Tensor | None = None
        if self.alpha > 0 and self.neighbours.shape[1] > 0:
            self.buffer = self._probabilities()
            for step in range(1, self.steps):
                self.buffer = self._propagate(self.buffer, step)

    def _teacher(self, rows: slice) -> torch.Tensor:
        chunk = as_tensor(self.logits[rows])
        if not torch.isfinite(chunk).all():
            raise UserError("the logits contain NaN or infinite values")
        return torch.softmax(chunk, dim=-1)

    def _neighbour_mean(self, source: torch.Tensor, rows: slice, device: torch.device) -> torch.Tensor:
        """``mean_{j in kNN(i)} source_j`` for the rows ``rows``, float32 on ``device``."""
        found = self.neighbours[rows]
        total = torch.zeros((found.shape[0], self.shape[1]), dtype=torch.float32)
        for column in range(found.shape[1]):
            total += source.index_select(0, found[:, column]).float()
        return (total / found.shape[1]).to(device)

    def _probabilities(self) -> torch.Tensor:
        buffer = torch.empty(self.shape, dtype=torch.float16)
        self.progress.start(f"kNN refinement: probabilities (pass 1/{self.steps})", self.shape[0])
        for start in range(0, self.shape[0], self.chunk_rows):
            probs = self._teacher(slice(start, start + self.chunk_rows))
            buffer[start : start + probs.shape[0]] = probs.to("cpu", torch.float16)
            self.progress.advance(int(probs.shape[0]))
        return buffer

    def _propagate(self, current: torch.Tensor, step: int) -> torch.Tensor:
        following = torch.empty_like(current)
        self.progress.start(f"kNN refinement: propagation (pass {step + 1}/{self.steps})", self.shape[0])
        for start in range(0, self.shape[0], self.chunk_rows):
            rows = slice(start, start + self.chunk_rows)
            probs = self._teacher(rows)
            mixed = (1 - self.alpha) * probs + self.alpha * self._neighbour_mean(current, rows, probs.device)
            following[start : start + probs.shape[0]] = mixed.to("cpu", torch.float16)
            self.progress.advance(int(probs.shape[0]))
        return following

    def probabilities(self, rows: slice) -> torch.Tensor:
        """``p'`` of the rows ``rows`` (float32)."""
        probs = self._teacher(rows)
        if self.buffer is None:
            return probs
        return (1 - self.alpha) * probs + self.alpha * self._neighbour_mean(self.buffer, rows, probs.device)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return torch.log(self.probabilities(rows).clamp_min(SMALLEST))
