"""The files of ``pseudolabel --reference-format DIR``: what the CVPR 2022 reference code reads
(docs/formats.md).

- ``CLIPPseudoLabel{threshold}.csv`` (``Index,PseudoLabel``, the selected rows) and
  ``CLIPPseudoLabel{threshold}-Unselected.csv`` (``Index,PseudoLabel,Probs``, the others), which the
  reference code takes as ``--trainindex_x`` / ``--trainindex_u``;
- ``CLIPRankedPredictions.csv`` (``Index,Label1..Labelk,Prob1..Probk``), clipdebias's form of the
  ranked CLIP predictions of the reference's semi-supervised ``--use_clip`` path.

The reference code builds its dataset with torchvision's ``datasets.ImageFolder`` and indexes it
with ``Index``. clipdebias lists an image folder its own way (it also reads ``.gif``, skips
dot-folders as classes, walks sub-folders in another order), so for a folder dataset ``Index`` is
the position in torchvision's own listing (:func:`reference_indices`, made with torchvision's
``find_classes`` / ``make_dataset`` / ``IMG_EXTENSIONS``), matched by path; a layout whose images
torchvision does not list, or whose class folders differ, is refused. For in-memory datasets
(digits, CIFAR) ``Index`` is the dataset index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from clipdebias.data.sources import SPLITS, FolderSource, ImageSource
from clipdebias.pseudolabels.labels import PseudoLabels
from clipdebias.utils.atomic import Writer
from clipdebias.utils.errors import UserError

REFERENCE_SELECTED = "CLIPPseudoLabel{threshold}.csv"
REFERENCE_UNSELECTED = "CLIPPseudoLabel{threshold}-Unselected.csv"
REFERENCE_RANKED = "CLIPRankedPredictions.csv"
_EXAMPLES = 3  # file or folder names quoted in a refusal


def reference_file_names(threshold: float) -> tuple[str, str, str]:
    """The file names, e.g. ``CLIPPseudoLabel0.95.csv``, ``CLIPPseudoLabel0.95-Unselected.csv`` and
    ``CLIPRankedPredictions.csv``."""
    return (
        REFERENCE_SELECTED.format(threshold=f"{threshold:g}"),
        REFERENCE_UNSELECTED.format(threshold=f"{threshold:g}"),
        REFERENCE_RANKED,
    )


# --- Index: torchvision's ImageFolder order -------------------------------------------------------


def _quoted(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_EXAMPLES])
    return shown + (f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else "")


def _check_classes(split_dir: Path, classes: list[str]) -> None:
    """torchvision's classes of ``split_dir`` (``find_classes``: every sub-folder, sorted) must be
    clipdebias's, in the same order: the reference code's labels are their positions. A folder
    without sub-folders is left alone (``ImageFolder`` refuses it itself)."""
    try:
        found, _ = find_classes(split_dir)
    except FileNotFoundError:
        return
    if found == classes:
        return
    extra = [name for name in found if name not in classes]
    missing = [name for name in classes if name not in found]
    differs = (
        f"takes {_quoted(extra)} as class folder(s) in {str(split_dir)!r}, which are not among clipdebias's "
        f"classes (it skips dot-folders)"
        if extra
        else f"finds no class folder(s) {_quoted(missing)} in {str(split_dir)!r}"
        if missing
        else f"orders the class folders of {str(split_dir)!r} differently"
    )
    raise UserError(
        f"--reference-format: torchvision's ImageFolder {differs}, so the reference code's class indices would "
        f"not be clipdebias's; move them out of that folder, or run without --reference-format"
    )


def reference_indices(source: ImageSource) -> np.ndarray:
    """``Index`` of every image of ``source`` (int64, one per dataset index): for an image folder its
    position in ``torchvision.datasets.ImageFolder(split_dir).samples``, else the dataset index.

    Raises :class:`UserError`, from the file listing alone, when the reference code could not find
    every image where ``Index`` says: a class folder only torchvision sees (a dot-folder), an image
    file torchvision does not list (an extension outside its ``IMG_EXTENSIONS``, e.g. ``.gif``), or
    a label that differs. The classes of the other split's folder are checked too (the reference
    code evaluates on ``val/``, trains on ``train/``).
    """
    if not isinstance(source, FolderSource):
        return np.arange(len(source), dtype=np.int64)
    split_dir = source.split_dir
    for split in SPLITS:
        other = split_dir.parent / split
        if other == split_dir or other.is_dir():
            _check_classes(other, source.classes)
    _, class_to_idx = find_classes(split_dir)
    samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    position = {path: index for index, (path, _) in enumerate(samples)}
    index = np.fromiter((position.get(path, -1) for path in source.paths), dtype=np.int64, count=len(source))
    unlisted = np.flatnonzero(index < 0)
    if unlisted.size:
        names = [os.path.relpath(source.paths[i], split_dir) for i in unlisted[:_EXAMPLES]]
        raise UserError(
            f"--reference-format: torchvision's ImageFolder does not list {unlisted.size} image file(s) of "
            f"{str(split_dir)!r} (e.g. {_quoted(names)}; it reads {', '.join(IMG_EXTENSIONS)}), so the "
            f"reference code cannot index them; convert them to one of those formats or move them out, "
            f"or run without --reference-format"
        )
    targets = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    wrong = np.flatnonzero(targets[index] != source.labels)
    if wrong.size:
        first = int(wrong[0])
        raise UserError(
            f"--reference-format: torchvision's ImageFolder gives {source.paths[first]!r} label "
            f"{int(targets[index[first]])}, clipdebias {int(source.labels[first])}; run without --reference-format"
        )
    return index


# --- the files -----------------------------------------------------------------------------------


def empty_reference_file(table: pd.DataFrame, threshold: float) -> str | None:
    """A warning when one of the two CSVs would have no row (the reference code's sampler fails on an
    empty file), else ``None``. ``table`` is a pseudo-label table (its ``selected`` column)."""
    selected, unselected, _ = reference_file_names(threshold)
    chosen = int(table["selected"].sum())
    if chosen == 0:
        return (
            f"--reference-format: {selected} has no rows: no image reaches --select-threshold {threshold:g}; "
            f"the reference code's sampler fails on an empty file"
        )
    if chosen == len(table):
        return (
            f"--reference-format: {unselected} has no rows: every image reaches --select-threshold "
            f"{threshold:g}; the reference code's sampler fails on an empty file"
        )
    return None


def _csv_writer(frame: pd.DataFrame) -> Writer:
    return lambda handle: frame.to_csv(handle, index=False, errors="surrogateescape")


def reference_format_files(
    table: pd.DataFrame,
    result: PseudoLabels,
    directory: str | Path,
    reference_index: np.ndarray | None = None,
) -> list[tuple[Path, Writer]]:
    """The three files, as ``(path, writer)`` pairs for
    :func:`clipdebias.utils.atomic.atomic_write_group`. ``table`` is the pseudo-label table of
    ``result`` (one row per logit row, same order); ``reference_index`` maps a dataset index to
    ``Index`` (:func:`reference_indices`; ``None``: the dataset index). Rows are in ``Index``
    order. The ranked file is written when ``result`` has ``ranked_label``."""
    directory = Path(directory).expanduser()
    dataset_index = table["index"].to_numpy(dtype=np.int64)
    index = dataset_index if reference_index is None else np.asarray(reference_index)[dataset_index]
    order = np.argsort(index, kind="stable")
    index = index[order]
    chosen = table["selected"].to_numpy(dtype=bool)[order]
    label = table["pseudo_label"].to_numpy()[order]
    confidence = table["confidence"].to_numpy()[order]
    selected_name, unselected_name, ranked_name = reference_file_names(result.threshold)
    files = [
        (directory / selected_name, _csv_writer(pd.DataFrame({"Index": index[chosen], "PseudoLabel": label[chosen]}))),
        (
            directory / unselected_name,
            _csv_writer(
                pd.DataFrame({"Index": index[~chosen], "PseudoLabel": label[~chosen], "Probs": confidence[~chosen]})
            ),
        ),
    ]
    if result.ranked_label is not None and result.ranked_prob is not None:
        k = result.ranked_label.shape[1]
        ranked = {"Index": index}
        ranked |= {f"Label{rank + 1}": result.ranked_label[order, rank] for rank in range(k)}
        ranked |= {f"Prob{rank + 1}": result.ranked_prob[order, rank] for rank in range(k)}
        files.append((directory / ranked_name, _csv_writer(pd.DataFrame(ranked))))
    return files
