"""Bad and odd image data (docs/reliability.md, "Bad data"): odd-but-valid files load as the RGB
image a viewer shows; corrupt, truncated, empty, non-image and huge files are skipped, counted and
listed, and ``ssl``, ``encode`` and ``zeroshot`` complete."""

import csv
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from fakes import (
    BAD_IMAGES,
    ODD_IMAGES,
    StopTraining,
    make_image_folder,
    stop_after_first_epoch,
    write_bad_images,
    write_odd_images,
)
from PIL import Image, ImageFile

from clipdebias.cli import main
from clipdebias.data.image_files import UnreadableImage, read_image
from clipdebias.data.sources import open_dataset

# JPEG may move a colour by a level or two; every other kind must be exact.
JPEG_TOLERANCE = 3
# Why each bad kind is unreadable, as the reason names it.
REASONS = {
    "zero_bytes.jpg": "cannot identify image file",
    "not_an_image.png": "cannot identify image file",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "corrupt.png": "OSError",
    "huge.png": "DecompressionBombError",
}
TINY_SSL = [
    "--labels", "1-per-class", "--arch", "cnn", "--image-size", "16", "--epochs", "2", "--steps-per-epoch", "3",
    "--batch-size", "4", "--mu", "2", "--device", "cpu", "--no-report",
]  # fmt: skip
# metrics.json entries that do not depend on the clock or on how the run was started.
STABLE = ("top1", "top5", "per_class_top1", "pseudo_labels", "prior", "steps", "eval_images", "skipped_images")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    expected = write_odd_images(folder)
    write_bad_images(folder)
    return folder, expected


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """An image folder whose train/cat holds every odd kind and an image whose file name is not
    UTF-8 (Latin-1 ``café.png``), train/dog and val/cat every bad kind."""
    root = make_image_folder(tmp_path_factory.mktemp("mixed"), per_class=4, val_per_class=2, size=16)
    write_odd_images(root / "train" / "cat")
    shutil.copy(root / "train" / "cat" / "img_000.png", os.fsencode(root / "train" / "cat") + b"/caf\xe9.png")
    write_bad_images(root / "train" / "dog")
    write_bad_images(root / "val" / "cat")
    return root


