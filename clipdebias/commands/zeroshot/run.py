"""``clipdebias zeroshot``: from unlabeled images to a debiased student that beats CLIP zero-shot.

1. encode the train and evaluation splits through the embedding cache (and, for the ``head``
   student, ``--views`` augmented views of the train split); build the text classifier;
2. debiased zero-shot pseudo-labels of the train split (as ``pseudolabel``) -> ``OUT/pseudolabels.csv``;
3. the confident set (debiased confidence >= ``--select-threshold``, or the ``--select-topk-per-class``
   most confident per class) with CLIP's label as target, and the unlabeled rest;
4. the one training loop (:mod:`clipdebias.training.loop`): FixMatch + DebiasPL on the rest, CLIP's label as
   fallback where CLIP is confident enough and the student is not (``--clip-fallback``);
5. metrics on the evaluation split -> ``OUT/metrics.json``, then ``OUT/report/``.

Students: ``head`` (frozen embeddings, :mod:`clipdebias.commands.zeroshot.head`), ``clip`` (the image tower
with the text-initialised head) and ``resnet50`` (the reference setting), the last two on the image
streams of :mod:`clipdebias.data.streams`. Defaults are in :data:`SHARED_DEFAULTS` and
:data:`STUDENT_DEFAULTS`, documented in docs/usage.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdebias.clip.augmented_views import AugmentedView, augmented_view_id
from clipdebias.clip.backbone import Backbone, BackboneConfig, load_backbone
from clipdebias.clip.cache import EmbeddingStore, encode_split, eval_decoding, read_manifest
from clipdebias.clip.neighbours import array_neighbours, check_k, entry_neighbours, faiss_threads
from clipdebias.clip.prompts import load_prompts, load_templates, text_classifier
from clipdebias.commands.zeroshot.config import RESUME_MAY_CHANGE, ZeroShotConfig, in_saved_names, loop_settings
from clipdebias.commands.zeroshot.head import (
    HeadSettings,
    ZeroShotArrays,
    fit_head,
    pseudo_label_train_rows,
    zero_shot_eval_as_trained,
)
from clipdebias.commands.zeroshot.image_students import train_image_student
from clipdebias.config import defaults
from clipdebias.config.resolve import run_config_json
from clipdebias.data.skipped import SkippedImage, skipped_from_manifest
from clipdebias.data.sources import MIN_CLASSES, ImageSource, check_dataset, open_dataset
from clipdebias.metrics import EvalResult, known_accuracy
from clipdebias.pseudolabels.files import pseudo_label_sidecar, pseudo_label_table, write_pseudo_labels
from clipdebias.pseudolabels.labels import summarize
from clipdebias.pseudolabels.selection import Selection
from clipdebias.reporting.report import ReportResult, try_write_report
from clipdebias.training.loop import ProgressEvent, TrainResult
from clipdebias.training.models import build_model, check_init_weights_file
from clipdebias.training.run_folder import RunFolder, check_resume
from clipdebias.training.run_layout import LABELED_INDEX, PSEUDOLABELS, UNLABELED_INDEX
from clipdebias.utils import distributed
from clipdebias.utils.atomic import prepare_dir
from clipdebias.utils.device import encode_workers, resolve_device
from clipdebias.utils.errors import UserError
from clipdebias.utils.paths import prepare_cache_dir
from clipdebias.utils.progress import NoProgress, Progress
from clipdebias.utils.threads import torch_threads

# --- pieces -------------------------------------------------------------------------------------------


class _Stage:
    """A :class:`Progress` that names what is being encoded (``encoding images: train``)."""

    def __init__(self, progress: Progress, what: str):
        self.progress, self.what = progress, what

    def start(self, label: str, total: int, completed: int = 0) -> None:
        self.progress.start(f"{label}: {self.what}", total, completed)

    def advance(self, count: int) -> None:
        self.progress.advance(count)

    def note(self, text: str, warning: bool = False) -> None:
        self.progress.note(text, warning)


def _encode(
    config: ZeroShotConfig, backbone: Backbone, source: ImageSource, root: Path, progress: Progress, view: int | None
) -> EmbeddingStore:
    """The cached embeddings of ``source`` (an :class:`~clipdebias.clip.cache.EmbeddingStore`, memory-mapped),
    plain (``view=None``) or augmented view ``view``; encoded first where the cache lacks them."""
    if view is None:
        transform, transform_id, what = backbone.transform, backbone.transform_id, source.split
    else:
        transform = AugmentedView(view, backbone.preprocess_cfg)
        transform_id, what = (
            augmented_view_id(view, backbone.preprocess_cfg),
            f"{source.split} view {view + 1}/{config.views}",
        )
    result = encode_split(
        source, backbone, transform, transform_id, root, data_root=config.data_root,
        batch_size=config.encode_batch_size, num_workers=encode_workers(config.workers, backbone.device.type),
        progress=_Stage(progress, what),
        decoding=eval_decoding(source, backbone, config.decode, config.workers) if view is None else None,
    )  # fmt: skip
    store = EmbeddingStore(result.entry)
    if len(store) == 0:
        raise UserError(
            f"no image of the {source.split} split could be read; the reasons are in {result.entry.manifest_path}"
        )
    return store


def _gather(store: EmbeddingStore, wanted: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``store`` for the dataset indices ``wanted`` (all present), copied from the mapped
    file into ``out`` (or a new array) without an intermediate copy when every row is wanted."""
    out = np.empty((len(wanted), store.dim), dtype=np.float32) if out is None else out
    if len(wanted) == len(store.ids):
        out[...] = store.vectors
    else:
        out[...] = store.vectors[np.searchsorted(store.ids, wanted)]
    return out


