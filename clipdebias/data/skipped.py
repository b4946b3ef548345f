"""Images a run could not read: skipped, counted, and listed in ``OUT/skipped_images.csv``.

``ssl`` finds them while loading (:mod:`clipdebias.data.streams` substitutes another row and reports the
unreadable one), ``zeroshot`` from the embedding cache's manifests. Either way the run folder lists
each once, with the reason (docs/formats.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SkippedImage:
    """One unreadable image: its split, its position in the split, its path, why it was skipped."""

    split: str
    index: int
    path: str
    reason: str

    def as_row(self) -> tuple[str, int, str, str]:
        return (self.split, self.index, self.path, self.reason)


class SkippedImages:
    """The unreadable images met so far, each once (by split and index), in the order met.

    ``on_new`` is called with the collection after each image met for the first time (a run writes
    its list then, so a killed run keeps what it found).
    """

    def __init__(self, found: Iterable[SkippedImage] = (), on_new: Callable[[SkippedImages], None] | None = None):
        self._images: dict[tuple[str, int], SkippedImage] = {}
        for image in found:
            self._images.setdefault((image.split, image.index), image)
        self.on_new = on_new

    def add(self, image: SkippedImage) -> bool:
        """Record ``image``; ``True`` if it was not known yet."""
        key = (image.split, image.index)
        if key in self._images:
            return False
        self._images[key] = image
        if self.on_new is not None:
            self.on_new(self)
        return True

    def extend(self, images: Iterable[SkippedImage]) -> None:
        for image in images:
            self.add(image)

    def __len__(self) -> int:
        return len(self._images)

    def __iter__(self) -> Iterator[SkippedImage]:
        return iter(self._images.values())

    def count(self, split: str) -> int:
        """How many of them belong to ``split``."""
        return sum(image.split == split for image in self)


def skipped_from_manifest(split: str, manifest: object) -> list[SkippedImage]:
    """The rows of an embedding cache ``manifest.csv`` (a DataFrame) that name an error."""
    failed = manifest[manifest["error"] != ""]  # type: ignore[index]
    return [
        SkippedImage(split, int(index), str(path), str(reason))
        for index, path, reason in zip(failed["index"], failed["path"], failed["error"], strict=True)
    ]
