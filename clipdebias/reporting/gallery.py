"""``gallery.png``: thumbnails of what a pseudo-label CSV labeled, one row per class.

Per class (all classes up to :data:`GALLERY_CLASSES`; beyond that the classes the correction moved
the most images into, then the largest), the :data:`PER_KIND` most confident images whose label
the correction kept (``raw_pseudo_label == pseudo_label``) and the :data:`PER_KIND` most confident
ones whose label it changed to the class, each captioned with its confidence or its raw label,
and framed green or red when the ground truth says the pseudo-label is right or wrong.

Images are read from the CSV's ``path`` column with clipdebias's own reader
(:func:`clipdebias.data.image_files.read_image`), as written or relative to the CSV's folder.
In-memory datasets (digits, CIFAR: paths like ``digits:train/12``) have no files: no gallery then,
and a note says why. Unreadable or missing files are skipped (the next candidate takes their
place) and counted in the caption. At most ``GALLERY_CLASSES * 2 * READ_TRIES`` files are opened,
so a gallery of ImageNet costs about as much as one of ten classes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from clipdebias.data.image_files import UnreadableImage, read_image
from clipdebias.pseudolabels.files import PseudoLabelTable, read_csv_columns
from clipdebias.reporting import plots

if TYPE_CHECKING:  # matplotlib is heavy: imported only when a chart is drawn, not with this module
    from matplotlib.figure import Figure

GALLERY_FILE = "gallery.png"
GALLERY_CLASSES = 20
"""Classes shown, one row each; beyond that many, those the correction moved the most images into."""
PER_KIND = 4
"""Thumbnails per class of each kind: the most confident images, and the ones the correction changed."""
READ_TRIES = 3 * PER_KIND
"""Candidates tried per class and kind before a row is left short (unreadable or missing files)."""
THUMB = 80
"""Pixels: thumbnails fit in a ``THUMB`` x ``THUMB`` cell, aspect kept."""
PAD = 6
CAPTION_HEIGHT = 14
NAME_WIDTH = 200
CAPTION_CHARS = 14
"""Class names under a thumbnail are cut to this many characters (a thumbnail is 80 px wide)."""
GROUP_GAP = 30
HEADER_HEIGHT = 64
FOOTER_HEIGHT = 26
FRAME = 3
RIGHT, WRONG, CELL = (46, 160, 67), (214, 39, 40), (235, 235, 235)
IN_MEMORY_PATH = re.compile(r"^[^/\\:]+:[^/\\]+/\d+$")
"""How :class:`clipdebias.data.sources.ArraySource` names its images: ``dataset:split/index``."""


@dataclass(frozen=True)
class Tile:
    """One thumbnail: the CSV row, its image (``uint8 [h, w, 3]``) and the text under it."""

    row: int
    image: np.ndarray
    caption: str
    correct: bool | None


@dataclass(frozen=True, eq=False)
class Gallery:
    """The classes shown (one row each) and their tiles; ``unreadable`` files were skipped."""

    classes: tuple[int, ...]
    confident: tuple[tuple[Tile, ...], ...]
    changed: tuple[tuple[Tile, ...], ...]
    unreadable: int
    num_classes: int
    figure: Figure

    @property
    def caption(self) -> str:
        shown = (
            f"All {self.num_classes} classes"
            if len(self.classes) == self.num_classes
            else f"{len(self.classes)} of {self.num_classes} classes: those the correction moved the most images "
            "into (then the largest)"
        )
        skipped = f" {self.unreadable} image file(s) could not be read and were skipped." if self.unreadable else ""
        return (
            f"What the pseudo-labels look like. {shown}, one row each: left, the {PER_KIND} most confident "
            "images labeled with the class by both the raw zero-shot and the debiased labels (confidence "
            f"under each); right, the {PER_KIND} most confident images whose label the debiasing changed to "
            "this class (the raw zero-shot label under each). A green frame marks a pseudo-label the ground "
            "truth confirms, a red one a wrong pseudo-label." + skipped
        )


def _file_paths(table: PseudoLabelTable) -> tuple[list[str] | None, str | None]:
    """The CSV's ``path`` column, or ``None`` and why there is none."""
    try:
        frame = read_csv_columns(table.path, {"path"})
    except (OSError, ValueError) as err:
        return None, f"the 'path' column could not be read ({err})"
    if "path" not in frame.columns or len(frame) != table.num_rows:
        return None, "the CSV has no 'path' column"
    return [value if isinstance(value, str) else "" for value in frame["path"].tolist()], None


