"""Reading a run folder of ``ssl`` / ``zeroshot`` (docs/formats.md) back into memory, defensively.

A run folder holds ``metrics.json``, ``metrics.jsonl``, ``config.json`` and maybe
``pseudolabels.csv`` (read by :func:`clipdebias.pseudolabels.files.read_pseudolabels`). Optional
fields may be missing, ``null`` or of the wrong type: they read as ``None`` (and a note says why
when that loses information). A folder that is not a run at all (no metrics, a metrics file that is
not JSON) is a :class:`~clipdebias.utils.errors.UserError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipdebias.pseudolabels.files import PseudoLabelTable, read_pseudolabels
from clipdebias.training.run_layout import CONFIG, METRICS, METRICS_LINES, PSEUDOLABELS
from clipdebias.utils.errors import UserError
from clipdebias.utils.json_values import as_number, as_text, as_vector, read_json_object


def as_imbalance(value: Any) -> float | None:
    """An imbalance ratio read from a run; ``None`` where there is none: ``metrics.json`` records
    0.0 for an epoch without a single confident pseudo-label (:func:`clipdebias.metrics.imbalance_ratio`)."""
    number = as_number(value)
    return number if number is not None and number > 0 else None


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
    metrics = read_json_object(path / METRICS) if (path / METRICS).is_file() else {}
    if not metrics:
        notes.append(f"no {METRICS}: the run has not finished, reporting its epochs so far")
    config: dict[str, Any] = {}
    if (path / CONFIG).is_file():
        try:
            config = read_json_object(path / CONFIG)
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
