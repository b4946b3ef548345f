"""The ``clipdebias pseudolabel`` job: dataset → (cached CLIP embeddings + prompts, or a teacher's
logits) → debiased pseudo-labels → CSV, JSON sidecar and, optionally, the reference code's files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdebias.clip.backbone import Backbone, BackboneConfig, load_backbone
from clipdebias.clip.cache import EmbeddingStore, EncodeResult, cached_embeddings
from clipdebias.clip.jpeg_batches import check_decode
from clipdebias.clip.neighbours import Neighbours, array_neighbours, check_k, entry_neighbours, faiss_threads
from clipdebias.clip.prompts import load_classnames, load_prompts, load_templates, text_classifier
from clipdebias.config import defaults
from clipdebias.config.checks import check_all, check_choice, check_encoding, check_finite
from clipdebias.data.sources import MIN_CLASSES, ImageSource, check_dataset, open_dataset
from clipdebias.pseudolabels.balance import BalancedOffsets, read_target_prior
from clipdebias.pseudolabels.files import (
    pseudo_label_files,
    pseudo_label_sidecar,
    pseudo_label_table,
    sidecar_path,
)
from clipdebias.pseudolabels.labels import PseudoLabelSummary, summarize
from clipdebias.pseudolabels.offline import KnnSettings, check_knn_settings, offline_pseudo_labels
from clipdebias.pseudolabels.reference import (
    empty_reference_file,
    reference_file_names,
    reference_format_files,
    reference_indices,
)
from clipdebias.pseudolabels.rows import FiniteRows, LogitRows, ZeroShotLogits
from clipdebias.utils.atomic import atomic_write_group, prepare_dir
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.formatting import count_of
from clipdebias.utils.paths import cache_dir as resolve_cache_dir
from clipdebias.utils.paths import prepare_cache_dir
from clipdebias.utils.progress import NoProgress, Progress
from clipdebias.utils.threads import torch_threads


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Resolved options of ``clipdebias pseudolabel``."""

    dataset: str
    data_root: str | None
    out: str
    split: str = defaults.SPLIT
    backbone: BackboneConfig = BackboneConfig()
    classnames: str | None = None
    templates: str | None = None
    tau: float | None = None  # None: defaults.TAU with --debias paper (tau applies to that mode only)
    debias: str = defaults.DEBIAS  # paper | balance | none
    target_prior: str | None = None  # balance: a file of one frequency per class (default: uniform)
    select_threshold: float = defaults.SELECT_THRESHOLD  # "selected": debiased confidence >= it
    logit_scale: float | None = None  # None: the model's own (100 for OpenAI CLIP)
    logits: str | None = None  # a teacher's [N, C] logits (.npy) instead of CLIP
    knn: int = defaults.KNN  # refine with the K nearest neighbours' probabilities first; 0 = off
    knn_alpha: float = defaults.KNN_ALPHA
    knn_steps: int = defaults.KNN_STEPS
    embeddings: str | None = None  # with --logits and --knn: the images' [N, D] embeddings (.npy)
    reference_dir: str | None = None
    reference_top_k: int = defaults.REFERENCE_TOP_K  # classes per image in CLIPRankedPredictions.csv
    cache_dir: str | None = None
    encode_batch_size: int = defaults.ENCODE_BATCH_SIZE
    workers: int | None = None  # None: see clipdebias.utils.device.encode_workers
    threads: int | None = None  # None: torch's own default
    chunk_size: int = defaults.CHUNK_SIZE
    chunk_rows: int = defaults.CHUNK_ROWS
    overwrite: bool = False  # replace an existing --out CSV, its sidecar and --reference-format files
    decode: str = defaults.DECODE  # auto, cpu or gpu: who decodes the images CLIP encodes