def _locate(path: str, base: Path) -> Path | None:
    if not path:
        return None
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (base / candidate).is_file():
        return base / candidate
    return None


def _thumbnail(path: Path) -> np.ndarray | None:
    """The image fitted into a ``THUMB`` cell inside its frame, aspect kept (small images enlarged
    pixel by pixel, so an 8 x 8 digit stays sharp); ``None`` when it cannot be read."""
    try:
        image = read_image(path)
    except (UnreadableImage, OSError):
        return None
    side = THUMB - 2 * FRAME
    scale = side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    if scale < 1:
        image.thumbnail(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    else:
        image = image.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _chosen_classes(table: PseudoLabelTable) -> np.ndarray:
    counts = np.bincount(table.pseudo_label, minlength=table.num_classes)[: table.num_classes]
    if table.num_classes <= GALLERY_CLASSES:
        return np.arange(table.num_classes)
    changed = table.pseudo_label != table.raw_pseudo_label
    moved = np.bincount(table.pseudo_label[changed], minlength=table.num_classes)[: table.num_classes]
    order = np.lexsort((np.arange(table.num_classes), -counts, -moved))
    return np.sort(order[:GALLERY_CLASSES])


class _Reader:
    """Reads thumbnails of CSV rows, counting the files that cannot be read."""

    def __init__(self, table: PseudoLabelTable, paths: Sequence[str]):
        self.table, self.paths, self.base = table, paths, table.path.parent
        self.unreadable = 0
        self.found = 0

    def tiles(self, rows: np.ndarray, caption: Callable[[int], str]) -> tuple[Tile, ...]:
        tiles: list[Tile] = []
        tried = 0
        for row in rows:
            if len(tiles) == PER_KIND or tried == READ_TRIES:
                break
            tried += 1
            where = _locate(self.paths[row], self.base)
            image = _thumbnail(where) if where is not None else None
            if where is not None:
                self.found += 1
            if image is None:
                self.unreadable += where is not None
                continue
            truth = self.table.labels[row] if self.table.labels is not None else -1
            correct = None if truth < 0 else bool(truth == self.table.pseudo_label[row])
            tiles.append(Tile(int(row), image, caption(int(row)), correct))
        return tuple(tiles)


def build_gallery(table: PseudoLabelTable) -> tuple[Gallery | None, str | None]:
    """The gallery of a pseudo-label CSV, or ``None`` and a note saying why there is none."""
    paths, why = _file_paths(table)
    if paths is None:
        return None, f"no {GALLERY_FILE}: {why}"
    if paths and all(IN_MEMORY_PATH.match(path) for path in paths[:1000]):
        return None, (
            f"no {GALLERY_FILE}: the images are held in memory (paths like {paths[0]!r}, a dataset such as "
            "digits or CIFAR), not files"
        )
    reader = _Reader(table, paths)
    names = table.classes
    classes = _chosen_classes(table)
    confident_rows, changed_rows = [], []
    for label in classes:
        rows = np.flatnonzero(table.pseudo_label == label)
        rows = rows[np.argsort(-table.confidence[rows], kind="stable")]
        moved = table.raw_pseudo_label[rows] != label
        confident = reader.tiles(rows[~moved], lambda row: f"{table.confidence[row]:.2f}")
        changed = reader.tiles(
            rows[moved], lambda row: f"was {plots.short_name(names[table.raw_pseudo_label[row]], CAPTION_CHARS)}"
        )
        confident_rows.append(confident)
        changed_rows.append(changed)
    if not any(confident_rows) and not any(changed_rows):
        if reader.found:
            return None, f"no {GALLERY_FILE}: none of the {reader.found} image files tried could be read"
        return None, f"no {GALLERY_FILE}: the CSV's paths are not image files here (moved, or another machine's?)"
    gallery = Gallery(
        classes=tuple(int(c) for c in classes),
        confident=tuple(confident_rows),
        changed=tuple(changed_rows),
        unreadable=reader.unreadable,
        num_classes=table.num_classes,
        figure=_figure(table, classes, confident_rows, changed_rows, reader.unreadable),
    )
    return gallery, None


# --- drawing ------------------------------------------------------------------------------------


def _cell_x(kind: int, slot: int) -> int:
    return NAME_WIDTH + kind * (PER_KIND * (THUMB + PAD) + GROUP_GAP) + slot * (THUMB + PAD)


def _figure(
    table: PseudoLabelTable,
    classes: np.ndarray,
    confident: Sequence[Sequence[Tile]],
    changed: Sequence[Sequence[Tile]],
    unreadable: int,
) -> Figure:
    """One image (the thumbnails pasted at pixel positions) in one axes, the text drawn by matplotlib."""
    from matplotlib.figure import Figure  # local: matplotlib loads only when a chart is drawn

    row_height = THUMB + CAPTION_HEIGHT + PAD
    width = max(_cell_x(2, 0) - GROUP_GAP + PAD, int(plots.MIN_WIDTH * plots.DPI))
    height = HEADER_HEIGHT + row_height * len(classes) + FOOTER_HEIGHT
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    texts: list[tuple[float, float, str, dict]] = []
    counts = np.bincount(table.pseudo_label, minlength=table.num_classes)
    for line, label in enumerate(classes):
        top = HEADER_HEIGHT + line * row_height
        name = plots.short_name(table.classes[label])
        texts.append((PAD, top + THUMB / 2, f"{name}\n{counts[label]:,} images", {"va": "center", "fontsize": 9}))
        for kind, tiles in enumerate((confident[line], changed[line])):
            for slot in range(PER_KIND):
                if slot >= len(tiles):
                    break
                x, tile = _cell_x(kind, slot), tiles[slot]
                canvas[top : top + THUMB, x : x + THUMB] = CELL
                if tile.correct is not None:
                    colour = RIGHT if tile.correct else WRONG
                    canvas[top : top + THUMB, x : x + THUMB] = colour
                    canvas[top + FRAME : top + THUMB - FRAME, x + FRAME : x + THUMB - FRAME] = CELL
                h, w = tile.image.shape[:2]
                h, w = min(h, THUMB - 2 * FRAME), min(w, THUMB - 2 * FRAME)
                y0, x0 = top + (THUMB - h) // 2, x + (THUMB - w) // 2
                canvas[y0 : y0 + h, x0 : x0 + w] = tile.image[:h, :w]
                texts.append((x + THUMB / 2, top + THUMB + 2, tile.caption, {"ha": "center", "va": "top"}))
            if not tiles:
                empty = "no image kept this label" if kind == 0 else "none changed to this class"
                texts.append((_cell_x(kind, 0) + 4, top + THUMB / 2, empty, {"va": "center", "color": "gray"}))
    figure = Figure(figsize=(width / plots.DPI, height / plots.DPI), dpi=plots.DPI)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, extent=(0, width, height, 0), interpolation="nearest", aspect="auto")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    shown = len(classes) == table.num_classes
    title = "What was labeled" + ("" if shown else f" ({len(classes)} of {table.num_classes} classes)")
    ax.text(PAD, 8, title, fontsize=13, va="top")
    for kind, header in enumerate(
        ("most confident, label unchanged", "most confident, changed to it by the debiasing")
    ):
        ax.text(_cell_x(kind, 0), HEADER_HEIGHT - 6, header, fontsize=10, va="bottom", weight="bold")
    footer = "frame: green = right, red = wrong (by the ground truth); no frame = no ground truth"
    if unreadable:
        footer += f"; {unreadable} unreadable image file(s) skipped"
    ax.text(PAD, height - FOOTER_HEIGHT / 2, footer, fontsize=8, va="center", color="dimgray")
    for x, y, text, style in texts:
        ax.text(x, y, text, **({"fontsize": 7} | style))
    return figure
