"""``clipdebias ssl``: semi-supervised training with FixMatch + DebiasPL on a labeled split.

data -> labeled/unlabeled split (seeded per class, or ``--labeled-index``) -> batch streams ->
the training loop (:mod:`clipdebias.training.loop`) -> ``metrics.json`` in the run folder.
Per-dataset defaults are in :data:`clipdebias.config.defaults.SSL_DEFAULTS` (here :data:`DEFAULTS`),
documented in docs/usage.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clipdebias.config import defaults
from clipdebias.config.budgets import parse_label_budget
from clipdebias.config.checks import check_all, check_choice, check_training_ranges
from clipdebias.config.defaults import SSL_DEFAULTS as DEFAULTS
from clipdebias.config.defaults import SSLDefaults as SSLDefaults
from clipdebias.config.resolve import fill_options, run_config_json
from clipdebias.data.skipped import SkippedImages
from clipdebias.data.sources import DATASETS, GRAYSCALE_DATASETS, MIN_CLASSES, ImageSource, check_dataset, open_dataset
from clipdebias.data.splits import split_labeled
from clipdebias.data.streams import StreamSpec, build_streams
from clipdebias.pseudolabels.files import read_csv_columns
from clipdebias.training.loop import ADDED_SETTINGS, ProgressEvent, Runtime, debias_mode, train
from clipdebias.training.models import ARCHS, build_model, check_init_weights_file
from clipdebias.training.optim import cosine_schedule, make_sgd
from clipdebias.training.run_folder import RunFolder, check_resume
from clipdebias.training.run_layout import LABELED_INDEX, UNLABELED_INDEX
from clipdebias.training.step import Fallback, TrainConfig
from clipdebias.utils import distributed
from clipdebias.utils.atomic import prepare_dir
from clipdebias.utils.device import resolve_device, training_workers
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.formatting import count_of
from clipdebias.utils.threads import torch_threads

# Fixed seed of the --holdout split (independent of --seed, so every seed is tuned on the same rows).
HOLDOUT_SEED = 12345


@dataclass(frozen=True)
class SSLConfig:
    """Every resolved option of an ``ssl`` run (written to ``config.json``)."""

    dataset: str
    out: str
    data_root: str | None
    labels: str
    labeled_index: str | None
    holdout: float
    tau: float  # 0 unless debias is "paper"
    debias: str  # paper | balance | none; "paper" with tau 0 is recorded as "none" (the same training)
    threshold: float
    prior_momentum: float
    lambda_u: float
    mu: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_momentum: float
    teacher_bn: str
    ema_warmup: bool
    arch: str
    init_weights: str | None
    image_size: int
    multiviews: bool
    no_debias: bool  # --no-debias given (a synonym of --debias none)
    clip_pseudolabels: str | None
    clip_fallback: float
    seed: int
    device: str
    workers: int
    eval_batch_size: int
    resume: bool
    precision: str = defaults.TRAIN_PRECISION
    compile: bool = False
    sync_bn: bool = False
    prefetch_factor: int = defaults.PREFETCH_FACTOR
    threads: int | None = None  # None: torch's own default

    @property
    def method(self) -> str:
        return defaults.METHOD_OF_DEBIAS[self.debias]


# Options that may differ between a run and its --resume (how it runs, not what it computes); no_debias
# only says how "--debias none" was spelled.
RESUME_MAY_CHANGE = (
    "resume", "device", "workers", "threads", "eval_batch_size", "precision", "compile", "prefetch_factor",
    "no_debias",
)  # fmt: skip


def _resolve_debias(given: dict[str, Any], dataset_mode: str) -> tuple[str, bool]:
    """``(mode, no_debias)`` of the user's ``--debias`` / ``--no-debias`` / ``--tau`` (``given`` loses
    ``no_debias``; its ``tau`` becomes 0 outside the paper mode). ``--tau`` without ``--debias`` means
    the paper mode (the only one it applies to); with neither, the dataset's mode. Raises :class:`OptionError`."""
    no_debias = bool(given.pop("no_debias", False) or False)
    mode = given.get("debias")
    if no_debias and mode not in (None, "none"):
        raise OptionError("debias", f"{mode} contradicts --no-debias (a synonym of --debias none)")
    implied = "paper" if given.get("tau") is not None else dataset_mode
    mode = "none" if no_debias else (mode or implied)
    check_choice("debias", mode, defaults.DEBIAS_MODES)
    if mode != "paper":
        if given.get("tau") is not None:
            spelled = "--no-debias" if no_debias else f"--debias {mode}"
            raise OptionError("tau", f"applies to --debias paper only; {spelled} does not use it")
        given["tau"] = 0.0
    return mode, no_debias