def _embedding_arrays(
    config: ZeroShotConfig,
    backbone: Backbone,
    train_split: ImageSource,
    evaluation: ImageSource,
    root: Path,
    progress: Progress,
    classifier: torch.Tensor,
    scale: float,
) -> tuple[ZeroShotArrays, list[SkippedImage], EmbeddingStore]:
    """Encode (or read from the cache) what the student needs: train rows readable in every view, val
    rows; the images of both splits that could not be read; the train split's cache entry."""
    train = _encode(config, backbone, train_split, root, progress, None)
    evaluation_store = _encode(config, backbone, evaluation, root, progress, None)
    view_stores = (
        [_encode(config, backbone, train_split, root, progress, k) for k in range(config.views)]
        if config.student == "head"
        else []
    )
    kept = train.ids
    for store in view_stores:  # an image unreadable in one pass is unreadable in all; stay safe anyway
        kept = np.intersect1d(kept, store.ids)
    views = None
    if view_stores:
        views = np.empty((len(view_stores), len(kept), train.dim), dtype=np.float32)
        for k, store in enumerate(view_stores):
            _gather(store, kept, out=views[k])
    arrays = ZeroShotArrays(
        train_ids=kept, train_embeddings=_gather(train, kept),
        train_labels=train.labels[np.searchsorted(train.ids, kept)],
        classifier=classifier, logit_scale=scale, eval_embeddings=np.array(evaluation_store.vectors),
        eval_labels=evaluation_store.labels.copy(), views=views, num_train_images=len(train_split),
        eval_ids=evaluation_store.ids.copy(),
    )  # fmt: skip
    return arrays, _skipped(train) + _skipped(evaluation_store), train


def _skipped(store: EmbeddingStore) -> list[SkippedImage]:
    """The images of a cache entry that could not be read (from its manifest, read only if there are any)."""
    if store.entry.num_failed == 0:
        return []
    return skipped_from_manifest(store.entry.meta["key"]["split"], read_manifest(store.entry))


def _train_neighbours(
    config: ZeroShotConfig,
    train: EmbeddingStore,
    arrays: ZeroShotArrays,
    root: Path,
    device: torch.device,
    progress: Progress,
) -> np.ndarray | None:
    """``--knn K``: the K nearest train rows of every train row (rows of ``arrays``), stored with the
    train split's cache entry (or, when some rows were left out, keyed by the rows' content in the
    cache's ``neighbours/``) and reused by the next run; ``None`` when K is 0."""
    if config.knn == 0:
        return None
    with faiss_threads(config.threads):
        if np.array_equal(arrays.train_ids, train.ids):
            return entry_neighbours(train.entry, config.knn, store=train, device=device, progress=progress).indices
        found = array_neighbours(
            arrays.train_embeddings, config.knn, store_dir=root / "neighbours", device=device, progress=progress
        )
        return found.indices


def _config_json(config: ZeroShotConfig, classes: list[str]) -> dict[str, Any]:
    return run_config_json("zeroshot", config, classes)


# --- the run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroShotRun:
    """What :func:`run_zeroshot` did: the metrics (``metrics.json``), the backbone's description,
    the report (``None``: not asked for, or it could not be written, then ``report_error`` says why)."""

    metrics: dict[str, Any]
    backbone_rows: list[tuple[str, str]]
    pseudolabels: Path
    report: ReportResult | None
    report_error: str | None


