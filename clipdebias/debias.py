"""The debias core of DebiasPL (Wang et al., CVPR 2022): pure torch, no I/O.

Notation: ``C`` classes, teacher (weak-view) logits ``z_w``, student (strong-view) logits ``z_s``,
class prior ``q`` (probabilities, length ``C``), strength ``tau``.

1. Counterfactual debiasing: ``p = softmax(z_w - tau * log q)``; pseudo-label ``argmax p``,
   confidence ``max p``, mask ``max p >= threshold``.
2. Prior update from the *raw* teacher probabilities: ``q <- m q + (1 - m) mean_b softmax(z_w)``.
3. Adaptive margin loss with the updated prior: ``mean_b CE(z_s + tau log q, y) * mask``.
4. Offline (transductive) prior: ``q = mean_i softmax(z_i)`` over a whole dataset.

The balanced variant (``--debias balance`` in the training loop, :class:`BalancingPrior`) replaces step 1
by ``p = softmax(z_w - b)`` with running per-class offsets ``b`` that take one stochastic step per batch
towards ``mean softmax(z - b) = pi`` (the uniform target prior; the offline balance's fixed point), and
step 3 by the plain masked cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

# Smallest prior value used inside a logarithm: keeps log(q) finite if a class underflows to 0.
_PRIOR_FLOOR = torch.finfo(torch.float32).tiny


def log_prior(prior: Tensor, device: torch.device | str | None = None) -> Tensor:
    """``log q`` of steps 1 and 3, in float32 (on ``device`` if given); ``q`` is floored at
    :data:`_PRIOR_FLOOR` so that a class whose probability underflowed to 0 keeps a finite log."""
    return torch.log(prior.to(device=device, dtype=torch.float32).clamp_min(_PRIOR_FLOOR))


class ClassPrior:
    """An exponential moving average of the teacher's class probabilities.

    ``probs`` is a float32 tensor of shape ``[C]`` that starts uniform and always sums to 1.
    When a ``torch.distributed`` process group is initialised (and ``sync_distributed`` is true),
    the batch statistics are all-reduced in :meth:`update`, so every rank holds the same prior.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, sync_distributed: bool = True):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.sync_distributed = sync_distributed
        self.probs = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float32)

    @property
    def log_probs(self) -> Tensor:
        return log_prior(self.probs)

    @torch.no_grad()
    def update(self, probs: Tensor, mask: Tensor | None = None) -> None:
        """EMA step towards the mean of ``probs`` (``[B, C]``) over the batch.

        With ``mask`` (``[B]``, 0/1), the mean is taken over the selected rows only; if no row is
        selected (on any rank) the prior is left unchanged.
        """
        batch_mean = self._batch_mean(probs, mask)
        if batch_mean is None:
            return
        new = self.momentum * self.probs + (1.0 - self.momentum) * batch_mean
        self.probs = new / new.sum()

    def _batch_mean(self, probs: Tensor, mask: Tensor | None = None) -> Tensor | None:
        """The mean of ``probs`` ``[B, C]`` over the (selected) rows of every rank; ``None`` if none."""
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must have shape [B, {self.num_classes}], got {tuple(probs.shape)}")
        probs = probs.detach().to(device=self.probs.device, dtype=torch.float32)
        if mask is None:
            weights = torch.ones(probs.shape[0], device=probs.device)
        else:
            weights = mask.detach().to(device=probs.device, dtype=torch.float32).reshape(-1)
            if weights.shape[0] != probs.shape[0]:
                raise ValueError(f"mask has {weights.shape[0]} rows, probs has {probs.shape[0]}")
        # One tensor [C + 1]: the weighted sum of probabilities and the row count.
        stats = torch.cat([weights @ probs, weights.sum().reshape(1)])
        if self.sync_distributed and dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        count = stats[-1]
        if count <= 0:
            return None
        return stats[:-1] / count

    def to(self, device: torch.device | str) -> ClassPrior:
        self.probs = self.probs.to(device)
        return self

    def state_dict(self) -> dict:
        return {"probs": self.probs.detach().cpu().clone(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        probs = torch.as_tensor(state["probs"], dtype=torch.float32)
        if probs.shape != (self.num_classes,):
            raise ValueError(f"prior state has shape {tuple(probs.shape)}, expected ({self.num_classes},)")
        self.probs = probs.to(self.probs.device).clone()
        self.momentum = float(state.get("momentum", self.momentum))


class BalancingPrior(ClassPrior):
    """A :class:`ClassPrior` that also keeps the per-class offsets ``b`` of the online balanced correction.

    The pseudo-labels come from ``softmax(z_w - b)``; after each batch :meth:`update_offsets` moves ``b``
    by one stochastic step towards the offline balance's fixed point ``mean_i softmax(z_i - b) = pi``
    (``pi``: the uniform target prior)::

        b <- b + (1 - m) * (mean_batch softmax(z_w - b) / pi - 1),   then b <- b - mean(b)

    with the prior's momentum ``m``: a class that takes more than its share of the corrected probability
    mass is pushed down, one that takes less is pushed up. ``offsets`` starts at 0 and is part of the
    state (a resumed run continues with it).
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, sync_distributed: bool = True):
        super().__init__(num_classes, momentum, sync_distributed)
        self.offsets = torch.zeros(self.num_classes, dtype=torch.float32)

    @torch.no_grad()
    def update_offsets(self, corrected_probs: Tensor) -> None:
        """One step of ``b`` from the corrected probabilities ``softmax(z_w - b)`` ``[B, C]`` of a batch."""
        batch_mean = self._batch_mean(corrected_probs)
        if batch_mean is None:
            return
        new = self.offsets + (1.0 - self.momentum) * (batch_mean * self.num_classes - 1.0)
        self.offsets = new - new.mean()

    def to(self, device: torch.device | str) -> BalancingPrior:
        super().to(device)
        self.offsets = self.offsets.to(device)
        return self

    def state_dict(self) -> dict:
        return {**super().state_dict(), "offsets": self.offsets.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        offsets = torch.as_tensor(state.get("offsets", torch.zeros(self.num_classes)), dtype=torch.float32)
        if offsets.shape != (self.num_classes,):
            raise ValueError(f"offsets state has shape {tuple(offsets.shape)}, expected ({self.num_classes},)")
        self.offsets = offsets.to(self.probs.device).clone()


def debias_logits(logits: Tensor, prior: Tensor, tau: float) -> Tensor:
    """Counterfactual debiasing: ``logits - tau * log(prior)`` (``prior``: probabilities ``[C]``)."""
    return logits - tau * log_prior(prior, logits.device).to(logits.dtype)


@torch.no_grad()
def select_pseudo_labels(
    logits_w: Tensor, prior: Tensor, tau: float, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Debiased pseudo-labels from weak-view logits.

    Returns ``(targets [B] long, confidence [B], mask [B] of 0./1. floats)`` where confidence is the
    largest debiased probability and mask is ``confidence >= threshold``.
    """
    probs = torch.softmax(debias_logits(logits_w.detach().float(), prior, tau), dim=-1)
    confidence, targets = probs.max(dim=-1)
    mask = (confidence >= threshold).float()
    return targets, confidence, mask


@torch.no_grad()
def select_balanced_pseudo_labels(logits_w: Tensor, offsets: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pseudo-labels of the online balanced correction: ``softmax(z_w - b)`` with the offsets ``b`` ``[C]``
    of a :class:`BalancingPrior`. Returns ``(targets, confidence, mask)`` as :func:`select_pseudo_labels`."""
    probs = torch.softmax(logits_w.detach().float() - offsets.to(logits_w.device, torch.float32), dim=-1)
    confidence, targets = probs.max(dim=-1)
    return targets, confidence, (confidence >= threshold).float()


def adaptive_margin_loss(logits_s: Tensor, targets: Tensor, prior: Tensor, tau: float, mask: Tensor) -> Tensor:
    """``mean_b CE(logits_s + tau * log prior, targets)_b * mask_b``; masked rows count in the mean."""
    per_row = F.cross_entropy(logits_s.float() + tau * log_prior(prior, logits_s.device), targets, reduction="none")
    return (per_row * mask.to(per_row.dtype)).mean()


@torch.no_grad()
def dataset_prior(logits: Tensor | np.ndarray, chunk_size: int = 65536) -> Tensor:
    """Mean softmax over all rows of ``logits`` (``[N, C]``), streamed ``chunk_size`` rows at a time.

    ``logits`` may be a tensor or a (memory-mapped) numpy array, so N can be in the millions without
    materialising an ``[N, C]`` probability matrix. Returns a float32 ``[C]`` tensor summing to 1.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape [N, C] with N >= 1, got {tuple(logits.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = torch.zeros(logits.shape[1], dtype=torch.float64)
    for start in range(0, logits.shape[0], chunk_size):
        chunk = logits[start : start + chunk_size]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.array(chunk, dtype=np.float32))  # a writable copy of one chunk
        total += torch.softmax(chunk.float(), dim=-1).sum(dim=0).to(device="cpu", dtype=torch.float64)
    mean = total / logits.shape[0]
    return (mean / mean.sum()).float()
