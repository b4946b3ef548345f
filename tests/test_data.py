"""The dataset registry: digits, CIFAR roots, image folders, and the errors for bad roots."""

import numpy as np
import pytest
from fakes import make_cifar_root, make_image_folder
from PIL import Image

from clipdebias.data.sources import UnreadableImage, open_dataset
from clipdebias.utils.errors import UserError


def test_digits_fixed_split():
    train, val = open_dataset("digits", "train"), open_dataset("digits", "val")
    assert (len(train), len(val)) == (1257, 540)
    assert train.classes == [str(c) for c in range(10)]
    assert np.bincount(train.labels).min() >= 120 and np.bincount(val.labels).min() >= 50
    assert train.images.shape == (1257, 8, 8) and train.images.dtype == np.uint8
    assert train.images.max() == 255
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and label == train.labels[0]
    assert train.path(3) == "digits:train/3"
    # The split is fixed: the same images every time, and train/val are disjoint.
    again = open_dataset("digits", "train")
    assert np.array_equal(again.images, train.images)
    train_rows = {row.tobytes() + bytes([lab]) for row, lab in zip(train.images, train.labels)}
    assert sum(row.tobytes() + bytes([lab]) in train_rows for row, lab in zip(val.images, val.labels)) < 5


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_root(tmp_path, name, classes):
    make_cifar_root(tmp_path, name, per_class_train=1, per_class_val=2)
    train = open_dataset(name, "train", tmp_path)
    val = open_dataset(name, "val", tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"))
    assert train.num_classes == classes and val.num_classes == classes
    assert len(val) == 2 * classes
    assert len(train) == (5 if name == "cifar10" else 1) * classes
    image, _ = val[0]
    assert image.size == (32, 32) and image.mode == "RGB"


def test_cifar_missing_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        open_dataset("cifar10", "train", tmp_path)


def test_image_folder(tmp_path):
    make_image_folder(tmp_path, per_class=4, val_per_class=2)
    train = open_dataset("imagefolder", "train", tmp_path)
    assert train.classes == ["cat", "dog", "red_fox"]
    assert np.bincount(train.labels).tolist() == [4, 4, 4]
    assert train.path(0).endswith("train/cat/img_000.png")
    image, label = train[5]
    assert image.mode == "RGB" and label == 1
    assert len(open_dataset("imagenet", "val", tmp_path)) == 6


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        open_dataset("imagefolder", "train", tmp_path / "nope")
    with pytest.raises(UserError, match="needs --data-root"):
        open_dataset("imagenet", "train")
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        open_dataset("mnist", "train", tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        open_dataset("imagefolder", "train", tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="has no image files"):
        open_dataset("imagefolder", "train", tmp_path)


def test_train_val_class_mismatch(tmp_path):
    make_image_folder(tmp_path, classes=("a", "b"), per_class=1, val_per_class=1)
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "c")
    with pytest.raises(UserError, match="differ"):
        open_dataset("imagefolder", "val", tmp_path)


def test_corrupt_image_raises_unreadable(tmp_path):
    make_image_folder(tmp_path, classes=("a",), per_class=2, val_per_class=1)
    bad = tmp_path / "train" / "a" / "img_000.png"
    bad.write_bytes(b"not an image at all")
    source = open_dataset("imagefolder", "train", tmp_path)
    with pytest.raises(UnreadableImage) as info:
        source.load(0)
    assert info.value.path == str(bad)
    assert isinstance(source.load(1), Image.Image)
