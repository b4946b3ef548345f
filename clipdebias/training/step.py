"""One training step: FixMatch with an EMA teacher, debiased by DebiasPL when ``tau > 0`` (or by the
online balanced correction with ``debias="balance"``).

:func:`fixmatch_step` computes the losses of one step of the loop (:mod:`clipdebias.training.loop`)
from a labeled and an unlabeled batch:

1. the EMA teacher (eval mode, no gradient) gives weak-view logits ``z_w`` (the mean over weak
   views with ``--multiviews``);
2. pseudo-labels, confidences and masks come from ``clipdebias.debias.select_pseudo_labels`` with
   the class prior *before* its update (with ``tau = 0`` this is plain FixMatch), or in the balanced
   mode from ``softmax(z_w - b)`` with the offsets ``b`` before their update
   (:class:`clipdebias.debias.BalancingPrior`, which then takes its step);
3. optionally, rows the student is unsure of take a fallback label (:func:`apply_fallback`);
4. the prior is updated from the raw teacher probabilities ``softmax(z_w)``;
5. the student's strong-view loss is ``adaptive_margin_loss`` with the *updated* prior, and the
   total loss is ``CE(labeled) + lambda_u * L_u``.

The loop then takes the optimizer step, the LR schedule step and the EMA update
(:meth:`EMATeacher.update`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipdebias.config.defaults import DEBIAS_MODES, TEACHER_BN_MODES
from clipdebias.data.batches import LabeledBatch, UnlabeledBatch
from clipdebias.debias import (
    BalancingPrior,
    ClassPrior,
    adaptive_margin_loss,
    select_balanced_pseudo_labels,
    select_pseudo_labels,
)

# Steps between two progress reports (and the host syncs they cost on a GPU).
DEFAULT_LOG_EVERY = 10


def warmup_momentum(momentum: float, updates: int) -> float:
    """The EMA momentum of update number ``updates`` (0-based) with the mean-teacher warm-up:
    ``min(momentum, (1 + t) / (10 + t))``, so the first updates follow the student closely."""
    return min(momentum, (1.0 + updates) / (10.0 + updates))


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of the loop itself (the optimizer and the data are built by the caller)."""

    num_classes: int
    epochs: int
    steps_per_epoch: int
    tau: float = 0.4
    # How the pseudo-labels are corrected (DEBIAS_MODES): paper = DebiasPL with ``tau`` (``tau == 0``
    # is plain FixMatch), balance = online balanced offsets (uniform target prior), none = plain FixMatch.
    debias: str = "paper"
    threshold: float = 0.95
    prior_momentum: float = 0.999
    lambda_u: float = 1.0
    ema_momentum: float = 0.999
    # How the teacher gets its BatchNorm statistics (TEACHER_BN_MODES) and whether its momentum warms
    # up; these defaults are the reference code's teacher (ssl's own defaults: config/defaults.py).
    teacher_bn: str = "ema"
    ema_warmup: bool = False
    log_every: int = DEFAULT_LOG_EVERY

    def __post_init__(self) -> None:
        if self.debias not in DEBIAS_MODES:
            raise ValueError(f"debias mode must be one of {', '.join(DEBIAS_MODES)}, got {self.debias!r}")

    @property
    def uses_prior(self) -> bool:
        """Whether the loop keeps a running class prior: DebiasPL with ``tau > 0`` and the balanced
        mode do; plain FixMatch (``--debias none`` or ``tau == 0``) has no prior at all."""
        return self.debias == "balance" or (self.debias == "paper" and self.tau > 0)

    @property
    def loss_tau(self) -> float:
        """The adaptive margin's strength in the unlabeled loss: ``tau`` for the paper's DebiasPL, 0
        (plain cross-entropy) for the balanced mode and for FixMatch."""
        return self.tau if self.debias == "paper" else 0.0


def make_prior(config: TrainConfig) -> ClassPrior | None:
    """The running state of ``config``'s debias mode: a :class:`BalancingPrior` (prior and offsets) for
    the balanced mode, a :class:`ClassPrior` for DebiasPL, none for FixMatch."""
    if config.debias == "balance":
        return BalancingPrior(config.num_classes, config.prior_momentum)
    return ClassPrior(config.num_classes, config.prior_momentum) if config.uses_prior else None


def select_targets(z_w: Tensor, prior: ClassPrior | None, config: TrainConfig) -> tuple[Tensor, Tensor, Tensor]:
    """``(targets, confidence, mask)`` of one set of weak-view logits in ``config``'s debias mode, with
    the running ``prior`` as it was before this batch (``None``: the mode keeps none)."""
    if isinstance(prior, BalancingPrior):
        return select_balanced_pseudo_labels(z_w, prior.offsets, config.threshold)
    tau = config.tau if config.debias == "paper" else 0.0
    probs = prior.probs if prior is not None else torch.full((config.num_classes,), 1.0 / config.num_classes)
    return select_pseudo_labels(z_w, probs, tau, config.threshold)


@dataclass(frozen=True)
class Fallback:
    """Per-row fallback labels indexed by dataset index (the zero-shot recipe: CLIP's labels).

    ``targets[i]`` is the fallback label of dataset row ``i`` (``-1``: none), ``confidence[i]`` its
    confidence; it replaces the student's pseudo-label where the student is not confident and the
    fallback confidence is at least ``threshold``.
    """

    targets: Tensor
    confidence: Tensor
    threshold: float

    def to(self, device: torch.device | str) -> Fallback:
        return Fallback(self.targets.to(device), self.confidence.to(device), self.threshold)