def _paths(csv_file):
    with open(csv_file, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


def _skipped(out):
    with open(out / "skipped_images.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _bad_paths(root, split, folder):
    return {str(root / split / folder / name) for name in BAD_IMAGES}


@pytest.mark.parametrize("name", ODD_IMAGES)
def test_odd_images_load_as_the_rgb_image_a_viewer_shows(images, name):
    folder, expected = images
    loaded = read_image(folder / name)
    assert loaded.mode == "RGB" and loaded.size == (16, 16)
    tolerance = JPEG_TOLERANCE if name.endswith(".jpg") else 0
    assert np.abs(np.asarray(loaded).astype(int) - expected[name].astype(int)).max() <= tolerance


def test_pillows_own_conversion_would_get_them_wrong(images):
    """The expected pixels are not what a plain ``convert("RGB")`` gives (so the test above can fail)."""
    folder, expected = images
    for name in (
        "gray16.png",
        "gray16.pgm",
        "palette_transparent.png",
        "rgba.png",
        "gray_alpha.png",
        "exif_rotated.jpg",
    ):
        with Image.open(folder / name) as image:
            naive = np.asarray(image.convert("RGB")).astype(int)
        assert np.abs(naive - expected[name].astype(int)).max() > 100, name


@pytest.mark.parametrize("orientation", [0, 1, 9, 65535])
def test_an_exif_orientation_that_means_nothing_leaves_the_image_as_stored(tmp_path, orientation):
    stored = np.zeros((16, 16, 3), np.uint8)
    stored[:, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "odd_tag.png", exif=exif)
    assert np.array_equal(np.asarray(read_image(tmp_path / "odd_tag.png")), stored)


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_files_are_unreadable_with_the_reason(images, name):
    folder, _ = images
    with pytest.raises(UnreadableImage) as info:
        read_image(folder / name)
    assert info.value.path == str(folder / name)
    assert REASONS[name] in info.value.reason and "\n" not in info.value.reason


def test_reading_leaves_pillows_global_settings_and_the_warning_filters_alone(images):
    folder, _ = images
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in (*ODD_IMAGES, *BAD_IMAGES):
            try:
                read_image(folder / name)
            except UnreadableImage:
                pass
    assert not caught  # Pillow's notes on odd files do not reach the console
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False and Image.MAX_IMAGE_PIXELS == 89_478_485
    assert warnings.filters == filters


def test_dataset_sources_load_through_the_same_reader(mixed):
    source = open_dataset("imagefolder", "train", mixed)
    positions = {source.path(i): i for i in range(len(source))}
    assert source.load(positions[str(mixed / "train" / "cat" / "gray16.png")]).getpixel((15, 0)) == (255, 255, 255)
    with pytest.raises(UnreadableImage):
        source.load(positions[str(mixed / "train" / "dog" / "huge.png")])


def test_ssl_completes_on_every_kind_and_lists_the_skipped_images(mixed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "run"
    args = ["ssl", "--dataset", "imagefolder", "--data-root", str(mixed), *TINY_SSL, "--workers", "1"]
    assert main([*args, "--out", str(out)]) == 0  # decoded in a worker process: the skips travel back with the batches
    rows = _skipped(out)
    assert list(rows[0]) == ["split", "index", "path", "reason"]
    found = {(row["split"], row["path"]) for row in rows}
    expected = {("train", p) for p in _bad_paths(mixed, "train", "dog")} | {
        ("val", p) for p in _bad_paths(mixed, "val", "cat")
    }
    assert found == expected and len(rows) == len(expected)  # each once, however often it was drawn
    train, val = open_dataset("imagefolder", "train", mixed), open_dataset("imagefolder", "val", mixed)
    for row in rows:
        source = train if row["split"] == "train" else val
        assert source.path(int(row["index"])) == row["path"]
        assert REASONS[row["path"].rsplit("/", 1)[1]] in row["reason"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == 12 and metrics["eval_images"] == len(val) - len(BAD_IMAGES)
    assert "12 (listed in skipped_images.csv)" in capsys.readouterr().out
    listed = _paths(out / "labeled_index.csv") + _paths(out / "unlabeled_index.csv")
    assert sorted(listed) == sorted(train.path(i) for i in range(len(train)))  # the Latin-1 name too

    # The same run with the decoding in the main process, killed after its first epoch and resumed,
    # ends the same: which row stands in for an unreadable one depends on the files only.
    from clipdebias.commands.ssl import resolve_ssl_config, run_ssl

    cut = tmp_path / "cut"
    config = resolve_ssl_config(
        "imagefolder", cut, data_root=mixed, labels="1-per-class", arch="cnn", image_size=16, epochs=2,
        steps_per_epoch=3, batch_size=4, mu=2, device="cpu", workers=0,
    )  # fmt: skip
    with pytest.raises(StopTraining):
        run_ssl(config, progress=stop_after_first_epoch)
    assert {(row["split"], row["path"]) for row in _skipped(cut)} == expected  # kept by the killed run
    assert main([*args[:-1], "0", "--out", str(cut), "--resume"]) == 0
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    assert {k: resumed[k] for k in STABLE} == {k: metrics[k] for k in STABLE}
    assert _skipped(cut) == rows


def test_encode_skips_every_bad_kind_and_encodes_every_odd_one(mixed, tiny_clip, tmp_path, capsys, monkeypatch):
    from clipdebias.clip.cache import open_entry, read_manifest

    monkeypatch.setenv("COLUMNS", "250")
    args = ["encode", "--dataset", "imagefolder", "--data-root", str(mixed), "--model", tiny_clip, "--pretrained",
            "none", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "unreadable (skipped)" in out and "6 (listed in manifest.csv)" in out
    (entry_dir,) = (tmp_path / "cache" / "embeddings").iterdir()
    entry = open_entry(entry_dir)
    manifest = read_manifest(entry)
    failed = manifest[manifest["error"] != ""]
    assert set(failed["path"]) == _bad_paths(mixed, "train", "dog")
    assert entry.num_encoded == len(manifest) - len(BAD_IMAGES)
    odd = manifest[manifest["path"].str.endswith(ODD_IMAGES)]
    assert len(odd) == len(ODD_IMAGES) and (odd["error"] == "").all()
    source = open_dataset("imagefolder", "train", mixed)
    assert manifest["path"].tolist() == [source.path(i) for i in range(len(source))]  # the Latin-1 name too


def test_zeroshot_lists_the_images_it_left_out_in_the_run_folder(mixed, tiny_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "zs"
    args = [
        "zeroshot", "--dataset", "imagefolder", "--data-root", str(mixed), "--model", tiny_clip, "--pretrained", "none",
        "--device", "cpu", "--templates", "simple", "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
        "--threads", "1", "--views", "1", "--select-topk-per-class", "1", "--epochs", "1", "--steps-per-epoch", "1",
        "--batch-size", "2", "--mu", "1", "--no-report", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    found = {(row["split"], row["path"]) for row in _skipped(out)}
    assert found == {("train", p) for p in _bad_paths(mixed, "train", "dog")} | {
        ("val", p) for p in _bad_paths(mixed, "val", "cat")
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == 12
    assert "12 (listed in skipped_images.csv)" in capsys.readouterr().out