def run_zeroshot(
    config: ZeroShotConfig,
    progress: Progress | None = None,
    train_progress: Callable[[ProgressEvent], None] | None = None,
) -> ZeroShotRun:
    """Run ``zeroshot`` end to end (see the module docstring); every file is written atomically.

    ``progress`` receives the encoding and pseudo-labelling stages, ``train_progress`` the training
    loop's events (:class:`clipdebias.training.loop.ProgressEvent`). Under torchrun call it in every
    process: the processes encode their parts of each split into the one cache entry, rank 0 makes
    the pseudo-labels and the confident set and hands them to the others, every process trains on
    its part of each global batch, and only rank 0 writes files and reports progress.
    """
    with torch_threads(config.threads), distributed.session(resolve_device(config.device)):
        shown = progress if progress is not None and distributed.is_main_process() else NoProgress()
        return _run(config, shown, train_progress)


def _run(
    config: ZeroShotConfig, progress: Progress, train_progress: Callable[[ProgressEvent], None] | None
) -> ZeroShotRun:
    check_dataset(config.dataset, "train", config.data_root, MIN_CLASSES)  # the checks that cost nothing come first
    load_templates(config.dataset, config.templates)  # a bad template fails before the model loads
    if config.init_weights is not None:  # so does a file that is no checkpoint
        check_init_weights_file(config.init_weights)
    distributed.on_main(lambda: prepare_dir(config.out, "--out"))  # rank 0 writes
    root = prepare_cache_dir(config.cache_dir)
    backbone_config = BackboneConfig(
        config.model, config.pretrained, config.encode_precision, config.device, config.quick_gelu
    )
    backbone = load_backbone(backbone_config, digest_dir=root)  # first: missing weights fail in seconds
    device = backbone.device
    train_split = open_dataset(config.dataset, "train", config.data_root)
    check_k(config.knn, len(train_split))  # from the listing: before any image is encoded
    evaluation = open_dataset(config.dataset, "val", config.data_root)
    prompts = load_prompts(config.dataset, train_split.classes, config.classnames, config.templates)
    classes = list(prompts.classnames)
    if config.init_weights is not None:  # a bad weights file fails now, before hours of encoding
        build_model(config.student, len(classes), 3, config.image_size or 224, config.init_weights)
    run = RunFolder(config.out, writes=distributed.is_main_process())

    def check_run_folder() -> None:
        current = in_saved_names(_config_json(config, classes), run)  # a run started before the renames
        check_resume(run, current, config.resume, RESUME_MAY_CHANGE)
        run.remove_abandoned_temporaries()

    distributed.on_main(check_run_folder)
    backbone.warn_if_random(progress, "pseudo-labels and zero-shot numbers are")

    classifier = distributed.on_main(
        lambda: text_classifier(backbone, prompts, root, batch_size=config.encode_batch_size, progress=progress).cpu()
    )
    scale = config.logit_scale if config.logit_scale is not None else backbone.logit_scale
    arrays, skipped, train_store = _embedding_arrays(
        config, backbone, train_split, evaluation, root, progress, classifier, scale
    )
    kept = arrays.train_ids

    def label_and_write() -> tuple[Selection, Path, EvalResult, EvalResult]:
        """Rank 0's part: the pseudo-labels, the confident set and the files made of them."""
        neighbours = _train_neighbours(config, train_store, arrays, root, device, progress)
        selection = pseudo_label_train_rows(
            arrays, config.tau, config.select_threshold, config.select_topk_per_class, device, progress,
            debias=config.debias, knn=config.knn_settings, neighbours=neighbours,
        )  # fmt: skip
        csv = _write_pseudolabels(config, run, arrays, selection, train_split, classes, scale)
        zeroshot, zeroshot_debiased = zero_shot_eval_as_trained(arrays, selection.eval_correction)
        run.write_config(_config_json(config, classes))
        if skipped:
            run.write_skipped_images(skipped)
        for name, positions in ((LABELED_INDEX, selection.confident), (UNLABELED_INDEX, selection.rest)):
            run.write_index(
                name, [(int(i), train_split.path(int(i)), int(train_split.labels[i])) for i in kept[positions]]
            )
        return selection, csv, zeroshot, zeroshot_debiased

    selection, csv, zeroshot, zeroshot_debiased = distributed.on_main(label_and_write)

    if config.student == "head":
        head = HeadSettings(config.head, config.feature_dropout, config.feature_noise)
        _, result = fit_head(
            arrays, selection, loop_settings(config), head, device=device, eval_batch_size=config.eval_batch_size,
            run=run, resume=config.resume, progress=train_progress,
        )  # fmt: skip
    else:
        result = train_image_student(
            config, backbone, arrays, selection, train_split, evaluation, device, run, train_progress
        )

    metrics = _metrics(config, classes, arrays, selection, zeroshot, zeroshot_debiased, result, scale)
    metrics["skipped_images"] = len(skipped)
    metrics["images_per_s"] = result.images_per_s
    metrics["world_size"] = result.world_size
    run.write_metrics(metrics)
    wants_report = config.report and distributed.is_main_process()
    report, report_error = try_write_report(run.path) if wants_report else (None, None)
    return ZeroShotRun(metrics, backbone.describe(), csv, report, report_error)


