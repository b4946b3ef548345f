"""The options of ``clipdebias zeroshot``: resolution and checks (the defaults per student are in
:mod:`clipdebias.config.defaults`).

:func:`resolve_zeroshot_config` turns what the user gave into a frozen :class:`ZeroShotConfig`
(written to ``config.json``); :func:`loop_settings` hands its training knobs to the students.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdebias.clip.jpeg_batches import check_decode
from clipdebias.config import defaults
from clipdebias.config.checks import check_all, check_choice, check_training_ranges
from clipdebias.config.defaults import SHARED_DEFAULTS as SHARED_DEFAULTS
from clipdebias.config.defaults import STUDENT_DEFAULTS as STUDENT_DEFAULTS
from clipdebias.config.defaults import SharedDefaults as SharedDefaults
from clipdebias.config.defaults import StudentDefaults as StudentDefaults
from clipdebias.config.resolve import fill_options
from clipdebias.data.sources import DATASETS, GRAYSCALE_DATASETS
from clipdebias.pseudolabels.offline import KnnSettings, check_knn_settings
from clipdebias.training.models import HEADS
from clipdebias.training.step import TrainConfig
from clipdebias.utils.errors import OptionError, UserError

STUDENTS = ("head", "clip", "resnet50")
# Options that may differ between a run and its --resume.
RESUME_MAY_CHANGE = (
    "resume", "device", "decode", "workers", "threads", "eval_batch_size", "encode_batch_size", "cache_dir", "report",
)  # fmt: skip
# How a config.json written before the renames of 0.1.x spells the options: ``precision`` was the
# encoding precision, ``amp`` (None / True / False) the training precision (auto / bf16 / fp32).
_OLD_AMP = {"auto": None, "bf16": True, "fp32": False}


@dataclass(frozen=True)
class ZeroShotConfig:
    """Every resolved option of a ``zeroshot`` run (written to ``config.json``)."""

    dataset: str
    out: str
    data_root: str | None
    model: str
    pretrained: str
    quick_gelu: bool | None
    encode_precision: str
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
    tau: float  # --debias paper's strength; 0.0 with balance and none (they do not use it)
    no_debias: bool
    debias: str  # paper | balance | none: CLIP's offline labels and the loop's online correction
    knn: int  # kNN refinement of CLIP's train probabilities before the correction; 0 = off
    knn_alpha: float
    knn_steps: int
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
    precision: str  # training: auto (bf16 on CUDA, else fp32), fp32 or bf16 (clip / resnet50 students)
    seed: int
    device: str
    decode: str  # auto, cpu or gpu: who decodes the images CLIP encodes (clipdebias.clip.jpeg_batches)
    workers: int | None
    threads: int | None
    encode_batch_size: int
    eval_batch_size: int
    cache_dir: str | None
    report: bool
    resume: bool

    @property
    def method(self) -> str:
        plain = self.debias == "paper" and self.tau == 0
        return defaults.METHOD_OF_DEBIAS["none" if plain else self.debias]

    @property
    def knn_settings(self) -> KnnSettings:
        return KnnSettings(self.knn, self.knn_alpha, self.knn_steps)

    def trains_in_bf16(self, device_type: str) -> bool:
        """Whether the clip / resnet50 student runs under bf16 autocast on ``device_type``."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")


# Options added after the first release, with the value a run started before them was made with
# (``debias``: none for a --no-debias run, else paper).
_ADDED_OPTIONS = ("debias", "knn", "knn_alpha", "knn_steps")


def in_saved_names(current: dict[str, Any], run: Any) -> dict[str, Any]:
    """``current`` (the ``config.json`` of this run) in the names of the one saved in ``run``, so that
    its ``--resume`` compares like with like: without the options added since (:data:`_ADDED_OPTIONS`)
    when that run predates them and this one keeps their values then; in the old names when that run
    was started before ``precision`` / ``amp`` became ``encode_precision`` / ``precision``; otherwise
    ``current`` itself."""
    saved = run.read_config() if current.get("resume") and run.has_run() else None
    if not saved:
        return current
    if "debias" not in saved:
        then = {"debias": "none" if saved.get("no_debias") else "paper", "knn": 0}
        then |= {"knn_alpha": defaults.KNN_ALPHA, "knn_steps": defaults.KNN_STEPS}
        if all(current.get(key) == value for key, value in then.items()):
            current = {key: value for key, value in current.items() if key not in _ADDED_OPTIONS}
    if "amp" not in saved or "encode_precision" in saved:
        return current
    old = dict(current)
    old["amp"] = _OLD_AMP.get(old.pop("precision"), "?")
    old["precision"] = old.pop("encode_precision")
    return old


_HEAD_ONLY = ("views", "feature_dropout", "feature_noise")