def resolve_ssl_config(dataset: str, out: str | Path, **given: Any) -> SSLConfig:
    """Fill every option the user left as ``None`` with the dataset's default and check ranges.

    ``steps_per_epoch`` may stay ``None`` (derived from the unlabeled set size by :func:`run_ssl`).
    Raises :class:`UserError` for unknown datasets, bad values and contradicting options.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    given["debias"], no_debias = _resolve_debias(given, DEFAULTS[dataset].debias)
    values = fill_options(
        "ssl",
        SSLConfig,
        [defaults.SSL_OPTIONS, dataclasses.asdict(DEFAULTS[dataset])],
        given,
        ("data_root", "labeled_index", "init_weights", "clip_pseudolabels"),
    )
    if values["workers"] is None:
        values["workers"] = 0 if dataset == "digits" else training_workers()
    if values["debias"] == "paper" and values["tau"] == 0:
        values["debias"] = "none"  # --tau 0 is FixMatch: recorded as such, so both spellings resume each other
    config = SSLConfig(dataset=dataset, out=str(Path(out).expanduser()), no_debias=no_debias, **values)
    _check_ranges(config)
    return config


def _check_ranges(c: SSLConfig) -> None:
    check_training_ranges(c)
    parse_label_budget(c.labels)
    check_all(
        [
            (c.image_size >= 8, "image_size", "must be >= 8"),
            (0.0 <= c.holdout < 1.0, "holdout", "must be in [0, 1)"),
            (c.prefetch_factor >= 1, "prefetch_factor", "must be >= 1"),
        ]
    )
    check_choice("precision", c.precision, defaults.PRECISIONS)
    check_choice("teacher_bn", c.teacher_bn, defaults.TEACHER_BN_MODES)
    check_choice("arch", c.arch, ARCHS)
    if c.arch != "cnn" and c.dataset in GRAYSCALE_DATASETS:
        raise UserError(f"--arch {c.arch} needs RGB images; use --arch cnn for grayscale datasets")


# --- splits -------------------------------------------------------------------------------------


def holdout_split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(pool, holdout)`` positions: a stratified ``fraction`` of every class held out (fixed seed)."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    held = []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        count = int(math.floor(fraction * len(members) + 0.5))
        held.append(rng.permutation(members)[:count])
    holdout = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), holdout), holdout


def read_labeled_index(path: str | Path, train: ImageSource) -> np.ndarray:
    """Positions listed in a ``labeled_index.csv`` (``index,path,label``), checked against ``train``."""
    try:
        table = pd.read_csv(path, encoding_errors="surrogateescape")  # file names need not be UTF-8
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read --labeled-index {str(path)!r}: {err}") from err
    missing = [c for c in ("index", "label") if c not in table.columns]
    if missing:
        raise UserError(
            f"--labeled-index {str(path)!r} lacks the column(s) {', '.join(missing)} (expected index,path,label)"
        )
    if len(table) == 0:
        raise UserError(f"--labeled-index {str(path)!r} has no rows")
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or (index % 1 != 0).any() or index.min() < 0 or index.max() >= len(train):
        raise UserError(f"--labeled-index {str(path)!r}: 'index' must hold integers in [0, {len(train)})")
    rows = index.to_numpy(dtype=np.int64)
    if len(np.unique(rows)) != len(rows):
        raise UserError(f"--labeled-index {str(path)!r} lists an index twice")
    labels = pd.to_numeric(table["label"], errors="coerce").to_numpy()
    wrong = np.flatnonzero(train.labels[rows] != labels)
    if len(wrong):
        i = wrong[0]
        raise UserError(
            f"--labeled-index {str(path)!r}: row {i} says index {rows[i]} has label {labels[i]}, the dataset says "
            f"{train.labels[rows[i]]} (was the file written for another dataset?)"
        )
    if "path" in table.columns and train.path(int(rows[0])) != str(table["path"].iloc[0]):
        raise UserError(
            f"--labeled-index {str(path)!r}: index {rows[0]} is {train.path(int(rows[0]))!r} here, "
            f"not {table['path'].iloc[0]!r}"
        )
    return np.sort(rows)


def choose_rows(config: SSLConfig, train: ImageSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labeled, unlabeled, holdout)`` positions in the train split."""
    pool, holdout = (
        holdout_split(train.labels, config.holdout)
        if config.holdout > 0
        else (np.arange(len(train)), np.zeros(0, dtype=np.int64))
    )
    if config.labeled_index is not None:
        labeled = read_labeled_index(config.labeled_index, train)
        if np.intersect1d(labeled, holdout).size:
            raise UserError("--labeled-index lists images of the --holdout split; use another file or --holdout 0")
    else:
        chosen, _ = split_labeled(train.labels[pool], parse_label_budget(config.labels), config.seed, train.classes)
        labeled = pool[chosen]
    unlabeled = np.setdiff1d(pool, labeled)
    return labeled, unlabeled, holdout


