"""Debiased pseudo-labels from any teacher's logits: the dataset prior, the labels, the CSV.

The core, :func:`debiased_pseudo_labels`, streams over row chunks of an ``[N, C]`` logit matrix
in two passes and never holds ``[N, C]`` in memory:

1. the dataset prior ``q = mean_i softmax(z_i)`` (:func:`clipdebias.debias.dataset_prior`);
2. per row, the debiased label and confidence ``max softmax(z - tau log q)``, the plain (raw)
   label and confidence ``max softmax(z)``, and ``selected = confidence >= threshold``.

The matrix is anything with ``shape``, ``ndim`` and row slicing: a memory-mapped ``.npy`` of a
teacher's logits (``--logits``), or :class:`ZeroShotLogits`, which computes
``scale * embeddings @ classifier.T`` one slice at a time from cached CLIP embeddings.
``tau = 0`` gives plain zero-shot labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clipdebias.config import defaults
from clipdebias.metrics import imbalance_ratio, known_accuracy
from clipdebias.utils.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from clipdebias.utils.atomic import Writer

DEFAULT_TAU = defaults.TAU
DEFAULT_THRESHOLD = defaults.THRESHOLD
DEFAULT_CHUNK_ROWS = defaults.CHUNK_ROWS
REFERENCE_SELECTED = "CLIPPseudoLabel{threshold}.csv"
REFERENCE_UNSELECTED = "CLIPPseudoLabel{threshold}-Unselected.csv"
CSV_COLUMNS = (
    "index",
    "path",
    "label",
    "pseudo_label",
    "pseudo_class",
    "confidence",
    "raw_pseudo_label",
    "raw_confidence",
    "selected",
)


class LogitRows(Protocol):
    """An ``[N, C]`` matrix of logits read by row slices (``numpy.memmap``, tensor, :class:`ZeroShotLogits`)."""

    shape: tuple[int, ...]
    ndim: int

    def __getitem__(self, rows: slice) -> Any: ...


class ZeroShotLogits:
    """``scale * embeddings @ classifier.T``, computed for one row slice at a time.

    ``embeddings``: ``[N, D]`` float32 (a memory-mapped view is fine), ``classifier``: ``[C, D]``.
    """

    ndim = 2

    def __init__(
        self, embeddings: np.ndarray, classifier: torch.Tensor, scale: float, device: str | torch.device = "cpu"
    ):
        import torch

        if embeddings.ndim != 2 or embeddings.shape[1] != classifier.shape[1]:
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} and classifier {tuple(classifier.shape)} do not match"
            )
        self.embeddings = embeddings
        self.device = torch.device(device)
        self.scale = float(scale)
        self.classifier_t = (self.scale * classifier.to(self.device, torch.float32)).T.contiguous()  # scale folded in
        self.shape = (int(embeddings.shape[0]), int(classifier.shape[0]))

    def __getitem__(self, rows: slice) -> torch.Tensor:
        import torch

        chunk = torch.from_numpy(np.array(self.embeddings[rows], dtype=np.float32)).to(self.device)
        return chunk @ self.classifier_t


class FiniteRows:
    """A :class:`LogitRows` over a numpy matrix that raises :class:`UserError` at the first row holding
    NaN or an infinity, checked as the rows are read (no extra pass over a large file)."""

    ndim = 2

    def __init__(self, rows: np.ndarray, name: str):
        self.rows, self.name, self.shape = rows, name, tuple(rows.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        chunk = self.rows[rows]
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0]) + (rows.start or 0)
            raise UserError(
                f"{self.name}: row {first} holds NaN or infinite values; every logit must be a finite number"
            )
        return chunk


@dataclass(frozen=True)
class PseudoLabels:
    """Per logit row: debiased ``label``/``confidence``, plain ``raw_label``/``raw_confidence`` and
    ``selected`` (``confidence >= threshold``); ``prior`` is the dataset prior ``q`` (``[C]``)."""

    prior: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    raw_label: np.ndarray
    raw_confidence: np.ndarray
    selected: np.ndarray
    tau: float
    threshold: float


def _as_tensor(chunk: Any) -> torch.Tensor:
    import torch

    if isinstance(chunk, np.ndarray):
        return torch.from_numpy(np.array(chunk, dtype=np.float32))
    return chunk.float()


def debiased_pseudo_labels(
    logits: LogitRows,
    tau: float = DEFAULT_TAU,
    threshold: float = DEFAULT_THRESHOLD,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> PseudoLabels:
    """Two streaming passes over ``logits`` (see the module docstring); memory is O(chunk_rows x C)."""
    import torch

    from clipdebias.debias import dataset_prior, select_pseudo_labels

    if tau < 0:
        raise UserError(f"--tau must be 0 or more (0 = plain zero-shot), got {tau}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {threshold}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise UserError(f"logits must have shape [N, C] with N >= 1 and C >= 2, got {tuple(logits.shape)}")
    prior = dataset_prior(logits, chunk_size=chunk_rows)
    if not torch.isfinite(prior).all():
        raise UserError("the logits contain NaN or infinite values")
    rows = logits.shape[0]
    label = np.empty(rows, np.int64)
    raw_label = np.empty(rows, np.int64)
    confidence = np.empty(rows, np.float32)
    raw_confidence = np.empty(rows, np.float32)
    selected = np.empty(rows, bool)
    for start in range(0, rows, chunk_rows):
        chunk = _as_tensor(logits[start : start + chunk_rows])
        part = slice(start, start + chunk.shape[0])
        targets, conf, mask = select_pseudo_labels(chunk, prior, tau, threshold)
        raw_conf, raw_targets = torch.softmax(chunk, dim=-1).max(dim=-1)
        label[part], confidence[part], selected[part] = (
            targets.cpu().numpy(),
            conf.cpu().numpy(),
            mask.cpu().numpy() > 0,
        )
        raw_label[part], raw_confidence[part] = raw_targets.cpu().numpy(), raw_conf.cpu().numpy()
    return PseudoLabels(
        prior.cpu().numpy(), label, confidence, raw_label, raw_confidence, selected, float(tau), float(threshold)
    )


def pseudo_label_table(
    result: PseudoLabels, indices: np.ndarray, paths: list[str], truth: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """The CSV table (docs/formats.md): one row per logit row; ``indices`` are their dataset
    positions, ``paths`` / ``truth`` (``-1`` = unknown) are indexed by dataset position."""
    import pandas as pd

    truth = np.asarray(truth)[indices]
    label = pd.array(np.where(truth >= 0, truth, 0), dtype="Int64")
    label[truth < 0] = pd.NA
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame(
        {
            "index": np.asarray(indices, dtype=np.int64),
            "path": [paths[i] for i in indices],
            "label": label,
            "pseudo_label": result.label,
            "pseudo_class": names[result.label],
            "confidence": result.confidence,
            "raw_pseudo_label": result.raw_label,
            "raw_confidence": result.raw_confidence,
            "selected": result.selected,
        },
        columns=list(CSV_COLUMNS),
    )


@dataclass(frozen=True)
class PseudoLabelSummary:
    """Numbers for the terminal summary and the JSON sidecar. Accuracies in percent; ``None``
    where no row has a known label."""

    num_rows: int
    num_selected: int
    zeroshot_top1: float | None
    zeroshot_debiased_top1: float | None
    selected_top1: float | None
    raw_counts: np.ndarray
    counts: np.ndarray
    selected_counts: np.ndarray


def summarize(result: PseudoLabels, truth: np.ndarray, num_classes: int) -> PseudoLabelSummary:
    """``truth``: ground-truth labels of the logit rows (``-1`` = unknown)."""
    truth, selected = np.asarray(truth), result.selected
    return PseudoLabelSummary(
        num_rows=len(result.label),
        num_selected=int(selected.sum()),
        zeroshot_top1=known_accuracy(truth, result.raw_label),
        zeroshot_debiased_top1=known_accuracy(truth, result.label),
        selected_top1=known_accuracy(truth[selected], result.label[selected]),
        raw_counts=np.bincount(result.raw_label, minlength=num_classes),
        counts=np.bincount(result.label, minlength=num_classes),
        selected_counts=np.bincount(result.label[result.selected], minlength=num_classes),
    )


def pseudo_label_sidecar(
    result: PseudoLabels,
    summary: PseudoLabelSummary,
    classes: list[str],
    *,
    teacher: str,
    model: str | None,
    pretrained: str | None,
    logit_scale: float | None,
    dataset: str,
    data_root: str | None,
    split: str,
    num_images: int,
) -> dict:
    """The JSON sidecar of a pseudo-label CSV (docs/formats.md), as ``pseudolabel`` and ``zeroshot`` write it."""
    from clipdebias import __version__

    return {
        "classes": classes,
        "tau": result.tau,
        "threshold": result.threshold,
        "prior": [float(x) for x in result.prior],
        "model": model,
        "pretrained": pretrained,
        "teacher": teacher,
        "logit_scale": logit_scale,
        "dataset": dataset,
        "data_root": data_root,
        "split": split,
        "num_images": num_images,
        "num_rows": summary.num_rows,
        "num_unreadable": num_images - summary.num_rows,
        "num_selected": summary.num_selected,
        "zeroshot_top1": summary.zeroshot_top1,
        "zeroshot_debiased_top1": summary.zeroshot_debiased_top1,
        "selected_top1": summary.selected_top1,
        "class_counts": summary.counts.tolist(),
        "raw_class_counts": summary.raw_counts.tolist(),
        "imbalance_ratio": imbalance_ratio(summary.counts),
        "raw_imbalance_ratio": imbalance_ratio(summary.raw_counts),
        "clipdebias": __version__,
    }


def pseudo_label_files(table: pd.DataFrame, out: str | Path, sidecar: dict) -> list[tuple[Path, Writer]]:
    """The CSV ``out`` and its sidecar (``out`` with ``.json``), as ``(path, writer)`` pairs for
    :func:`clipdebias.utils.atomic.atomic_write_group`."""
    from clipdebias.utils.atomic import bytes_writer, json_bytes

    out = Path(out).expanduser()
    return [
        (out, lambda handle: table.to_csv(handle, index=False, errors="surrogateescape")),
        (out.with_suffix(".json"), bytes_writer(json_bytes(sidecar))),
    ]


def write_pseudo_labels(table: pd.DataFrame, out: str | Path, sidecar: dict) -> tuple[Path, Path]:
    """``out`` (the CSV) and ``out`` with ``.json`` (the sidecar), each written atomically, the
    sidecar removed before the CSV is replaced: a kill never leaves a new CSV beside an old sidecar."""
    from clipdebias.utils.atomic import atomic_write_group

    csv, sidecar_path = atomic_write_group(pseudo_label_files(table, out, sidecar))
    return csv, sidecar_path


def reference_file_names(threshold: float) -> tuple[str, str]:
    """The CVPR 2022 code's file names, e.g. ``CLIPPseudoLabel0.95.csv`` and ``CLIPPseudoLabel0.95-Unselected.csv``."""
    return REFERENCE_SELECTED.format(threshold=f"{threshold:g}"), REFERENCE_UNSELECTED.format(
        threshold=f"{threshold:g}"
    )


