"""The balanced correction of zero-shot logits: per-class offsets that make the pseudo-labels follow a
target class prior.

The paper's correction subtracts ``tau * log q`` (``q``: the mean softmax over the dataset) with a fixed
``tau``; on a strongly biased teacher it leaves most of the bias in place. The balanced correction
instead finds offsets ``b`` (one per class) such that the corrected posteriors' marginal equals the
target prior ``pi`` (uniform unless given)::

    mean_i softmax(z_i - b) = pi

by the fixed point ``b <- b + log(mean_i softmax(z_i - b) / pi)``: the prior-shift correction of
Saerens et al. (2002) with the target prior held fixed. Each iteration is one streaming pass over the
logits (memory ``O(chunk_rows x C)``). The labels are ``argmax(z - b)``. Adding a constant to every
offset changes nothing; the offsets returned have mean 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipdebias.pseudolabels.labels import LogitRows
from clipdebias.utils.errors import OptionError

# Stop when every class's corrected share is within this relative distance of its target share.
DEFAULT_TOLERANCE = 1e-4
# Passes over the logits at most (each is one softmax over [N, C]).
DEFAULT_MAX_ITERATIONS = 100


@dataclass(frozen=True)
class BalancedOffsets:
    """``offsets`` ``b`` ``[C]`` (mean 0), the corrected ``marginal`` ``mean_i softmax(z_i - b)`` they
    reach, the passes that took, and whether the marginal came within the tolerance."""

    offsets: np.ndarray
    marginal: np.ndarray
    iterations: int
    converged: bool


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


def _chunk(rows: LogitRows, start: int, stop: int) -> torch.Tensor:
    chunk = rows[start:stop]
    if isinstance(chunk, np.ndarray):
        return torch.from_numpy(np.asarray(chunk, dtype=np.float32))
    return chunk.float()


def corrected_marginal(rows: LogitRows, offsets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """``mean_i softmax(z_i - offsets)`` over every row, in float64 (one streaming pass)."""
    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    for start in range(0, rows.shape[0], chunk_rows):
        chunk = _chunk(rows, start, start + chunk_rows)
        shifted = chunk - offsets.to(chunk.device, torch.float32)
        total += torch.softmax(shifted, dim=-1).sum(dim=0, dtype=torch.float64).cpu()
    return total / rows.shape[0]


def balance_offsets(
    rows: LogitRows,
    target: np.ndarray | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    chunk_rows: int = 16384,
) -> BalancedOffsets:
    """Offsets ``b`` with ``mean_i softmax(z_i - b) = target`` (uniform when ``None``), to a relative
    ``tolerance`` per class, in at most ``max_iterations`` passes over ``rows`` (``[N, C]`` logits)."""
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < 2:
        raise ValueError(f"logits must have shape [N, C] with N >= 1 and C >= 2, got {tuple(rows.shape)}")
    num_classes = int(rows.shape[1])
    prior = torch.from_numpy(
        check_target_prior(target, num_classes) if target is not None else np.full(num_classes, 1.0 / num_classes)
    )
    offsets = torch.zeros(num_classes, dtype=torch.float64)
    marginal = corrected_marginal(rows, offsets, chunk_rows)
    iterations, converged = 1, False
    while True:
        gap = torch.log(marginal.clamp_min(torch.finfo(torch.float64).tiny) / prior)
        converged = bool((torch.exp(gap.abs()) - 1.0).max() <= tolerance)
        if converged or iterations >= max_iterations:
            break
        offsets = offsets + gap
        offsets = offsets - offsets.mean()
        marginal = corrected_marginal(rows, offsets, chunk_rows)
        iterations += 1
    return BalancedOffsets(offsets.numpy(), marginal.numpy(), iterations, converged)
