"""The pseudo-label files: the CSV and its JSON sidecar (docs/formats.md), and the reader of a
pseudo-label CSV that ``report`` and ``ssl --clip-pseudolabels`` share. The reference code's files
are in :mod:`clipdebias.pseudolabels.reference`.

``pseudolabel`` and ``zeroshot`` write a CSV with one row per logit row (:data:`CSV_COLUMNS`) and
``FILE.json`` beside it (the prior, the settings, the summary). Reading one back is defensive: the
sidecar and the optional columns may be missing; input that is not a pseudo-label CSV at all is a
:class:`~clipdebias.utils.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipdebias import __version__
from clipdebias.metrics import imbalance_ratio
from clipdebias.pseudolabels.labels import PseudoLabels, PseudoLabelSummary
from clipdebias.utils.atomic import Writer, atomic_write_group, bytes_writer, json_bytes
from clipdebias.utils.errors import UserError
from clipdebias.utils.json_values import as_number, as_text, as_vector, read_json_object

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
REQUIRED_CSV_COLUMNS = ("pseudo_label", "confidence", "raw_pseudo_label", "raw_confidence")
OPTIONAL_CSV_COLUMNS = ("label", "pseudo_class", "selected")
_TRUE_WORDS = frozenset({"true", "1", "yes"})


# --- writing ------------------------------------------------------------------------------------


def pseudo_label_table(
    result: PseudoLabels, indices: np.ndarray, paths: list[str], truth: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """The CSV table (docs/formats.md): one row per logit row; ``indices`` are their dataset
    positions, ``paths`` / ``truth`` (``-1`` = unknown) are indexed by dataset position."""
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
    select_topk_per_class: int | None = None,
) -> dict:
    """The JSON sidecar of a pseudo-label CSV (docs/formats.md), as ``pseudolabel`` and ``zeroshot`` write it."""
    return {
        "classes": classes,
        "debias": result.mode,
        "tau": result.tau,
        "threshold": result.threshold,
        "select_topk_per_class": select_topk_per_class,
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
        **({"balance": _balance_record(result)} if result.balance is not None else {}),
        "clipdebias": __version__,
    }


def _balance_record(result: PseudoLabels) -> dict:
    """The balanced correction's sidecar entry: its target, the passes over the logits, the rows of the
    subsample its start was fitted on, the marginal and offsets it reached."""
    balance = result.balance
    assert balance is not None
    return {
        "target_prior": None if result.target_prior is None else [float(x) for x in result.target_prior],
        "iterations": balance.iterations,
        "subsample_rows": balance.subsample_rows,
        "converged": balance.converged,
        "marginal": [float(x) for x in balance.marginal],
        "offsets": [float(x) for x in balance.offsets],
    }


def pseudo_label_files(table: pd.DataFrame, out: str | Path, sidecar: dict) -> list[tuple[Path, Writer]]:
    """The CSV ``out`` and its sidecar (``out`` with ``.json``), as ``(path, writer)`` pairs for
    :func:`clipdebias.utils.atomic.atomic_write_group`."""
    out = Path(out).expanduser()
    return [
        (out, lambda handle: table.to_csv(handle, index=False, errors="surrogateescape")),
        (out.with_suffix(".json"), bytes_writer(json_bytes(sidecar))),
    ]


def write_pseudo_labels(table: pd.DataFrame, out: str | Path, sidecar: dict) -> tuple[Path, Path]:
    """``out`` (the CSV) and ``out`` with ``.json`` (the sidecar), each written atomically, the
    sidecar removed before the CSV is replaced: a kill never leaves a new CSV beside an old sidecar."""
    csv, sidecar_path = atomic_write_group(pseudo_label_files(table, out, sidecar))
    return csv, sidecar_path


# --- reading ------------------------------------------------------------------------------------


def read_csv_columns(path: str | Path, columns: Collection[str]) -> pd.DataFrame:
    """The ``columns`` of a CSV (those it has; no other column is read), file names kept as written
    (``surrogateescape``: they need not be UTF-8). pandas' errors pass through (``OSError`` and
    ``ValueError`` subclasses): each reader words them for its input."""
    return pd.read_csv(
        path,
        usecols=lambda name: name in columns,
        keep_default_na=True,
        low_memory=False,
        encoding_errors="surrogateescape",
    )


@dataclass(frozen=True, eq=False)
class PseudoLabelTable:
    """A pseudo-label CSV (docs/formats.md) as arrays, plus what its sidecar says.

    ``labels`` is ``None`` when no row has a ground-truth label, else int64 with ``-1`` for unknown.
    ``selected`` is ``None`` when neither the CSV's ``selected`` column nor a threshold is known.
    ``threshold_inferred`` is true when the threshold was read off the ``selected`` column (no sidecar).
    """

    path: Path
    classes: tuple[str, ...]
    labels: np.ndarray | None
    pseudo_label: np.ndarray
    confidence: np.ndarray
    raw_pseudo_label: np.ndarray
    raw_confidence: np.ndarray
    selected: np.ndarray | None
    threshold: float | None
    threshold_inferred: bool
    tau: float | None
    prior: np.ndarray | None
    sidecar: Mapping[str, Any]
    notes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_rows(self) -> int:
        return int(self.pseudo_label.shape[0])

    @property
    def known(self) -> np.ndarray:
        """Boolean mask of the rows with a ground-truth label (all false without labels)."""
        if self.labels is None:
            return np.zeros(self.num_rows, dtype=bool)
        return self.labels >= 0

    @property
    def raw_selected(self) -> np.ndarray | None:
        """Rows whose plain zero-shot confidence reaches the threshold (``None`` without a threshold)."""
        if self.threshold is None:
            return None
        return self.raw_confidence >= self.threshold


def sidecar_path(csv_path: Path) -> Path:
    """``FILE.json`` beside ``FILE.csv``."""
    return csv_path.with_suffix(".json")


def _integer_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any() or (values != np.round(values)).any() or (values < 0).any():
        raise UserError(f"{path}: column {column!r} must hold non-negative integers (class indices)")
    return values.astype(np.int64)


def _float_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any():
        raise UserError(f"{path}: column {column!r} must hold numbers in every row")
    return values


def _label_column(frame: pd.DataFrame, path: Path) -> np.ndarray | None:
    if "label" not in frame.columns:
        return None
    values = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~np.isnan(values)
    if not known.any():
        return None
    if (values[known] != np.round(values[known])).any():
        raise UserError(f"{path}: column 'label' must hold integer class indices or be empty")
    labels = np.full(values.shape, -1, dtype=np.int64)
    labels[known] = values[known].astype(np.int64)
    labels[labels < 0] = -1  # -1 already means unknown in the dataset sources
    return labels


def _selected_column(frame: pd.DataFrame) -> np.ndarray | None:
    if "selected" not in frame.columns:
        return None
    column = frame["selected"]
    if column.dtype == bool:
        return column.to_numpy(dtype=bool)
    return column.astype(str).str.strip().str.lower().isin(_TRUE_WORDS).to_numpy(dtype=bool)


def _class_names(
    frame: pd.DataFrame, sidecar: Mapping[str, Any], num_seen: int, notes: list[str], path: Path
) -> tuple[str, ...]:
    names = sidecar.get("classes")
    if isinstance(names, list) and names and all(as_text(name) is not None for name in names):
        if len(names) < num_seen:
            raise UserError(
                f"{path}: a class index reaches {num_seen - 1} but {sidecar_path(path).name} lists {len(names)} classes"
            )
        return tuple(as_text(name) or "" for name in names)
    found: dict[int, str] = {}
    if "pseudo_class" in frame.columns:
        pairs = frame[["pseudo_label", "pseudo_class"]].dropna().drop_duplicates("pseudo_label")
        found = {
            int(label): str(name) for label, name in zip(pairs["pseudo_label"], pairs["pseudo_class"], strict=True)
        }
    notes.append(
        f"no class list in a sidecar: {num_seen} classes inferred from the class indices seen"
        + (", names from 'pseudo_class'" if found else "")
    )
    return tuple(found.get(index, str(index)) for index in range(num_seen))


def read_pseudolabels(path: str | Path) -> PseudoLabelTable:
    """Read a pseudo-label CSV and, when present, its ``.json`` sidecar (docs/formats.md).

    Raises :class:`UserError` for a missing/unreadable file, missing required columns, no rows, or
    class indices outside the sidecar's class list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    try:
        frame = read_csv_columns(path, {*REQUIRED_CSV_COLUMNS, *OPTIONAL_CSV_COLUMNS})
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as err:
        raise UserError(
            f"{path} is not a readable CSV file ({str(err).splitlines()[0] if str(err) else 'empty'})"
        ) from err
    missing = [column for column in REQUIRED_CSV_COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(
            f"{path} is not a pseudo-label CSV: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED_CSV_COLUMNS)}; see docs/formats.md)"
        )
    if len(frame) == 0:
        raise UserError(f"{path} has no rows")

    notes: list[str] = []
    sidecar_file = sidecar_path(path)
    sidecar: dict[str, Any] = {}
    if sidecar_file.is_file():
        try:
            sidecar = read_json_object(sidecar_file)
        except UserError as err:
            notes.append(f"sidecar ignored: {err}")
    pseudo_label = _integer_column(frame, "pseudo_label", path)
    raw_pseudo_label = _integer_column(frame, "raw_pseudo_label", path)
    labels = _label_column(frame, path)
    num_seen = int(max(pseudo_label.max(), raw_pseudo_label.max(), labels.max() if labels is not None else -1)) + 1
    classes = _class_names(frame, sidecar, num_seen, notes, path)
    if labels is not None and labels.max() >= len(classes):
        raise UserError(f"{path}: a label reaches {int(labels.max())} but there are {len(classes)} classes")

    confidence = _float_column(frame, "confidence", path)
    threshold = as_number(sidecar.get("threshold"))
    selected = _selected_column(frame)
    inferred = False
    if threshold is None and selected is not None and selected.any():
        threshold, inferred = float(confidence[selected].min()), True
        notes.append(f"no threshold in a sidecar: about {threshold:.3f}, read off the 'selected' column")
    if selected is None and threshold is not None:
        selected = confidence >= threshold
    prior = as_vector(sidecar.get("prior"), len(classes))
    return PseudoLabelTable(
        path=path,
        classes=classes,
        labels=labels,
        pseudo_label=pseudo_label,
        confidence=confidence,
        raw_pseudo_label=raw_pseudo_label,
        raw_confidence=_float_column(frame, "raw_confidence", path),
        selected=selected,
        threshold=threshold,
        threshold_inferred=inferred,
        tau=as_number(sidecar.get("tau")),
        prior=prior,
        sidecar=sidecar,
        notes=tuple(notes),
    )