def reference_format_files(table: pd.DataFrame, directory: str | Path, threshold: float) -> list[tuple[Path, Writer]]:
    """The two CSVs the reference code reads (``--trainindex_x`` / ``--trainindex_u``), as
    ``(path, writer)`` pairs: ``Index,PseudoLabel`` for the selected rows and
    ``Index,PseudoLabel,Probs`` (the debiased confidence) for the others. ``Index`` is the dataset
    position."""
    import pandas as pd

    directory = Path(directory).expanduser()
    selected_name, unselected_name = reference_file_names(threshold)
    chosen = table["selected"].to_numpy(dtype=bool)
    selected = pd.DataFrame({"Index": table["index"][chosen], "PseudoLabel": table["pseudo_label"][chosen]})
    rest = pd.DataFrame(
        {
            "Index": table["index"][~chosen],
            "PseudoLabel": table["pseudo_label"][~chosen],
            "Probs": table["confidence"][~chosen],
        }
    )
    return [
        (directory / selected_name, lambda handle: selected.to_csv(handle, index=False, errors="surrogateescape")),
        (directory / unselected_name, lambda handle: rest.to_csv(handle, index=False, errors="surrogateescape")),
    ]


def write_reference_format(table: pd.DataFrame, directory: str | Path, threshold: float) -> tuple[Path, Path]:
    """:func:`reference_format_files` written atomically, as a pair (see :func:`clipdebias.utils.atomic.atomic_write_group`)."""
    from clipdebias.utils.atomic import atomic_write_group

    selected, rest = atomic_write_group(reference_format_files(table, directory, threshold))
    return selected, rest