@dataclass(frozen=True)
class PseudoLabelRun:
    """What :func:`run_pseudolabel` produced."""

    csv: Path
    sidecar: Path
    reference: tuple[Path, ...] | None  # the --reference-format files
    summary: PseudoLabelSummary
    classes: list[str]
    teacher: str
    tau: float
    threshold: float
    correction: str  # e.g. "debiased (tau 0.4)", "balanced (uniform prior)"
    balance: BalancedOffsets | None  # --debias balance: the passes it took, whether it converged
    neighbours: Neighbours | None  # --knn K > 0: the neighbours used (``computed`` False: read from the store)
    num_images: int
    encode: EncodeResult | None
    backbone_rows: list[tuple[str, str]]


def check_pseudolabel_config(config: PseudoLabelConfig) -> None:
    """Raise :class:`~clipdebias.utils.errors.OptionError` (or ``UserError`` for an unknown name) for
    the first bad option value, before any work is done."""
    check_finite(config)
    check_encoding(config)
    check_choice("debias", config.debias, defaults.DEBIAS_MODES)
    check_knn_settings(KnnSettings(config.knn, config.knn_alpha, config.knn_steps))
    if config.embeddings is not None and config.logits is None:
        raise OptionError("embeddings", "goes with --logits (without it, CLIP's cached embeddings are used)")
    if config.embeddings is not None and config.knn == 0:
        raise OptionError("embeddings", "is read by --knn only; add --knn K (K > 0) or leave it out")
    if config.knn > 0 and config.logits is not None and config.embeddings is None:
        raise OptionError(
            "knn", "with --logits needs --embeddings FILE.npy (the images' [N, D] embeddings, rows in dataset order)"
        )
    if config.tau is not None and config.debias != "paper":
        raise OptionError("tau", f"applies to --debias paper only; --debias {config.debias} does not use it")
    if config.target_prior is not None and config.debias != "balance":
        raise OptionError("target_prior", f"applies to --debias balance only (not {config.debias})")
    check_all(
        [
            (config.tau is None or config.tau >= 0, "tau", "must be >= 0 (0 gives plain zero-shot labels)"),
            (0.0 <= config.select_threshold <= 1.0, "select_threshold", "must be in [0, 1]"),
            (config.logit_scale is None or config.logit_scale > 0, "logit_scale", "must be > 0"),
            (config.chunk_rows >= 1, "chunk_rows", "must be >= 1"),
            (config.reference_top_k >= 1, "reference_top_k", "must be >= 1"),
        ]
    )
    check_choice("encode_precision", config.backbone.precision, defaults.PRECISIONS)
    check_decode(config.decode, config.backbone.device)


def _check_out(out: str) -> Path:
    path = Path(out).expanduser()
    if path.suffix.lower() != ".csv":
        raise UserError(f"--out {out}: give a file name ending in .csv (a FILE.json sidecar is written beside it)")
    if path.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name ending in .csv")
    return path


def check_not_written(config: PseudoLabelConfig, out: Path) -> None:
    """Refuse, unless ``config.overwrite``, to replace a file that an earlier run wrote: the CSV, its
    sidecar, or the reference format's two files."""
    if config.overwrite:
        return
    for path in (out, sidecar_path(out)):
        if path.exists():
            raise UserError(
                f"--out {config.out}: {path} already exists; pass --overwrite to replace it "
                "(the CSV and its .json sidecar), or give another --out"
            )
    if config.reference_dir is not None:
        folder = Path(config.reference_dir).expanduser()
        for name in reference_file_names(config.select_threshold):
            if (folder / name).exists():
                raise UserError(
                    f"--reference-format {config.reference_dir}: {folder / name} already exists; "
                    "pass --overwrite to replace it, or give another folder"
                )


