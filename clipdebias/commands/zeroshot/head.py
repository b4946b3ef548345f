"""The middle of ``zeroshot`` as functions over arrays: no images, no CLIP model, no files.

(train embeddings [+ augmented-view embeddings], CLIP's text classifier and logit scale,
evaluation embeddings and labels, settings) -> debiased zero-shot pseudo-labels -> confident set and
unlabeled rest -> the training loop (:func:`clipdebias.training.loop.train`) on a head initialised from the
classifier -> metrics. :func:`clipdebias.commands.zeroshot.run.run_zeroshot` wraps this with the encoding, the
CSV and the run folder; the image students reuse the pseudo-label, selection and metric pieces.
A benchmark can feed any features and any linear "zero-shot" classifier in (benchmarks/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipdebias.commands.zeroshot.config import HeadSettings, LoopSettings
from clipdebias.data.streams import Shard
from clipdebias.metrics import EvalResult, eval_result
from clipdebias.pseudolabels.labels import PseudoLabels
from clipdebias.pseudolabels.offline import NO_KNN, KnnSettings, corrected_eval_logits, offline_pseudo_labels
from clipdebias.pseudolabels.rows import ZeroShotLogits
from clipdebias.pseudolabels.selection import Selection, select_confident
from clipdebias.training.embedding_streams import EmbeddingStream, FeatureNoise, as_device_tensor, embedding_evaluator
from clipdebias.training.loop import ProgressEvent, TrainResult, train
from clipdebias.training.models import build_head
from clipdebias.training.optim import SGD_MOMENTUM, cosine_schedule, param_groups_weight_decay
from clipdebias.training.run_folder import RunFolder
from clipdebias.training.step import Fallback
from clipdebias.utils.errors import UserError
from clipdebias.utils.progress import Progress


@dataclass(frozen=True)
class ZeroShotArrays:
    """Inputs of the array-level pipeline.

    ``train_ids`` ``[N]``: dataset index of each train row (rows of images that could not be read
    are simply absent); ``train_embeddings`` ``[N, D]`` L2-normalised; ``train_labels`` ``[N]``
    ground truth or -1, used for statistics only; ``views`` ``[K, N, D]`` augmented-view embeddings
    of the same rows (``K`` may be 0); ``classifier`` ``[C, D]`` and ``logit_scale``: the zero-shot
    logits are ``logit_scale * x @ classifier.T``; ``eval_*``: the evaluation split (``eval_ids``:
    dataset indices of its rows, when they matter). ``num_train_images``: length of the train split
    (for tables indexed by dataset index).
    """

    train_ids: np.ndarray
    train_embeddings: np.ndarray
    train_labels: np.ndarray
    classifier: torch.Tensor
    logit_scale: float
    eval_embeddings: np.ndarray
    eval_labels: np.ndarray
    views: np.ndarray | None = None
    num_train_images: int | None = None
    eval_ids: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.classifier.shape[0])

    @property
    def num_views(self) -> int:
        return 0 if self.views is None else int(self.views.shape[0])

    @property
    def table_size(self) -> int:
        return self.num_train_images if self.num_train_images is not None else int(self.train_ids.max()) + 1


# --- pseudo-labels and the confident set ------------------------------------------------------------


def pseudo_label_train_rows(
    arrays: ZeroShotArrays,
    tau: float,
    select_threshold: float,
    topk_per_class: int | None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    *,
    debias: str = "paper",
    knn: KnnSettings = NO_KNN,
    neighbours: np.ndarray | None = None,
) -> Selection:
    """Corrected zero-shot pseudo-labels of the train rows (``debias`` mode, ``tau`` for paper; first
    refined with ``neighbours``, ``[N, K]`` train row positions, when ``knn.k > 0``; ``selected`` at
    ``select_threshold``) and the confident/rest split; ``progress`` sees the passes over the logits."""
    offline = offline_pseudo_labels(
        train_logits(arrays, device), neighbours, knn, mode=debias, tau=tau, threshold=select_threshold,
        progress=progress, with_teacher=True,
    )  # fmt: skip
    pseudo = offline.pseudo
    confident, rest = select_confident(pseudo.label, pseudo.confidence, select_threshold, topk_per_class)
    if len(confident) == 0:
        raise UserError(
            f"no train image reached --select-threshold {select_threshold:g} (the highest debiased confidence is "
            f"{float(pseudo.confidence.max()):.3f}); lower it, or pick per class with --select-topk-per-class K"
        )
    if len(rest) == 0:
        raise UserError(
            "every train image is in the confident set, none is left to train on as unlabeled; "
            "raise --select-threshold or lower --select-topk-per-class"
        )
    return Selection(pseudo, confident, rest, offline.paper_label, offline.teacher)


def train_logits(arrays: ZeroShotArrays, device: torch.device | str = "cpu") -> ZeroShotLogits:
    """The zero-shot logits of the train rows, computed a chunk at a time."""
    return ZeroShotLogits(arrays.train_embeddings, arrays.classifier, arrays.logit_scale, device)


def zero_shot_eval_as_trained(arrays: ZeroShotArrays, pseudo: PseudoLabels) -> tuple[EvalResult, EvalResult]:
    """CLIP zero-shot on the evaluation rows, plain and corrected as the train rows were (``pseudo``'s
    mode, with the train prior or the train offsets: inductive; no kNN refinement of evaluation rows,
    so pass ``Selection.eval_correction``, with kNN the unrefined train teacher's correction; see
    :func:`clipdebias.pseudolabels.offline.corrected_eval_logits`)."""
    logits = ZeroShotLogits(arrays.eval_embeddings, arrays.classifier, arrays.logit_scale)[:].float()
    labels = torch.as_tensor(np.asarray(arrays.eval_labels), dtype=torch.long)
    return eval_result(logits, labels), eval_result(corrected_eval_logits(logits, pseudo), labels)


def fallback_table(arrays: ZeroShotArrays, selection: Selection, threshold: float) -> Fallback:
    """CLIP's (debiased) label and confidence per dataset index, for the loop's fallback rule."""
    targets = torch.full((arrays.table_size,), -1, dtype=torch.long)
    confidence = torch.zeros(arrays.table_size, dtype=torch.float32)
    ids = torch.as_tensor(arrays.train_ids, dtype=torch.long)
    targets[ids] = torch.as_tensor(selection.pseudo.label, dtype=torch.long)
    confidence[ids] = torch.as_tensor(selection.pseudo.confidence, dtype=torch.float32)
    return Fallback(targets, confidence, threshold)


# --- the head student -------------------------------------------------------------------------------


def head_sgd(model: nn.Module, lr: float, weight_decay: float, logit_scale: float) -> torch.optim.SGD:
    """SGD for a :class:`~clipdebias.training.models.TextHead` whose ``lr`` is relative to the logit scale ``s``.

    The head's classifier starts at ``s`` times the text embeddings, so the logit gaps it must move
    are proportional to ``s``; a plain SGD step moves them by an amount that does not depend on ``s``.
    The classifier's step is therefore ``lr * s`` and the MLP adapter's (whose gradient passes through
    that classifier) ``lr / s``: the same ``lr`` changes the predictions by the same relative amount at
    CLIP's scale of 100 as at any other. Weight decay skips biases, as in :func:`clipdebias.training.optim.make_sgd`.
    """
    groups = []
    for module, step in ((model.fc, lr * logit_scale), (model.adapter, lr / logit_scale)):
        if module is not None:
            groups += param_groups_weight_decay(module, weight_decay, lr=step)
    return torch.optim.SGD(groups, lr=lr * logit_scale, momentum=SGD_MOMENTUM, nesterov=True)


def fit_head(
    arrays: ZeroShotArrays,
    selection: Selection,
    loop: LoopSettings,
    head: HeadSettings,
    *,
    device: torch.device | str = "cpu",
    eval_batch_size: int = 4096,
    run: RunFolder | None = None,
    resume: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Train a :class:`clipdebias.training.models.TextHead` (initialised from the classifier) with the one
    training loop; returns the student and the loop's result (the EMA teacher is evaluated)."""
    device = torch.device(device)
    torch.manual_seed(loop.seed)
    plain = as_device_tensor(arrays.train_embeddings, device)
    dim = plain.shape[1]
    views = (
        as_device_tensor(arrays.views, device)
        if arrays.views is not None and len(arrays.views)
        else torch.zeros((0, *plain.shape), device=device)
    )
    ids = torch.as_tensor(arrays.train_ids, dtype=torch.long, device=device)
    clip_labels = torch.as_tensor(selection.pseudo.label, dtype=torch.long, device=device)
    truth = torch.as_tensor(np.asarray(arrays.train_labels), dtype=torch.long, device=device)
    noise = FeatureNoise(head.feature_dropout, head.feature_noise)
    shard = Shard.current()  # under torchrun: this process's part of every batch

    def stream(rows: np.ndarray, targets: torch.Tensor, batch_size: int, labeled: bool) -> EmbeddingStream:
        positions = torch.as_tensor(rows, dtype=torch.long, device=device)
        return EmbeddingStream(plain, views, targets, ids, positions, batch_size, loop.seed, labeled, noise, shard)

    labeled = stream(selection.confident, clip_labels, loop.batch_size, True)
    unlabeled = stream(selection.rest, truth, loop.batch_size * loop.mu, False)
    evaluate = embedding_evaluator(
        as_device_tensor(arrays.eval_embeddings, device).reshape(-1, dim),
        torch.as_tensor(np.asarray(arrays.eval_labels), dtype=torch.long),
        eval_batch_size,
        arrays.num_classes,
        shard,
    )
    model = build_head(head.head, arrays.classifier, arrays.logit_scale).to(device)
    optimizer = head_sgd(model, loop.lr, loop.weight_decay, arrays.logit_scale)
    config = loop.train_config(arrays.num_classes, len(selection.rest))
    total = config.epochs * config.steps_per_epoch
    scheduler = cosine_schedule(optimizer, total, loop.warmup_epochs * config.steps_per_epoch)
    result = train(
        config, model, optimizer, scheduler, labeled, unlabeled, evaluate,
        device=device, run=run, resume=resume, fallback=fallback_table(arrays, selection, loop.clip_fallback),
        progress=progress,
    )  # fmt: skip
    return model, result


