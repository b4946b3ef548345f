"""Reading what clipdebias commands wrote (docs/formats.md) back into memory, defensively.

Two inputs: a run folder of ``ssl`` / ``zeroshot`` (``metrics.json``, ``metrics.jsonl``,
``config.json``, maybe ``pseudolabels.csv``) and a pseudo-label CSV with its optional JSON sidecar.
Optional fields may be missing, ``null`` or of the wrong type: they read as ``None`` (and a note
says why when that loses information). Input that is not one of these at all (no metrics, a CSV
without the required columns, a file that is not JSON) is a :class:`~clipdebias.utils.errors.UserError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipdebias.training.run_folder import CONFIG, METRICS, METRICS_LINES, PSEUDOLABELS
from clipdebias.utils.errors import UserError

REQUIRED_CSV_COLUMNS = ("pseudo_label", "confidence", "raw_pseudo_label", "raw_confidence")
OPTIONAL_CSV_COLUMNS = ("label", "pseudo_class", "selected")
_TRUE_WORDS = frozenset({"true", "1", "yes"})


# --- typed access to loosely typed JSON values -------------------------------------------------


def as_number(value: Any) -> float | None:
    """A finite float from an int/float JSON value; ``None`` for anything else (bool, str, null, nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_imbalance(value: Any) -> float | None:
    """An imbalance ratio read from a run; ``None`` where there is none: ``metrics.json`` records
    0.0 for an epoch without a single confident pseudo-label (:func:`clipdebias.metrics.imbalance_ratio`)."""
    number = as_number(value)
    return number if number is not None and number > 0 else None


def as_vector(value: Any, length: int | None = None) -> np.ndarray | None:
    """A float64 vector from a JSON list of numbers (of ``length`` if given); ``None`` otherwise."""
    if not isinstance(value, list) or not value:
        return None
    numbers = [as_number(item) for item in value]
    if any(number is None for number in numbers):
        return None
    if length is not None and len(numbers) != length:
        return None
    return np.asarray(numbers, dtype=np.float64)


def as_text(value: Any) -> str | None:
    """A string from a JSON string or number; ``None`` for null, lists and objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(obj, dict):
        raise UserError(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def _read_epochs(path: Path) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """The epoch records of ``metrics.jsonl``, one per epoch number (a resumed run's last wins), sorted."""
    notes: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return (), [f"{path.name} could not be read ({err}); no per-epoch charts"]
    by_epoch: dict[float, dict[str, Any]] = {}
    skipped = 0
    for position, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict):
            skipped += 1
            continue
        epoch = as_number(record.get("epoch"))
        by_epoch[epoch if epoch is not None else float(position)] = record
    if skipped:
        notes.append(f"{path.name}: skipped {skipped} line(s) that are not JSON objects")
    return tuple(by_epoch[key] for key in sorted(by_epoch)), notes


# --- the pseudo-label CSV ------------------------------------------------------------------------


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


def _integer_column(frame: Any, column: str, path: Path) -> np.ndarray:
    values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any() or (values != np.round(values)).any() or (values < 0).any():
        raise UserError(f"{path}: column {column!r} must hold non-negative integers (class indices)")
    return values.astype(np.int64)


def _float_column(frame: Any, column: str, path: Path) -> np.ndarray:
    values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any():
        raise UserError(f"{path}: column {column!r} must hold numbers in every row")
    return values


def _label_column(frame: Any, path: Path) -> np.ndarray | None:
    if "label" not in frame.columns:
        return None
    import pandas as pd

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


def _selected_column(frame: Any) -> np.ndarray | None:
    if "selected" not in frame.columns:
        return None
    column = frame["selected"]
    if column.dtype == bool:
        return column.to_numpy(dtype=bool)
    return column.astype(str).str.strip().str.lower().isin(_TRUE_WORDS).to_numpy(dtype=bool)


def _class_names(
    frame: Any, sidecar: Mapping[str, Any], num_seen: int, notes: list[str], path: Path
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
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    wanted = set(REQUIRED_CSV_COLUMNS) | set(OPTIONAL_CSV_COLUMNS)
    try:
        frame = pd.read_csv(
            path,
            usecols=lambda name: name in wanted,
            keep_default_na=True,
            low_memory=False,
            encoding_errors="surrogateescape",
        )
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
            sidecar = _read_json_object(sidecar_file)
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


# --- the run folder ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunRecord:
    """A run folder of ``ssl`` / ``zeroshot`` as read back: every optional piece may be absent.

    ``metrics`` is ``{}`` for an unfinished run (no ``metrics.json`` yet); ``epochs`` holds the
    ``metrics.jsonl`` records sorted by epoch; ``num_classes`` is ``None`` when nothing says it.
    """

    path: Path
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    epochs: tuple[Mapping[str, Any], ...]
    classes: tuple[str, ...]
    num_classes: int | None
    pseudolabels: PseudoLabelTable | None
    notes: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def value(self, key: str) -> Any:
        """``key`` from ``metrics.json``, else from ``config.json`` (``None`` if neither has it)."""
        if self.metrics.get(key) is not None:
            return self.metrics[key]
        return self.config.get(key)

    def number(self, key: str) -> float | None:
        """A numeric final metric: ``metrics.json``'s, else the last epoch's."""
        found = as_number(self.metrics.get(key))
        if found is None and self.epochs:
            found = as_number(self.epochs[-1].get(key))
        return found

    def pseudo_label_number(self, key: str, epoch_key: str) -> float | None:
        """``metrics.json``'s ``pseudo_labels[key]``, else the last epoch's ``epoch_key``."""
        block = self.metrics.get("pseudo_labels")
        found = as_number(block.get(key)) if isinstance(block, dict) else None
        if found is None and self.epochs:
            found = as_number(self.epochs[-1].get(epoch_key))
        return found

    def epoch_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of a numeric per-epoch field, only the epochs where it is a number."""
        xs, ys = [], []
        for position, record in enumerate(self.epochs, start=1):
            value = as_number(record.get(key))
            if value is not None:
                epoch = as_number(record.get("epoch"))
                xs.append(epoch if epoch is not None else float(position))
                ys.append(value)
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def epoch_vectors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, matrix [E, C])`` of a per-epoch per-class field (counts, prior) of the right length."""
        xs, rows = [], []
        for position, record in enumerate(self.epochs, start=1):
            vector = as_vector(record.get(key), self.num_classes)
            if vector is not None:
                epoch = as_number(record.get("epoch"))
                xs.append(epoch if epoch is not None else float(position))
                rows.append(vector)
        if not rows:
            return np.zeros(0), np.zeros((0, self.num_classes or 0))
        return np.asarray(xs, dtype=np.float64), np.stack(rows)

    def final_counts(self) -> np.ndarray | None:
        """The last epoch's confident pseudo-label counts per class (``metrics.json`` first)."""
        block = self.metrics.get("pseudo_labels")
        counts = as_vector(block.get("class_counts"), self.num_classes) if isinstance(block, dict) else None
        if counts is None:
            _, matrix = self.epoch_vectors("pseudo_label_counts")
            counts = matrix[-1] if len(matrix) else None
        return counts


def _first_length(candidates: Sequence[Any]) -> int | None:
    for candidate in candidates:
        number = as_number(candidate)
        if number is not None and number >= 1 and number == int(number):
            return int(number)
        if isinstance(candidate, list) and candidate:
            return len(candidate)
    return None


def is_run_folder(path: Path) -> bool:
    """A folder holding ``metrics.json`` or ``metrics.jsonl``."""
    return path.is_dir() and ((path / METRICS).is_file() or (path / METRICS_LINES).is_file())


def read_run(path: str | Path) -> RunRecord:
    """Read a run folder. Needs ``metrics.json`` or (for a run still going) ``metrics.jsonl``.

    Raises :class:`UserError` for a missing folder, a folder with neither file, or a metrics/config
    file that is not a JSON object.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} does not exist or is not a folder")
    if not is_run_folder(path):
        raise UserError(
            f"{path} is not a clipdebias run folder: it has no {METRICS} (nor {METRICS_LINES}); "
            "pass the --out folder of 'ssl' or 'zeroshot', or a pseudo-label CSV"
        )
    notes: list[str] = []
    metrics = _read_json_object(path / METRICS) if (path / METRICS).is_file() else {}
    if not metrics:
        notes.append(f"no {METRICS}: the run has not finished, reporting its epochs so far")
    config: dict[str, Any] = {}
    if (path / CONFIG).is_file():
        try:
            config = _read_json_object(path / CONFIG)
        except UserError as err:
            notes.append(f"{CONFIG} ignored: {err}")
    epochs: tuple[dict[str, Any], ...] = ()
    if (path / METRICS_LINES).is_file():
        epochs, epoch_notes = _read_epochs(path / METRICS_LINES)
        notes.extend(epoch_notes)
    pseudolabels = None
    if (path / PSEUDOLABELS).is_file():
        try:
            pseudolabels = read_pseudolabels(path / PSEUDOLABELS)
        except UserError as err:
            notes.append(f"{PSEUDOLABELS} ignored: {err}")

    found_block = metrics.get("pseudo_labels")
    pseudo_block: dict[str, Any] = found_block if isinstance(found_block, dict) else {}
    last_epoch = epochs[-1] if epochs else {}
    num_classes = _first_length(
        [
            metrics.get("num_classes"),
            metrics.get("classes"),
            config.get("classes"),
            metrics.get("per_class_top1"),
            pseudo_block.get("class_counts"),
            last_epoch.get("pseudo_label_counts"),
            last_epoch.get("prior"),
        ]
    )
    if num_classes is None and pseudolabels is not None:
        num_classes = pseudolabels.num_classes
    classes: tuple[str, ...] = ()
    for candidate in (metrics.get("classes"), config.get("classes")):
        if isinstance(candidate, list) and len(candidate) == num_classes:
            classes = tuple(as_text(name) or str(index) for index, name in enumerate(candidate))
            break
    if not classes and num_classes is not None:
        classes = tuple(str(index) for index in range(num_classes))
    return RunRecord(
        path=path,
        config=config,
        metrics=metrics,
        epochs=epochs,
        classes=classes,
        num_classes=num_classes,
        pseudolabels=pseudolabels,
        notes=tuple(notes),
    )
