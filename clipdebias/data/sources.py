"""Dataset registry: every dataset split is an :class:`ImageSource` of images and integer labels.

Known datasets and where they are read from:

- ``digits``: scikit-learn's 8x8 digits, shipped with scikit-learn (no root). A fixed stratified
  70/30 split (``random_state=0``): 1257 train and 540 val images.
- ``cifar10`` / ``cifar100``: torchvision's python format under ``--data-root`` (the folder that
  holds ``cifar-10-batches-py`` / ``cifar-100-python``, or that folder itself). Never downloaded.
- ``imagenet`` / ``imagefolder``: ``DATA_ROOT/train/<class>/*`` and ``DATA_ROOT/val/<class>/*``;
  classes are the sorted folder names of ``train`` (``val`` must have the same folders).

Splits are called ``train`` and ``val`` everywhere (``val`` is the test split of digits/CIFAR).
"""

from __future__ import annotations

import os
import pickle
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from clipdebias.data.image_files import UnreadableImage, read_image  # noqa: F401 - UnreadableImage is raised by load()
from clipdebias.utils.errors import UserError
from clipdebias.utils.formatting import count_of

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "imagefolder")
SPLITS = ("train", "val")
FOLDER_DATASETS = ("imagenet", "imagefolder")
GRAYSCALE_DATASETS = ("digits",)
"""Datasets whose images are grayscale: only the ``cnn`` network and the ``head`` student take them."""
MIN_CLASSES = 2
"""Classes that pseudo-labelling and training need (``ssl``, ``zeroshot``, ``pseudolabel``): with one
class every label and every prediction is right by construction, and "top-1 100%" means nothing.
``encode`` takes one class: embeddings do not depend on labels."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

DIGITS_VAL_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0

_CIFAR_LAYOUT = {
    # name: (folder, train files, val files, meta file, key of the class names, key of the labels)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "label_names",
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


class ImageSource(ABC):
    """One split of a dataset: ``len(source)`` images, ``source.labels`` (int64, -1 = unknown),
    ``source.classes`` (class names in label order), ``source.path(i)`` (a stable identifier) and
    ``source.load(i)`` (an RGB ``PIL.Image``). Indexing gives ``(image, label)``, so a source can be
    handed to a ``torch.utils.data.DataLoader`` with a transform wrapper.
    """

    def __init__(self, name: str, split: str, classes: list[str], labels: np.ndarray):
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def path(self, index: int) -> str:
        """A stable identifier of image ``index`` (a file path, or ``dataset:split/index``)."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Image ``index`` as RGB; raises :class:`UnreadableImage` if it cannot be decoded."""

    def load_at_least(self, index: int, min_side: int | None) -> Image.Image:
        """Image ``index`` as :meth:`load` gives it, or a JPEG file decoded at a reduced size that
        keeps at least ``min_side`` pixels on its shortest side (:func:`read_image`; ``None``: full size)."""
        return self.load(index)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index), int(self.labels[index])


class ArraySource(ImageSource):
    """Images held in memory as a uint8 array ``[N, H, W]`` (gray) or ``[N, H, W, 3]`` (RGB)."""

    def __init__(self, name: str, split: str, classes: list[str], images: np.ndarray, labels: np.ndarray):
        super().__init__(name, split, classes, labels)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(self.labels):
            raise ValueError("images must be uint8 [N, H, W] or [N, H, W, 3] with one label per image")
        self.images = images

    def path(self, index: int) -> str:
        return f"{self.name}:{self.split}/{index}"

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


class FolderSource(ImageSource):
    """Image files on disk, one folder per class: ``split_dir/<class>/**/<file>`` (every path starts
    with ``str(split_dir)``)."""

    def __init__(
        self, name: str, split: str, classes: list[str], paths: list[str], labels: np.ndarray, split_dir: Path
    ):
        super().__init__(name, split, classes, labels)
        self.paths = list(paths)
        self.split_dir = split_dir

    def path(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int) -> Image.Image:
        return read_image(self.paths[index])

    def load_at_least(self, index: int, min_side: int | None) -> Image.Image:
        return read_image(self.paths[index], min_side)


