"""The options of ``clipdebias zeroshot``: defaults per student, resolution and checks.

:func:`resolve_zeroshot_config` turns what the user gave into a frozen :class:`ZeroShotConfig`
(written to ``config.json``); :func:`loop_settings` hands its training knobs to the students.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdebias.config import defaults
from clipdebias.config.checks import check_training_ranges
from clipdebias.data.sources import DATASETS
from clipdebias.training.models import HEADS
from clipdebias.training.step import TrainConfig
from clipdebias.utils.errors import UserError

STUDENTS = ("head", "clip", "resnet50")
# Options that may differ between a run and its --resume.
RESUME_MAY_CHANGE = (
    "resume", "device", "workers", "threads", "eval_batch_size", "encode_batch_size", "cache_dir", "report",
)  # fmt: skip


@dataclass(frozen=True)
class SharedDefaults:
    """Defaults of the options every student shares: the CVPR 2022 zero-shot recipe
    (``scripts/zsl/train_DebiasPL_ImageNet.sh``: tau 0.4, threshold 0.8, prior momentum 0.99; the
    confident set at CLIP confidence 0.95; CLIP's label where its confidence is >= 0.3)."""

    tau: float = defaults.TAU
    select_threshold: float = defaults.THRESHOLD
    clip_fallback: float = 0.3
    threshold: float = 0.8
    prior_momentum: float = 0.99
    head: str = "linear"
    views: int = 2
    feature_dropout: float = 0.1
    feature_noise: float = 0.5
    min_steps_per_epoch: int = 50


@dataclass(frozen=True)
class StudentDefaults:
    """Per-student defaults (docs/usage.md explains where each comes from)."""

    epochs: int
    batch_size: int
    mu: int
    lambda_u: float
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_momentum: float
    multiviews: bool
    image_size: int | None  # None: not an option (head) or CLIP's own input size (clip)


SHARED_DEFAULTS = SharedDefaults()
STUDENT_DEFAULTS: dict[str, StudentDefaults] = {
    # Chosen on the digits proxy's holdout (benchmarks/zeroshot_head_digits.py, docs/results.md).
    "head": StudentDefaults(
        epochs=10, batch_size=256, mu=4, lambda_u=1.0, lr=0.15, weight_decay=0.0, warmup_epochs=0,
        ema_momentum=0.99, multiviews=False, image_size=None,
    ),
    # Common practice for fine-tuning CLIP (AdamW, small lr, wd 0.1); not tuned here (no GPU, no weights).
    "clip": StudentDefaults(
        epochs=10, batch_size=64, mu=2, lambda_u=1.0, lr=1e-5, weight_decay=0.1, warmup_epochs=1,
        ema_momentum=0.999, multiviews=False, image_size=None,
    ),
    # The reference zero-shot script: lr 0.003, cosine, 5 warm-up epochs, 50 epochs, batch 64,
    # mu 5, lambda_u 10, wd 1e-4, EMA 0.999, multi-views, 224 px.
    "resnet50": StudentDefaults(
        epochs=50, batch_size=64, mu=5, lambda_u=10.0, lr=0.003, weight_decay=1e-4, warmup_epochs=5,
        ema_momentum=0.999, multiviews=True, image_size=224,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ZeroShotConfig:
    """Every resolved option of a ``zeroshot`` run (written to ``config.json``)."""

    dataset: str
    out: str
    data_root: str | None
    model: str
    pretrained: str
    quick_gelu: bool | None
    precision: str
    classnames: str | None
    templates: str | None
    logit_scale: float | None
    student: str
    head: str
    views: int
    feature_dropout: float
    feature_noise: float
    select_threshold: float
    select_topk_per_class: int | None
    clip_fallback: float
    tau: float
    no_debias: bool
    threshold: float
    prior_momentum: float
    lambda_u: float
    mu: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    min_steps_per_epoch: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_momentum: float
    init_weights: str | None
    image_size: int | None
    multiviews: bool
    amp: bool | None
    seed: int
    device: str
    workers: int | None
    threads: int | None
    encode_batch_size: int
    eval_batch_size: int
    cache_dir: str | None
    report: bool
    resume: bool

    @property
    def method(self) -> str:
        return "debiaspl" if self.tau > 0 else "fixmatch"


_HEAD_ONLY = ("views", "feature_dropout", "feature_noise")


def resolve_zeroshot_config(dataset: str, out: str | Path, student: str | None = None, **given: Any) -> ZeroShotConfig:
    """Fill every option left as ``None`` with the student's default and check values and combinations.

    Raises :class:`UserError` for unknown names, bad values and options that do not apply to the student.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    student = student or "head"
    if student not in STUDENTS:
        raise UserError(f"unknown --student {student!r}; choose one of: {', '.join(STUDENTS)}")
    no_debias = bool(given.pop("no_debias", False))
    if no_debias and given.get("tau") not in (None, 0, 0.0):
        raise UserError(f"--no-debias means --tau 0; it cannot be combined with --tau {given['tau']}")
    if no_debias:
        given["tau"] = 0.0
    for key in _HEAD_ONLY:
        if student != "head" and given.get(key) is not None:
            raise UserError(f"--{key.replace('_', '-')} applies to --student head only")
    if student != "resnet50" and given.get("init_weights") is not None:
        raise UserError("--init-weights applies to --student resnet50 only (head and clip start from CLIP)")
    if student != "resnet50" and given.get("image_size") is not None:
        raise UserError("--image-size applies to --student resnet50 only (head and clip use CLIP's input size)")
    if student == "head" and given.get("multiviews") is not None:
        raise UserError("--multiviews/--single-view apply to --student clip and resnet50 (the head uses --views)")
    values: dict[str, Any] = {
        "data_root": None, "model": "ViT-B-32", "pretrained": "openai", "quick_gelu": None, "precision": "fp32",
        "classnames": None, "templates": None, "logit_scale": None, "select_topk_per_class": None,
        "steps_per_epoch": None, "init_weights": None, "amp": None, "seed": 0, "device": "auto", "workers": None, "threads": None,
        "encode_batch_size": 64, "eval_batch_size": 256, "cache_dir": None, "report": True, "resume": False,
    }  # fmt: skip
    values.update(dataclasses.asdict(SHARED_DEFAULTS))
    values.update(dataclasses.asdict(STUDENT_DEFAULTS[student]))
    values.update({k: v for k, v in given.items() if v is not None})
    for key in ("data_root", "init_weights", "cache_dir", "classnames"):
        if values[key] is not None:
            values[key] = str(Path(values[key]).expanduser())
    unknown = set(values) - {f.name for f in dataclasses.fields(ZeroShotConfig)}
    if unknown:
        raise TypeError(f"unknown zeroshot options: {sorted(unknown)}")
    config = ZeroShotConfig(
        dataset=dataset, out=str(Path(out).expanduser()), student=student, no_debias=no_debias, **values
    )
    _check_ranges(config)
    return config


def _check_ranges(c: ZeroShotConfig) -> None:
    check_training_ranges(c)
    checks = [
        (0.0 <= c.select_threshold <= 1.0, "--select-threshold must be in [0, 1]"),
        (c.select_topk_per_class is None or c.select_topk_per_class >= 1, "--select-topk-per-class must be >= 1"),
        (c.views >= 0, "--views must be >= 0"),
        (0.0 <= c.feature_dropout < 1.0, "--feature-dropout must be in [0, 1)"),
        (c.feature_noise >= 0, "--feature-noise must be >= 0"),
        (c.image_size is None or c.image_size >= 8, "--image-size must be >= 8"),
        (c.logit_scale is None or (c.logit_scale > 0 and math.isfinite(c.logit_scale)), "--logit-scale must be > 0"),
        (c.workers is None or c.workers >= 0, "--workers must be >= 0"),
        (c.threads is None or c.threads >= 1, "--threads must be >= 1"),
        (c.encode_batch_size >= 1, "--encode-batch-size must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if c.head not in HEADS:
        raise UserError(f"unknown --head {c.head!r}; choose one of: {', '.join(HEADS)}")


@dataclass(frozen=True)
class LoopSettings:
    """The training knobs shared by every student (resolved options of ``zeroshot``)."""

    tau: float
    threshold: float
    prior_momentum: float
    lambda_u: float
    ema_momentum: float
    epochs: int
    steps_per_epoch: int | None  # None: one pass over the unlabeled rest, at least min_steps_per_epoch
    min_steps_per_epoch: int
    batch_size: int
    mu: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    clip_fallback: float
    seed: int

    def steps_for(self, unlabeled_rows: int) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return max(self.min_steps_per_epoch, math.ceil(unlabeled_rows / (self.mu * self.batch_size)))

    def train_config(self, num_classes: int, unlabeled_rows: int) -> TrainConfig:
        return TrainConfig(
            num_classes=num_classes,
            epochs=self.epochs,
            steps_per_epoch=self.steps_for(unlabeled_rows),
            tau=self.tau,
            threshold=self.threshold,
            prior_momentum=self.prior_momentum,
            lambda_u=self.lambda_u,
            ema_momentum=self.ema_momentum,
        )


@dataclass(frozen=True)
class HeadSettings:
    """The ``head`` student: ``linear`` or ``mlp``, and the strong view's feature noise."""

    head: str
    feature_dropout: float
    feature_noise: float


def loop_settings(config: ZeroShotConfig) -> LoopSettings:
    return LoopSettings(
        tau=config.tau, threshold=config.threshold, prior_momentum=config.prior_momentum, lambda_u=config.lambda_u,
        ema_momentum=config.ema_momentum, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
        min_steps_per_epoch=config.min_steps_per_epoch, batch_size=config.batch_size, mu=config.mu, lr=config.lr,
        weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, clip_fallback=config.clip_fallback,
        seed=config.seed,
    )  # fmt: skip
