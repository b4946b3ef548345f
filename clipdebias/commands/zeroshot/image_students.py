"""The image students of ``zeroshot``: ``clip`` (CLIP's image tower + the text-initialised head) and
``resnet50`` (the reference setting), trained by the one loop on the image streams of ``ssl``
(:mod:`clipdebias.data.streams`) with the confident set as labeled data and CLIP's labels as targets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from clipdebias.clip.backbone import Backbone, load_backbone
from clipdebias.commands.zeroshot.config import ZeroShotConfig, loop_settings
from clipdebias.commands.zeroshot.head import ZeroShotArrays, fallback_table
from clipdebias.data.augment import normalisation_for
from clipdebias.data.batches import BatchStream, LabeledBatch
from clipdebias.data.sources import ImageSource
from clipdebias.data.streams import StreamSpec, build_streams
from clipdebias.pseudolabels.selection import Selection
from clipdebias.training.loop import ProgressEvent, TrainResult, train
from clipdebias.training.models import Autocast, CLIPStudent, build_head, build_model
from clipdebias.training.optim import cosine_schedule, make_adamw, make_sgd
from clipdebias.training.run_folder import RunFolder
from clipdebias.utils.device import training_workers
from clipdebias.utils.errors import OptionError

# Mixed precision of the clip / resnet50 students on a GPU (bf16 needs no loss scaling).
AMP_DTYPE = "bfloat16"
# The reference code's SGD has no Nesterov momentum (its scripts do not pass --nesterov).
RESNET_NESTEROV = False


class RelabeledStream:
    """A labeled batch stream whose targets are replaced by ``targets[dataset index]`` (CLIP's labels)."""

    def __init__(self, inner: BatchStream[LabeledBatch], targets: torch.Tensor):
        self.inner, self.targets = inner, targets

    def batches(self, epoch: int, steps: int) -> Iterator[LabeledBatch]:
        for batch in self.inner.batches(epoch, steps):
            targets = self.targets[batch.indices.to(self.targets.device)].to(batch.targets.device)
            yield LabeledBatch(batch.inputs, targets, batch.indices)


def _amp_dtype(config: ZeroShotConfig, device: torch.device) -> torch.dtype | None:
    use = config.trains_in_bf16(device.type)
    return getattr(torch, AMP_DTYPE) if use else None


def _image_student(
    config: ZeroShotConfig,
    backbone: Backbone,
    classifier: torch.Tensor,
    scale: float,
    num_classes: int,
    device: torch.device,
) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    """``(model, optimizer, image size)`` of the ``clip`` or ``resnet50`` student."""
    amp = _amp_dtype(config, device)
    if config.student == "resnet50":
        assert config.image_size is not None
        model = build_model("resnet50", num_classes, 3, config.image_size, config.init_weights)
        model = Autocast(model, amp) if amp is not None else model
        return (
            model,
            make_sgd(model.to(device), config.lr, config.weight_decay, nesterov=RESNET_NESTEROV),
            config.image_size,
        )
    if backbone.config.precision != "fp32":  # the tower is fine-tuned from float32 weights, whatever encoded
        backbone = load_backbone(dataclasses.replace(backbone.config, precision="fp32"))
    cfg = backbone.preprocess_cfg
    size = cfg["size"]
    if isinstance(size, (list, tuple)):
        if size[0] != size[-1]:
            raise OptionError("student", f"clip needs a square input size; {backbone.name} takes {tuple(size)}")
        size = size[0]
    visual = backbone.model.visual.float()
    visual = Autocast(visual, amp) if amp is not None else visual
    mean, std = normalisation_for(config.dataset)
    model = CLIPStudent(
        visual, build_head(config.head, classifier, scale), mean, std, tuple(cfg["mean"]), tuple(cfg["std"])
    )
    return model, make_adamw(model.to(device), config.lr, config.weight_decay), int(size)


def train_image_student(
    config: ZeroShotConfig,
    backbone: Backbone,
    arrays: ZeroShotArrays,
    selection: Selection,
    train_split: ImageSource,
    evaluation: ImageSource,
    device: torch.device,
    run: RunFolder,
    progress: Callable[[ProgressEvent], None] | None,
) -> TrainResult:
    """Train the ``clip`` / ``resnet50`` student on the image streams; returns the loop's result."""
    torch.manual_seed(config.seed)
    model, optimizer, image_size = _image_student(
        config, backbone, arrays.classifier, arrays.logit_scale, arrays.num_classes, device
    )
    spec = StreamSpec(
        dataset=config.dataset, batch_size=config.batch_size, mu=config.mu, views=2 if config.multiviews else 1,
        seed=config.seed, image_size=image_size,
        workers=config.workers if config.workers is not None else training_workers(),
        eval_batch_size=config.eval_batch_size,
    )  # fmt: skip
    eval_ids = arrays.eval_ids if arrays.eval_ids is not None else np.arange(len(evaluation))
    streams = build_streams(
        train_split,
        arrays.train_ids[selection.confident],
        arrays.train_ids[selection.rest],
        evaluation,
        eval_ids,
        spec,
        device,
    )
    fallback = fallback_table(arrays, selection, config.clip_fallback)
    labeled = RelabeledStream(streams.labeled, fallback.targets.to(device))
    loop = loop_settings(config)
    loop_config = loop.train_config(arrays.num_classes, len(selection.rest))
    total = loop_config.epochs * loop_config.steps_per_epoch
    scheduler = cosine_schedule(optimizer, total, config.warmup_epochs * loop_config.steps_per_epoch)
    return train(
        loop_config, model, optimizer, scheduler, labeled, streams.unlabeled, streams.evaluate,
        device=device, run=run, resume=config.resume, fallback=fallback, progress=progress,
    )  # fmt: skip