def resolve_zeroshot_config(dataset: str, out: str | Path, student: str | None = None, **given: Any) -> ZeroShotConfig:
    """Fill every option left as ``None`` with the student's default and check values and combinations.

    Raises :class:`UserError` for unknown names, bad values and options that do not apply to the student.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    student = student or defaults.STUDENT
    if student not in STUDENTS:
        raise UserError(f"unknown --student {student!r}; choose one of: {', '.join(STUDENTS)}")
    no_debias = _resolve_debias(given, bool(given.pop("no_debias", False)))
    if student != "head" and dataset in GRAYSCALE_DATASETS:
        raise OptionError("student", f"{student} needs RGB images; {dataset} is grayscale, use --student head")
    for key in _HEAD_ONLY:
        if student != "head" and given.get(key) is not None:
            raise UserError(f"--{key.replace('_', '-')} applies to --student head only")
    if student != "resnet50" and given.get("init_weights") is not None:
        raise UserError("--init-weights applies to --student resnet50 only (head and clip start from CLIP)")
    if student != "resnet50" and given.get("image_size") is not None:
        raise UserError("--image-size applies to --student resnet50 only (head and clip use CLIP's input size)")
    if student == "head" and given.get("multiviews") is not None:
        raise UserError("--multiviews/--single-view apply to --student clip and resnet50 (the head uses --views)")
    values = fill_options(
        "zeroshot",
        ZeroShotConfig,
        [defaults.ZEROSHOT_OPTIONS, dataclasses.asdict(SHARED_DEFAULTS), dataclasses.asdict(STUDENT_DEFAULTS[student])],
        given,
        ("data_root", "init_weights", "cache_dir", "classnames"),
    )
    config = ZeroShotConfig(
        dataset=dataset, out=str(Path(out).expanduser()), student=student, no_debias=no_debias, **values
    )
    _check_ranges(config)
    return config


def _resolve_debias(given: dict[str, Any], no_debias: bool) -> bool:
    """Check ``--debias``, ``--no-debias``, ``--tau`` and the kNN options together and fill ``given``
    (``debias``; ``tau`` 0 for balance and none); returns ``no_debias`` (true for ``--debias none`` too,
    so that it and ``--no-debias`` make the same run)."""
    if no_debias and given.get("tau") not in (None, 0, 0.0):
        raise UserError(f"--no-debias means --tau 0; it cannot be combined with --tau {given['tau']}")
    if no_debias and given.get("debias") not in (None, "none"):
        raise UserError(f"--no-debias means --debias none; it cannot be combined with --debias {given['debias']}")
    if no_debias:
        given["debias"] = "none"
    debias = given.get("debias") or defaults.DEBIAS
    check_choice("debias", debias, defaults.DEBIAS_MODES)
    if debias != "paper" and given.get("tau") is not None and not no_debias:
        raise OptionError("tau", f"applies to --debias paper only; --debias {debias} does not use it")
    if debias != "paper":
        given["tau"] = 0.0
    if not given.get("knn"):
        for key in ("knn_alpha", "knn_steps"):
            if given.get(key) is not None:
                raise OptionError(key, "does not apply with --knn 0 (no neighbours refine CLIP's labels; give --knn K)")
    return no_debias or debias == "none"


def _check_ranges(c: ZeroShotConfig) -> None:
    check_training_ranges(c)
    check_knn_settings(c.knn_settings)
    check_all(
        [
            (c.encode_batch_size >= 1, "encode_batch_size", "must be >= 1"),
            (0.0 <= c.select_threshold <= 1.0, "select_threshold", "must be in [0, 1]"),
            (c.select_topk_per_class is None or c.select_topk_per_class >= 1, "select_topk_per_class", "must be >= 1"),
            (c.views >= 0, "views", "must be >= 0"),
            (0.0 <= c.feature_dropout < 1.0, "feature_dropout", "must be in [0, 1)"),
            (c.feature_noise >= 0, "feature_noise", "must be >= 0"),
            (c.image_size is None or c.image_size >= 8, "image_size", "must be >= 8"),
            (
                c.logit_scale is None or (c.logit_scale > 0 and math.isfinite(c.logit_scale)),
                "logit_scale",
                "must be > 0",
            ),
        ]
    )
    check_choice("head", c.head, HEADS)
    check_choice("encode_precision", c.encode_precision, defaults.PRECISIONS)
    check_choice("precision", c.precision, defaults.ZEROSHOT_PRECISIONS)
    check_decode(c.decode, c.device)


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
    debias: str = defaults.DEBIAS  # the loop's online correction (TrainConfig.debias)

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
            # none runs as paper with tau 0 (the same step), as every run did before the modes: so the
            # checkpoint of a --no-debias run started then still resumes
            debias="paper" if self.debias == "none" else self.debias,
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
        seed=config.seed, debias=config.debias,
    )  # fmt: skip