def read_clip_pseudolabels(
    path: str | Path, num_rows: int, num_classes: int, dataset_labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, confidence)`` of length ``num_rows`` from a pseudo-label CSV (``index``,
    ``pseudo_label``, ``confidence``); rows the file does not list get target -1, confidence 0.
    With ``dataset_labels`` (the train split's labels, -1 where unknown), the file's ``label``
    column must agree wherever both are known: a CSV of another dataset is refused."""
    try:
        table = read_csv_columns(path, ("index", "pseudo_label", "confidence", "label"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read --clip-pseudolabels {str(path)!r}: {err}") from err
    missing = [c for c in ("index", "pseudo_label", "confidence") if c not in table.columns]
    if missing:
        raise UserError(
            f"--clip-pseudolabels {str(path)!r} lacks the column(s) {', '.join(missing)} (see docs/formats.md)"
        )
    index = pd.to_numeric(table["index"], errors="coerce")
    label = pd.to_numeric(table["pseudo_label"], errors="coerce")
    confidence = pd.to_numeric(table["confidence"], errors="coerce")
    if index.isna().any() or (index % 1 != 0).any() or (len(index) and (index.min() < 0 or index.max() >= num_rows)):
        raise UserError(
            f"--clip-pseudolabels {str(path)!r}: 'index' must hold integers in [0, {num_rows}) "
            "(positions in the train split)"
        )
    if label.isna().any() or (label % 1 != 0).any() or (len(label) and (label.min() < 0 or label.max() >= num_classes)):
        raise UserError(f"--clip-pseudolabels {str(path)!r}: 'pseudo_label' must hold class ids in [0, {num_classes})")
    if confidence.isna().any() or (len(confidence) and (confidence.min() < 0 or confidence.max() > 1)):
        raise UserError(f"--clip-pseudolabels {str(path)!r}: 'confidence' must hold numbers in [0, 1]")
    rows = index.to_numpy(dtype=np.int64)
    if dataset_labels is not None and "label" in table.columns:
        truth = pd.to_numeric(table["label"], errors="coerce").to_numpy()
        known = ~np.isnan(truth) & (truth >= 0) & (dataset_labels[rows] >= 0)
        wrong = np.flatnonzero(known & (truth != dataset_labels[rows]))
        if len(wrong):
            i = wrong[0]
            raise UserError(
                f"--clip-pseudolabels {str(path)!r}: row {i} says index {rows[i]} has label {int(truth[i])}, the "
                f"dataset says {int(dataset_labels[rows[i]])} ({count_of(len(wrong), 'such row')}; "
                "was the file written for another dataset?)"
            )
    targets = np.full(num_rows, -1, dtype=np.int64)
    scores = np.zeros(num_rows, dtype=np.float32)
    targets[rows] = label.to_numpy(dtype=np.int64)
    scores[rows] = confidence.to_numpy(dtype=np.float32)
    return targets, scores


# --- the run --------------------------------------------------------------------------------------


def _config_json(config: SSLConfig, classes: list[str]) -> dict[str, Any]:
    return run_config_json("ssl", config, classes)


def _check_resume(run: RunFolder, config: SSLConfig, classes: list[str]) -> None:
    added = {**ADDED_SETTINGS, "debias": debias_mode(run.read_config() or {})}
    check_resume(run, _config_json(config, classes), config.resume, RESUME_MAY_CHANGE, added)


def run_ssl(config: SSLConfig, progress: Callable[[ProgressEvent], None] | None = None) -> dict[str, Any]:
    """Run ``ssl`` end to end; write the run folder; return the final metrics (``metrics.json``).

    Under torchrun call it in every process: it joins the process group for the run, every rank
    trains on its part of each global batch, and only rank 0 writes files and reports ``progress``;
    every rank returns the same (global) metrics.
    """
    device = resolve_device(config.device)
    with torch_threads(config.threads), distributed.session(device):
        return _run_ssl(config, device, progress)


def _run_ssl(
    config: SSLConfig, device: torch.device, progress: Callable[[ProgressEvent], None] | None
) -> dict[str, Any]:
    check_dataset(config.dataset, "train", config.data_root, MIN_CLASSES)  # the checks that cost nothing first
    if config.init_weights is not None:
        check_init_weights_file(config.init_weights)
    distributed.on_main(lambda: prepare_dir(config.out, "--out"))  # before the folder scan; rank 0 writes
    train_split = open_dataset(config.dataset, "train", config.data_root)
    labeled, unlabeled, holdout = choose_rows(config, train_split)
    if config.holdout > 0:
        evaluation, eval_rows = train_split, holdout
    else:
        evaluation = open_dataset(config.dataset, "val", config.data_root)
        eval_rows = np.arange(len(evaluation))
    if config.steps_per_epoch is None:
        config = dataclasses.replace(
            config, steps_per_epoch=max(1, math.ceil(len(unlabeled) / (config.mu * config.batch_size)))
        )
    fallback = None
    if config.clip_pseudolabels is not None:
        targets, confidence = read_clip_pseudolabels(
            config.clip_pseudolabels, len(train_split), train_split.num_classes, np.asarray(train_split.labels)
        )
        fallback = Fallback(torch.as_tensor(targets), torch.as_tensor(confidence), config.clip_fallback)

    run = RunFolder(config.out, writes=distributed.is_main_process())
    skipped = SkippedImages(
        run.read_skipped_images() if config.resume else (), on_new=lambda found: run.write_skipped_images(list(found))
    )

    def start_run_folder() -> None:
        run.remove_abandoned_temporaries()
        run.write_config(_config_json(config, train_split.classes))
        for name, rows in ((LABELED_INDEX, labeled), (UNLABELED_INDEX, unlabeled)):
            run.write_index(name, [(int(i), train_split.path(int(i)), int(train_split.labels[i])) for i in rows])

    distributed.on_main(lambda: _check_resume(run, config, train_split.classes))

    torch.manual_seed(config.seed)
    spec = StreamSpec(
        dataset=config.dataset,
        batch_size=config.batch_size,
        mu=config.mu,
        views=2 if config.multiviews else 1,
        seed=config.seed,
        image_size=config.image_size,
        workers=config.workers,
        eval_batch_size=config.eval_batch_size,
        prefetch_factor=config.prefetch_factor,
    )
    streams = build_streams(train_split, labeled, unlabeled, evaluation, eval_rows, spec, device, skipped)
    model = build_model(
        config.arch, train_split.num_classes, streams.in_channels, config.image_size, config.init_weights
    ).to(device)
    # only now, with --init-weights read: a run that fails before it starts must not leave a folder
    # that "already holds a run" and refuses the corrected command
    distributed.on_main(start_run_folder)
    optimizer = make_sgd(model, config.lr, config.weight_decay)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = cosine_schedule(optimizer, total_steps, config.warmup_epochs * config.steps_per_epoch)
    loop_config = TrainConfig(
        num_classes=train_split.num_classes,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        tau=config.tau,
        debias=config.debias,
        threshold=config.threshold,
        prior_momentum=config.prior_momentum,
        lambda_u=config.lambda_u,
        ema_momentum=config.ema_momentum,
        teacher_bn=config.teacher_bn,
        ema_warmup=config.ema_warmup,
    )
    runtime = Runtime(
        precision=config.precision,
        channels_last=device.type == "cuda",
        compile=config.compile,
        sync_batchnorm=config.sync_bn,
    )
    result = train(
        loop_config,
        model,
        optimizer,
        scheduler,
        streams.labeled,
        streams.unlabeled,
        streams.evaluate,
        device=device,
        run=run,
        resume=config.resume,
        fallback=fallback,
        progress=progress,
        runtime=runtime,
    )
    for found in distributed.all_gather_objects(list(skipped)):  # each rank met the unreadable images of its part
        skipped.extend(found)
    metrics = {
        "method": config.method,
        "dataset": config.dataset,
        "num_classes": train_split.num_classes,
        "classes": train_split.classes,
        "top1": result.final_eval.top1,
        "top5": result.final_eval.top5,
        "per_class_top1": result.final_eval.per_class_top1,
        "pseudo_labels": result.pseudo_labels.as_dict(),
        "prior": result.prior,
        "eval_split": "holdout" if config.holdout > 0 else "val",
        "eval_images": result.final_eval.count,
        "labeled_images": int(len(labeled)),
        "unlabeled_images": int(len(unlabeled)),
        "skipped_images": len(skipped),
        "epochs": config.epochs,
        "steps": result.steps,
        "seed": config.seed,
        "elapsed_s": result.elapsed_s,
        "resumed_from_epoch": result.resumed_from_epoch,
        "images_per_s": result.images_per_s,
        "world_size": result.world_size,
    }
    run.write_metrics(metrics)
    return metrics