def apply_fallback(
    targets: Tensor, mask: Tensor, fallback_targets: Tensor, fallback_confidence: Tensor, threshold: float
) -> tuple[Tensor, Tensor]:
    """Where ``mask == 0`` and ``fallback_confidence >= threshold`` (and a fallback label exists),
    the row takes the fallback label with mask 1; every other row is unchanged."""
    use = (mask <= 0) & (fallback_confidence >= threshold) & (fallback_targets >= 0)
    return torch.where(use, fallback_targets, targets), torch.where(use, torch.ones_like(mask), mask)


class EMATeacher:
    """An exponential moving average of a model's parameters, kept in eval mode:
    ``teacher = m * teacher + (1 - m) * student`` after every step.

    ``bn`` says what happens to the floating-point buffers (BatchNorm running statistics): ``ema``
    averages them like the parameters (the reference code), ``copy`` copies the student's. Integer
    buffers (``num_batches_tracked``) are always copied. With ``warmup`` the momentum of update
    ``t`` is :func:`warmup_momentum` ``(momentum, t)``; ``updates`` counts the updates so far (it is
    part of the checkpoint, so a resumed run continues the warm-up where it stopped).
    """

    def __init__(self, model: nn.Module, momentum: float, bn: str = "ema", warmup: bool = False):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        if bn not in TEACHER_BN_MODES:
            raise ValueError(f"teacher BatchNorm mode must be one of {', '.join(TEACHER_BN_MODES)}, got {bn!r}")
        self.momentum = momentum
        self.bn = bn
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self._buffers = {name for name, _ in self.module.named_buffers()}
        self._forward: Callable[[Tensor], Tensor] = self.module

    def set_forward(self, forward: Callable[[Tensor], Tensor]) -> None:
        """Run the teacher through ``forward`` (e.g. a compiled or channels-last view of ``module``,
        sharing its weights) instead of calling ``module`` directly."""
        self._forward = forward

    def current_momentum(self) -> float:
        """The momentum the next :meth:`update` uses."""
        return warmup_momentum(self.momentum, self.updates) if self.warmup else self.momentum

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_momentum()
        student = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point and not (self.bn == "copy" and name in self._buffers):
                value.lerp_(student[name].to(value.dtype), weight)
            else:
                value.copy_(student[name])
        self.updates += 1

    def __call__(self, inputs: Tensor) -> Tensor:
        return self._forward(inputs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


@dataclass(frozen=True)
class StepOutput:
    loss: Tensor
    loss_x: Tensor
    loss_u: Tensor
    targets: Tensor
    mask: Tensor


def fixmatch_step(
    model: nn.Module,
    teacher: EMATeacher,
    prior: ClassPrior | None,
    labeled: LabeledBatch,
    unlabeled: UnlabeledBatch,
    config: TrainConfig,
    fallback: Fallback | None = None,
) -> StepOutput:
    """The losses of one step (and the prior update); no optimizer step.

    With several weak/strong views (``--multiviews``, as in the reference code): the pseudo-labels
    come from the mean of the weak-view logits and from every weak view on its own, and the
    unlabeled loss averages every (pseudo-label set, strong view) pair. The returned ``targets`` /
    ``mask`` are those of the mean-logit set.
    """
    with torch.no_grad():
        weak_logits = teacher(torch.cat(unlabeled.weak)).float().chunk(len(unlabeled.weak))
    logits = model(torch.cat([labeled.inputs, *unlabeled.strong]))
    logits_x = logits[: labeled.inputs.shape[0]]
    strong_logits = logits[labeled.inputs.shape[0] :].chunk(len(unlabeled.strong))

    mean_weak = torch.stack(weak_logits).mean(dim=0)
    uniform = torch.full((config.num_classes,), 1.0 / config.num_classes, device=mean_weak.device)
    candidates = [mean_weak] + (list(weak_logits) if len(weak_logits) > 1 else [])
    selections = []
    for z_w in candidates:
        targets, _, mask = select_targets(z_w, prior, config)
        if fallback is not None:
            rows = unlabeled.indices.to(fallback.targets.device)
            targets, mask = apply_fallback(
                targets, mask, fallback.targets[rows], fallback.confidence[rows], fallback.threshold
            )
        selections.append((targets, mask))
    if isinstance(prior, BalancingPrior):  # with the offsets the labels above were selected with
        prior.update_offsets(torch.softmax(mean_weak - prior.offsets.to(mean_weak.device), dim=-1))
    if prior is not None:
        prior.update(torch.softmax(mean_weak, dim=-1))
    prior_after = prior.probs if prior is not None else uniform
    losses_u = [
        adaptive_margin_loss(z_s, targets, prior_after, config.loss_tau, mask)
        for targets, mask in selections
        for z_s in strong_logits
    ]
    loss_u = torch.stack(losses_u).mean()
    loss_x = F.cross_entropy(logits_x.float(), labeled.targets)
    loss = loss_x + config.lambda_u * loss_u
    return StepOutput(loss, loss_x.detach(), loss_u.detach(), selections[0][0], selections[0][1])
