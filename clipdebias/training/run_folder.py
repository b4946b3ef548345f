"""The run folder (``--out``) of ``ssl`` and ``zeroshot``: every file a training run writes.

All writes go through :class:`RunFolder`, atomically, so a run killed at any moment leaves
complete files, and so that "only rank 0 writes" under torch.distributed is the one flag
``writes``. The layout is specified in docs/formats.md.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from clipdebias.data.skipped import SkippedImage
from clipdebias.training.run_layout import (
    CHECKPOINT,
    CONFIG,
    INDEX_COLUMNS,
    METRICS,
    METRICS_LINES,
    SKIPPED_COLUMNS,
    SKIPPED_IMAGES,
)
from clipdebias.utils.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_abandoned_temporaries_in,
)
from clipdebias.utils.errors import UserError


class RunFolder:
    """Reads and writes the files of one run folder. With ``writes=False`` every write is a no-op."""

    def __init__(self, path: str | Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes

    def file(self, name: str) -> Path:
        return self.path / name

    def has_run(self) -> bool:
        """True when the folder already holds a run (its config or a checkpoint)."""
        return self.file(CONFIG).is_file() or self.file(CHECKPOINT).is_file()

    def remove_abandoned_temporaries(self) -> None:
        """Remove the temporary files a killed run left in the folder (see :mod:`clipdebias.utils.atomic`)."""
        if self.writes and self.path.is_dir():
            remove_abandoned_temporaries_in(self.path)

    def read_config(self) -> dict[str, Any] | None:
        if not self.file(CONFIG).is_file():
            return None
        try:
            return json.loads(self.file(CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read {str(self.file(CONFIG))!r}: {err}") from err

    def write_config(self, config: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self.file(CONFIG), config)

    def write_index(self, name: str, rows: Sequence[tuple[int, str, int]]) -> None:
        """``labeled_index.csv`` / ``unlabeled_index.csv``: ``index,path,label`` rows."""
        if not self.writes:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
        atomic_write_bytes(self.file(name), _encode_paths(buffer.getvalue()))

    def write_skipped_images(self, images: Sequence[SkippedImage]) -> None:
        """``skipped_images.csv``: ``split,index,path,reason`` of every image the run could not read."""
        if not self.writes:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(SKIPPED_COLUMNS)
        writer.writerows(image.as_row() for image in sorted(images, key=lambda image: (image.split, image.index)))
        atomic_write_bytes(self.file(SKIPPED_IMAGES), _encode_paths(buffer.getvalue()))

    def read_skipped_images(self) -> list[SkippedImage]:
        """The images listed in ``skipped_images.csv`` (none when the file is missing)."""
        if not self.file(SKIPPED_IMAGES).is_file():
            return []
        try:
            with open(self.file(SKIPPED_IMAGES), newline="", encoding="utf-8", errors="surrogateescape") as handle:
                rows = list(csv.DictReader(handle))
            return [SkippedImage(r["split"], int(r["index"]), r["path"], r["reason"]) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"cannot read {str(self.file(SKIPPED_IMAGES))!r}: {err}") from err

    def write_history(self, records: Sequence[dict[str, Any]]) -> None:
        """``metrics.jsonl``, rewritten whole from the records, so it always matches the checkpoint."""
        if self.writes:
            atomic_write_text(self.file(METRICS_LINES), "".join(json.dumps(r) + "\n" for r in records))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self.file(METRICS), metrics)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.writes:
            atomic_write(self.file(CHECKPOINT), lambda handle: torch.save(state, handle))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint's contents, or ``None`` when the folder has none."""
        if not self.file(CHECKPOINT).is_file():
            return None
        try:
            return torch.load(self.file(CHECKPOINT), map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file
            raise UserError(f"cannot read checkpoint {str(self.file(CHECKPOINT))!r}: {err}") from err


def _encode_paths(text: str) -> bytes:
    """UTF-8, with the bytes of file names that are not UTF-8 written back as they are on disk."""
    return text.encode("utf-8", "surrogateescape")


def check_resume(
    run: RunFolder,
    current: dict[str, Any],
    resume: bool,
    may_change: Sequence[str],
    added: Mapping[str, Any] | None = None,
) -> None:
    """Refuse to overwrite a run folder without ``--resume``, and to resume it with other options.

    ``current`` is the ``config.json`` the new run would write; keys in ``may_change`` (and the
    clipdebias ``version``) may differ from the saved one. ``added``: options newer than some run
    folders, with the value a folder that lacks them was trained with.
    """
    out = str(run.path)
    if run.path.exists() and not run.path.is_dir():
        raise UserError(f"--out {out!r} is a file; give a folder")
    if not run.has_run():
        return
    if not resume:
        raise UserError(f"{out!r} already holds a run; pass --resume to continue it, or choose another --out")
    saved = {**(added or {}), **(run.read_config() or {})}
    ignored = set(may_change) | {"version"}
    changed = sorted(k for k in current if k not in ignored and saved.get(k) != current[k])
    if changed:
        raise UserError(f"cannot resume {out!r}: it was started with other options ({', '.join(changed)})")
