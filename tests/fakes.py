"""Generated stand-ins for real datasets: small ImageFolder trees and CIFAR-format roots."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, index: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image whose colour depends on the class, with a little noise."""
    rng = np.random.default_rng(seed * 100_003 + label * 1009 + index)
    base = np.array([(label * 67) % 256, (label * 131 + 40) % 256, (label * 29 + 90) % 256], dtype=np.float32)
    noise = rng.normal(0, 20, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "red_fox"),
    per_class: int = 6,
    val_per_class: int = 3,
    size: int = 32,
    ext: str = ".png",
) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` with class-coloured images."""
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(class_image(label, i, size, seed=split == "val")).save(folder / f"img_{i:03d}{ext}")
    return root


def make_cifar_root(root: Path, name: str = "cifar10", per_class_train: int = 4, per_class_val: int = 2) -> Path:
    """A CIFAR-10/100 root in torchvision's python format, with few images per class."""
    num_classes = 10 if name == "cifar10" else 100

    def batch(per_class: int, seed: int) -> tuple[np.ndarray, list[int]]:
        labels = [c for c in range(num_classes) for _ in range(per_class)]
        images = np.stack([class_image(c, i, 32, seed) for i, c in enumerate(labels)])
        return images.transpose(0, 3, 1, 2).reshape(len(labels), -1), labels

    def dump(path: Path, obj: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)

    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        dump(base / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]})
        for i in range(1, 6):
            data, labels = batch(per_class_train, seed=i)
            dump(base / f"data_batch_{i}", {"data": data, "labels": labels})
        data, labels = batch(per_class_val, seed=99)
        dump(base / "test_batch", {"data": data, "labels": labels})
    else:
        base = root / "cifar-100-python"
        dump(base / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)]})
        data, labels = batch(per_class_train, seed=1)
        dump(base / "train", {"data": data, "fine_labels": labels})
        data, labels = batch(per_class_val, seed=99)
        dump(base / "test", {"data": data, "fine_labels": labels})
    return root