@dataclass(frozen=True)
class ZeroShotOutcome:
    """What the array-level pipeline measured (accuracies in percent)."""

    selection: Selection
    zeroshot: EvalResult
    zeroshot_debiased: EvalResult
    student: EvalResult
    train: TrainResult


def zeroshot_head(
    arrays: ZeroShotArrays,
    loop: LoopSettings,
    head: HeadSettings,
    select_threshold: float,
    topk_per_class: int | None = None,
    *,
    device: torch.device | str = "cpu",
    run: RunFolder | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    knn: KnnSettings = NO_KNN,
    neighbours: np.ndarray | None = None,
) -> ZeroShotOutcome:
    """The whole array-level pipeline: pseudo-labels (``loop.debias``, ``loop.tau``; refined with
    ``neighbours`` by ``knn``), confident split, the zero-shot baselines on the evaluation rows, and
    the trained head's accuracy."""
    selection = pseudo_label_train_rows(
        arrays, loop.tau, select_threshold, topk_per_class, device, debias=loop.debias, knn=knn, neighbours=neighbours
    )
    plain, debiased = zero_shot_eval_as_trained(arrays, selection.eval_correction)
    _, result = fit_head(arrays, selection, loop, head, device=device, run=run, progress=progress)
    return ZeroShotOutcome(selection, plain, debiased, result.final_eval, result)