def load_logits_file(path: str, num_images: int, num_classes: int) -> FiniteRows:
    """A teacher's ``[N, C]`` logits from ``.npy``, memory-mapped; its shape must match the dataset,
    and a row with NaN or an infinity stops the job when it is read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--logits {path}: no such file")
    try:
        logits = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"--logits {path} is not a .npy array ({err})") from err
    if logits.ndim != 2 or logits.shape != (num_images, num_classes):
        raise UserError(
            f"--logits {path} has shape {tuple(logits.shape)}, "
            f"but the split has {num_images} images and {num_classes} classes "
            f"(expected [{num_images}, {num_classes}], rows in dataset order)"
        )
    if not np.issubdtype(logits.dtype, np.floating):
        raise UserError(f"--logits {path} holds {logits.dtype}, expected floating-point logits")
    return FiniteRows(logits, f"--logits {path}")


def _clip_logits(
    config: PseudoLabelConfig, backbone: Backbone, source: ImageSource, progress: Progress
) -> tuple[LogitRows, np.ndarray, EncodeResult, list[tuple[str, str]], float]:
    """Zero-shot logits of cached CLIP embeddings: (logits, dataset indices, encode result, backbone rows, scale)."""
    prompts = load_prompts(config.dataset, source.classes, config.classnames, config.templates)
    root = resolve_cache_dir(config.cache_dir)
    backbone.warn_if_random(progress, "these pseudo-labels are")
    encoded = cached_embeddings(
        source,
        backbone,
        root,
        config.data_root,
        batch_size=config.encode_batch_size,
        num_workers=config.workers,
        chunk_size=config.chunk_size,
        progress=progress,
        decode=config.decode,
    )
    classifier = text_classifier(backbone, prompts, root, batch_size=config.encode_batch_size, progress=progress)
    scale = config.logit_scale if config.logit_scale is not None else backbone.logit_scale
    if not (scale > 0 and math.isfinite(scale)):
        raise OptionError("logit_scale", f"must be a positive number, got {scale}")
    store = EmbeddingStore(encoded.entry)
    if len(store) == 0:
        raise UserError(f"no image of the split could be read; the reasons are in {encoded.entry.manifest_path}")
    rows = [
        *backbone.describe(),
        (
            "prompts",
            f"{count_of(len(prompts.templates), 'template')} from {prompts.templates_source}; "
            f"class names from {prompts.classnames_source}",
        ),
        ("logit scale", f"{scale:g}"),
    ]
    return ZeroShotLogits(store.vectors, classifier, scale, backbone.device), store.ids, encoded, rows, scale


def run_pseudolabel(config: PseudoLabelConfig, progress: Progress | None = None) -> PseudoLabelRun:
    """The whole ``pseudolabel`` command; every file is written atomically."""
    with torch_threads(config.threads):
        return _run_pseudolabel(config, progress)


def _run_pseudolabel(config: PseudoLabelConfig, progress: Progress | None) -> PseudoLabelRun:
    progress = progress or NoProgress()
    check_pseudolabel_config(config)
    check_dataset(config.dataset, config.split, config.data_root, MIN_CLASSES)
    out = _check_out(config.out)
    check_not_written(config, out)
    prepare_dir(out.parent, "folder of --out")  # the checks that cost nothing come before the long work
    if config.reference_dir is not None:
        prepare_dir(config.reference_dir, "--reference-format")
    if config.logits is None:
        load_templates(config.dataset, config.templates)  # a bad template fails before the model loads
        prepare_cache_dir(config.cache_dir)
    elif config.embeddings is not None:  # their neighbours are stored in the cache
        prepare_cache_dir(config.cache_dir)
    backbone = None
    if config.logits is None:  # the backbone first: missing weights fail before a long folder scan
        backbone = load_backbone(config.backbone, digest_dir=resolve_cache_dir(config.cache_dir))
    source = open_dataset(config.dataset, config.split, config.data_root)
    classes, _ = load_classnames(config.dataset, source.classes, config.classnames)
    target = read_target_prior(config.target_prior, len(classes)) if config.target_prior is not None else None
    # from the file listing alone, before any logit is computed
    reference_index = reference_indices(source) if config.reference_dir is not None else None
    encoded: EncodeResult | None = None
    scale: float | None = None
    check_k(config.knn, len(source))  # from the listing: before any image is encoded
    neighbours: Neighbours | None = None
    if config.logits is not None:
        logits: LogitRows = load_logits_file(config.logits, len(source), len(classes))
        indices = np.arange(len(source), dtype=np.int64)
        teacher, rows = f"logits file {config.logits}", [("teacher", f"logits file {config.logits}")]
        if config.embeddings is not None:
            neighbours = _array_neighbours(config, len(source), progress)
    else:
        logits, indices, encoded, rows, scale = _clip_logits(config, backbone, source, progress)
        teacher = "clip"
        if config.knn > 0:
            with faiss_threads(config.threads):
                neighbours = entry_neighbours(encoded.entry, config.knn, device=backbone.device, progress=progress)
    knn = KnnSettings(config.knn, config.knn_alpha, config.knn_steps)
    offline = offline_pseudo_labels(
        logits,
        neighbours.indices if neighbours is not None else None,
        knn,
        mode=config.debias,
        tau=defaults.TAU if config.tau is None else config.tau,
        threshold=config.select_threshold,
        target_prior=target,
        chunk_rows=config.chunk_rows,
        top_k=config.reference_top_k if config.reference_dir is not None else 0,
        progress=progress,
    )
    result = offline.pseudo
    if neighbours is not None:
        rows.append(("kNN refinement", _knn_row(knn, neighbours)))
    paths = [source.path(i) for i in range(len(source))]
    table = pseudo_label_table(result, indices, paths, source.labels, classes)
    summary = summarize(result, source.labels[indices], len(classes))
    sidecar = pseudo_label_sidecar(
        result,
        summary,
        classes,
        teacher=teacher,
        model=None if config.logits else config.backbone.model,
        pretrained=None if config.logits else config.backbone.pretrained,
        logit_scale=scale,
        dataset=config.dataset,
        data_root=config.data_root,
        split=config.split,
        num_images=len(source),
    )
    sidecar |= offline.sidecar_keys(len(classes))
    files = pseudo_label_files(table, out, sidecar)
    if config.reference_dir is not None:
        files += reference_format_files(table, result, config.reference_dir, reference_index)
        warning = empty_reference_file(table, result.threshold)
        if warning:
            progress.note(warning, warning=True)
    csv, sidecar_path, *written = atomic_write_group(files)  # a kill never leaves files of two runs side by side
    reference = tuple(written) if written else None
    return PseudoLabelRun(
        csv,
        sidecar_path,
        reference,
        summary,
        classes,
        teacher,
        result.tau,
        result.threshold,
        result.correction,
        result.balance,
        neighbours,
        len(source),
        encoded,
        rows,
    )


def load_embeddings_file(path: str) -> np.ndarray:
    """``--embeddings``: an ``[N, D]`` ``.npy`` array, memory-mapped (its rows and values are checked
    by :func:`clipdebias.clip.neighbours.array_neighbours`)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise OptionError("embeddings", f"{path}: no such file")
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise OptionError("embeddings", f"{path} is not a .npy array ({err})") from err


def _array_neighbours(config: PseudoLabelConfig, num_images: int, progress: Progress) -> Neighbours:
    """The neighbours of ``--embeddings``' rows, stored in (and reused from) the cache's ``neighbours/``."""
    embeddings = load_embeddings_file(config.embeddings)
    store = prepare_cache_dir(config.cache_dir) / "neighbours"
    with faiss_threads(config.threads):
        return array_neighbours(embeddings, config.knn, rows=num_images, store_dir=store, progress=progress)


def _knn_row(knn: KnnSettings, neighbours: Neighbours) -> str:
    found = "read from the store" if not neighbours.computed else f"found now ({neighbours.method})"
    return f"K {knn.k}, alpha {knn.alpha:g}, {knn.steps} step{'' if knn.steps == 1 else 's'}; neighbours {found}"