def check_dataset(name: str, split: str, root: str | Path | None = None, min_classes: int = 1) -> None:
    """The checks of :func:`open_dataset` that cost nothing (name, split, root is a folder, no root
    for digits; for a folder dataset, at least ``min_classes`` class folders, one ``scandir``), for
    commands that run them before loading a model or scanning the images."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if name == "digits":
        if root is not None:
            raise UserError("--data-root does not apply to --dataset digits (it ships with scikit-learn); leave it out")
        return
    if root is None:
        raise UserError(f"dataset {name!r} needs --data-root DIR")
    if not Path(root).expanduser().is_dir():
        raise UserError(f"--data-root {str(Path(root).expanduser())!r} is not a directory")
    split_dir = Path(root).expanduser() / split
    if name in FOLDER_DATASETS and split_dir.is_dir():
        classes = _class_folders(split_dir)
        if 0 < len(classes) < min_classes:
            raise UserError(
                f"{name}: {str(split_dir)!r} has {count_of(len(classes), 'class folder')} ({', '.join(classes)}); "
                f"pseudo-labels and training need at least {min_classes} classes "
                "(with one, every label is right by construction)"
            )


def open_dataset(name: str, split: str, root: str | Path | None = None, min_classes: int = 1) -> ImageSource:
    """Open one split of a known dataset, or raise :class:`UserError` saying what is wrong
    (``min_classes``: see :func:`check_dataset`)."""
    check_dataset(name, split, root, min_classes)
    if name == "digits":
        return load_digits_split(split)
    root = Path(root).expanduser()  # type: ignore[arg-type]  # checked above
    if name in _CIFAR_LAYOUT:
        return load_cifar_split(name, split, root)
    return load_folder_split(name, split, root)


def load_digits_split(split: str) -> ArraySource:
    """scikit-learn's digits as 8x8 uint8 images (values 0..16 scaled to 0..255), fixed split."""
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    positions = np.arange(len(images))
    train_pos, val_pos = train_test_split(
        positions, test_size=DIGITS_VAL_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    chosen = np.sort(train_pos if split == "train" else val_pos)
    classes = [str(c) for c in digits.target_names]
    return ArraySource("digits", split, classes, images[chosen], digits.target[chosen])


def _cifar_dir(name: str, root: Path) -> Path:
    folder = _CIFAR_LAYOUT[name][0]
    for candidate in (root / folder, root):
        if (candidate / _CIFAR_LAYOUT[name][3]).is_file():
            return candidate
    raise UserError(
        f"{name} not found under --data-root {str(root)!r}: expected {folder}/ in torchvision's "
        f"python format (nothing is downloaded; fetch it with torchvision.datasets.{name.upper()}"
        f"(root, download=True) on a machine with internet)"
    )


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"cannot read CIFAR file {str(path)!r}: {err}") from err


def load_cifar_split(name: str, split: str, root: Path) -> ArraySource:
    """CIFAR-10/100 in torchvision's python pickle format."""
    base = _cifar_dir(name, root)
    _, train_files, val_files, meta_file, names_key, labels_key = _CIFAR_LAYOUT[name]
    classes = list(_unpickle(base / meta_file)[names_key])
    images, labels = [], []
    for file in train_files if split == "train" else val_files:
        if not (base / file).is_file():
            raise UserError(f"{name} is incomplete: {str(base / file)!r} is missing")
        batch = _unpickle(base / file)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch[labels_key])
    return ArraySource(name, split, classes, np.ascontiguousarray(np.concatenate(images)), np.asarray(labels))


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def _image_files(class_dir: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS))
    return files


def load_folder_split(name: str, split: str, root: Path) -> FolderSource:
    """``root/<split>/<class>/**/*.<image extension>``, classes from ``root/train`` when present."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"{name}: {str(split_dir)!r} does not exist; expected DATA_ROOT/{split}/<class>/<image files>")
    classes = _class_folders(split_dir)
    if not classes:
        raise UserError(
            f"{name}: {str(split_dir)!r} has no class folders; expected DATA_ROOT/{split}/<class>/<image files>"
        )
    train_dir = root / "train"
    if split != "train" and train_dir.is_dir():
        train_classes = _class_folders(train_dir)
        if train_classes != classes:
            only_val = sorted(set(classes) - set(train_classes))[:3]
            only_train = sorted(set(train_classes) - set(classes))[:3]
            raise UserError(
                f"{name}: class folders of {split}/ and train/ differ "
                f"(only in {split}/: {only_val}, only in train/: {only_train})"
            )
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        files = _image_files(split_dir / cls)
        if not files:
            raise UserError(
                f"{name}: class folder {str(split_dir / cls)!r} has no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    return FolderSource(name, split, classes, paths, np.asarray(labels), split_dir)