def _write_pseudolabels(
    config: ZeroShotConfig,
    run: RunFolder,
    arrays: ZeroShotArrays,
    selection: Selection,
    train_split: ImageSource,
    classes: list[str],
    scale: float,
) -> Path:
    # `selected` marks the rows trained as confident: the threshold's rows, or the top-k per class
    selected = np.zeros(len(selection.pseudo.label), dtype=bool)
    selected[selection.confident] = True
    pseudo = replace(selection.pseudo, selected=selected)
    paths = [train_split.path(i) for i in range(len(train_split))]
    table = pseudo_label_table(pseudo, arrays.train_ids, paths, train_split.labels, classes)
    summary = summarize(pseudo, train_split.labels[arrays.train_ids], len(classes))
    sidecar = pseudo_label_sidecar(
        pseudo, summary, classes, teacher="clip", model=config.model, pretrained=config.pretrained, logit_scale=scale,
        dataset=config.dataset, data_root=config.data_root, split="train", num_images=len(train_split),
        select_topk_per_class=config.select_topk_per_class,
    )  # fmt: skip
    sidecar["knn"] = config.knn_settings.record()
    if selection.paper_label is not None:
        sidecar["paper_tau"] = defaults.TAU
        sidecar["paper_class_counts"] = np.bincount(selection.paper_label, minlength=len(classes)).tolist()
    csv, _ = write_pseudo_labels(table, run.file(PSEUDOLABELS), sidecar)
    return csv


def _metrics(
    config: ZeroShotConfig,
    classes: list[str],
    arrays: ZeroShotArrays,
    selection: Selection,
    zeroshot: EvalResult,
    zeroshot_debiased: EvalResult,
    result: TrainResult,
    scale: float,
) -> dict[str, Any]:
    truth = np.asarray(arrays.train_labels)
    pseudo = selection.pseudo
    return {
        "method": config.method,
        "debias": config.debias,
        "tau": config.tau,
        "knn": config.knn_settings.record(),
        "student": config.student,
        "dataset": config.dataset,
        "num_classes": len(classes),
        "classes": classes,
        "top1": result.final_eval.top1,
        "top5": result.final_eval.top5,
        "per_class_top1": result.final_eval.per_class_top1,
        "student_top1": result.final_eval.top1,
        "zeroshot_top1": zeroshot.top1,
        "zeroshot_top5": zeroshot.top5,
        "zeroshot_debiased_top1": zeroshot_debiased.top1,
        "zeroshot_per_class_top1": zeroshot.per_class_top1,
        "pseudo_labels": result.pseudo_labels.as_dict(),
        "prior": result.prior,
        "train_pseudo_labels": {
            "zeroshot_top1": known_accuracy(truth, pseudo.raw_label),
            "zeroshot_debiased_top1": known_accuracy(truth, pseudo.label),
            "confident_top1": known_accuracy(truth[selection.confident], pseudo.label[selection.confident]),
            "confident_class_counts": np.bincount(pseudo.label[selection.confident], minlength=len(classes)).tolist(),
        },
        "eval_split": "val",
        "eval_images": result.final_eval.count,
        "labeled_images": int(len(selection.confident)),
        "unlabeled_images": int(len(selection.rest)),
        "model": config.model,
        "pretrained": config.pretrained,
        "logit_scale": scale,
        "epochs": config.epochs,
        "steps": result.steps,
        "seed": config.seed,
        "elapsed_s": result.elapsed_s,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
