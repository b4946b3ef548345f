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


# --- fabricated outputs of `ssl` / `zeroshot` / `pseudolabel` (docs/formats.md), for `report` / `compare`


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def make_pseudolabel_csv(
    path: Path,
    num_classes: int = 10,
    rows_per_class: int = 30,
    labels: bool = True,
    sidecar: bool = True,
    tau: float = 0.4,
    threshold: float = 0.95,
    seed: int = 0,
) -> Path:
    """A pseudo-label CSV (+ ``.json`` sidecar) of a balanced dataset whose zero-shot logits carry a
    per-class bias, so the raw pseudo-labels are naturally imbalanced and the debiased ones flatter.

    Debiasing is computed here with numpy, independently of clipdebias.debias.
    """
    import json

    import pandas as pd

    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(num_classes), rows_per_class)
    bias = np.sort(rng.normal(0.0, 1.5, num_classes))[::-1]  # class 0 is favoured most
    signal = 1.0 + np.log(num_classes)  # the true class stands out about as much at 10 and 1000 classes
    noisy = (
        signal * np.eye(num_classes, dtype=np.float32)[truth] + bias + rng.normal(0.0, 1.0, (truth.size, num_classes))
    )
    logits = 2.0 * noisy  # a logit scale, so that a realistic share of rows passes a 0.95 threshold
    raw = _softmax(logits)
    prior = raw.mean(axis=0)
    debiased = _softmax(logits - tau * np.log(prior))
    names = [f"class_{c:04d}" for c in range(num_classes)]
    pseudo = debiased.argmax(axis=1)
    confidence = debiased.max(axis=1)
    frame = pd.DataFrame(
        {
            "index": np.arange(truth.size),
            "path": [f"fake:train/{i}" for i in range(truth.size)],
            "label": pd.array(truth if labels else [None] * truth.size, dtype="Int64"),
            "pseudo_label": pseudo,
            "pseudo_class": [names[c] for c in pseudo],
            "confidence": confidence,
            "raw_pseudo_label": raw.argmax(axis=1),
            "raw_confidence": raw.max(axis=1),
            "selected": confidence >= threshold,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    if sidecar:
        meta = {
            "classes": names,
            "tau": tau,
            "threshold": threshold,
            "prior": prior.tolist(),
            "model": "fake-clip",
            "pretrained": "none",
            "dataset": "fake",
            "split": "train",
            "selected": int((confidence >= threshold).sum()),
        }
        if labels:
            meta["zeroshot_top1"] = float(100.0 * np.mean(raw.argmax(axis=1) == truth))
            meta["zeroshot_debiased_top1"] = float(100.0 * np.mean(pseudo == truth))
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def make_run_folder(
    root: Path,
    num_classes: int = 10,
    epochs: int = 4,
    method: str = "debiaspl",
    seed: int = 0,
    dataset: str = "digits",
    unlabeled_per_class: int = 40,
    final_top1: float | None = None,
    with_pseudolabels_csv: bool = False,
    tau: float = 0.4,
) -> Path:
    """A finished `ssl` run folder: config.json, metrics.jsonl (one line per epoch), metrics.json and
    the labeled/unlabeled index CSVs, with imbalanced pseudo-label counts that flatten over epochs
    for DebiasPL and stay steep for FixMatch (whose ``prior`` is ``null``)."""
    import json

    debias = method == "debiaspl"
    rng = np.random.default_rng([seed, num_classes, int(debias)])
    root.mkdir(parents=True, exist_ok=True)
    classes = [f"c{c}" for c in range(num_classes)]
    final_top1 = float(final_top1 if final_top1 is not None else 70.0 + 10.0 * debias + rng.normal(0.0, 3.0))
    skew = np.exp(-np.linspace(0.0, 3.0, num_classes))  # natural imbalance: class 0 swallows the rest
    records = []
    prior = np.full(num_classes, 1.0 / num_classes)
    for epoch in range(1, epochs + 1):
        progress = epoch / epochs
        flatten = 0.8 * progress if debias else 0.1 * progress
        shares = (1.0 - flatten) * skew / skew.sum() + flatten / num_classes
        mask_rate = 0.3 + 0.6 * progress
        counts = rng.multinomial(int(mask_rate * unlabeled_per_class * num_classes), shares)
        if debias:
            prior = 0.5 * prior + 0.5 * (skew / skew.sum())
        records.append(
            {
                "epoch": epoch,
                "step": 100 * epoch,
                "lr": 0.03 * (1.0 - progress / 2),
                "loss": 2.0 / epoch,
                "loss_x": 1.2 / epoch,
                "loss_u": 0.8 / epoch,
                "mask_rate": mask_rate,
                "pseudo_label_accuracy": 60.0 + 30.0 * progress,
                "pseudo_label_counts": counts.tolist(),
                "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
                "prior": prior.tolist() if debias else None,
                "prior_entropy": float(-(prior * np.log(prior)).sum()) if debias else None,
                "top1": final_top1 - 20.0 * (1.0 - progress),
                "top5": min(100.0, final_top1 + 15.0),
                "elapsed_s": 10.0 * epoch,
            }
        )
    (root / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    last = records[-1]
    per_class = np.clip(final_top1 + rng.normal(0.0, 15.0, num_classes), 0.0, 100.0)
    metrics = {
        "method": method,
        "dataset": dataset,
        "num_classes": num_classes,
        "classes": classes,
        "top1": final_top1,
        "top5": last["top5"],
        "per_class_top1": per_class.tolist(),
        "pseudo_labels": {
            "mask_rate": last["mask_rate"],
            "accuracy": last["pseudo_label_accuracy"],
            "class_counts": last["pseudo_label_counts"],
            "imbalance_ratio": last["imbalance_ratio"],
        },
        "epochs": epochs,
        "steps": last["step"],
        "seed": seed,
        "elapsed_s": last["elapsed_s"],
    }
    config = {
        "command": "zeroshot" if with_pseudolabels_csv else "ssl",
        "version": "0.1.0",
        "classes": classes,
        "dataset": dataset,
        "labels": "1-per-class",
        "method": method,
        "tau": tau,
        "threshold": 0.95,
        "seed": seed,
        "epochs": epochs,
        "out": str(root),
    }
    if with_pseudolabels_csv:
        table = make_pseudolabel_csv(root / "pseudolabels.csv", num_classes=num_classes, rows_per_class=20, seed=seed)
        import pandas as pd

        frame = pd.read_csv(table)
        metrics["zeroshot_top1"] = float(100.0 * np.mean(frame["raw_pseudo_label"] == frame["label"]))
        metrics["zeroshot_debiased_top1"] = float(100.0 * np.mean(frame["pseudo_label"] == frame["label"]))
        metrics["student_top1"] = final_top1
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "config.json").write_text(json.dumps(config))
    labeled = [(c, f"digits:train/{c}", c) for c in range(num_classes)]
    unlabeled = [
        (num_classes + i, f"digits:train/{num_classes + i}", i % num_classes)
        for i in range(unlabeled_per_class * num_classes)
    ]
    for name, rows in (("labeled_index.csv", labeled), ("unlabeled_index.csv", unlabeled)):
        (root / name).write_text("index,path,label\n" + "".join(f"{i},{p},{y}\n" for i, p, y in rows))
    return root


# --- odd and bad image files (docs/reliability.md), for the loaders of every command -------------

ODD_IMAGES = (
    "cmyk.jpg", "gray16.png", "gray16.pgm", "gray.png", "palette_transparent.png", "rgba.png", "gray_alpha.png",
    "exif_rotated.jpg",
)  # fmt: skip
"""Valid files in unusual modes: each must load as the RGB image a viewer shows."""
BAD_IMAGES = ("zero_bytes.jpg", "not_an_image.png", "truncated.jpg", "truncated.png", "corrupt.png", "huge.png")
"""Files that cannot be decoded (or must not be: ``huge.png`` claims 20000 x 10000 pixels)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = 20_000, height: int = 10_000) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit gray pixels but holds one empty row: enough
    for Pillow's decompression-bomb check, which reads the header only."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + _png_chunk(b"IEND", b"")
    )


def write_odd_images(folder: Path, size: int = 16) -> dict[str, np.ndarray]:
    """Write :data:`ODD_IMAGES` into ``folder``; returns the RGB pixels each must load as (a
    tolerance of a few levels covers JPEG)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, np.ndarray] = {}
    # CMYK (0, 255, 255, 0) is pure red.
    Image.new("CMYK", (size, size), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = np.tile(np.array([255, 0, 0], np.uint8), (size, size, 1))
    # 16-bit gray: left half 0x8080 (-> 128), right half 0xFFFF (-> 255); Pillow's own conversion
    # would make both halves white.
    sixteen = np.full((size, size), 0x8080, np.uint16)
    sixteen[:, size // 2 :] = 0xFFFF
    Image.fromarray(sixteen).save(folder / "gray16.png")
    Image.fromarray(sixteen).save(folder / "gray16.pgm")
    gray8 = np.where(sixteen == 0xFFFF, 255, 128).astype(np.uint8)
    expected["gray16.png"] = expected["gray16.pgm"] = np.repeat(gray8[..., None], 3, axis=2)
    gray = np.tile(np.arange(size, dtype=np.uint8) * 10, (size, 1))
    Image.fromarray(gray).save(folder / "gray.png")
    expected["gray.png"] = np.repeat(gray[..., None], 3, axis=2)
    # Palette: index 0 transparent (its colour, black, must not show), index 1 blue.
    palette = Image.new("P", (size, size), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, size, size // 2))
    palette.save(folder / "palette_transparent.png", transparency=0)
    top_blue = np.full((size, size, 3), 255, np.uint8)
    top_blue[: size // 2] = (0, 0, 255)
    expected["palette_transparent.png"] = top_blue
    # RGBA: an opaque green top half over fully transparent black, and half-transparent red below.
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[: size // 2] = (0, 255, 0, 255)
    rgba[size // 2 :] = (255, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    composite = np.zeros((size, size, 3), np.uint8)
    composite[: size // 2] = (0, 255, 0)
    composite[size // 2 :] = (255, 127, 127)  # red at alpha 128 over white
    expected["rgba.png"] = composite
    la = np.zeros((size, size, 2), np.uint8)
    la[..., 0] = 40
    la[: size // 2, :, 1] = 255  # opaque dark gray on top, transparent below
    Image.fromarray(la, "LA").save(folder / "gray_alpha.png")
    gray_alpha = np.full((size, size, 3), 255, np.uint8)
    gray_alpha[: size // 2] = 40
    expected["gray_alpha.png"] = gray_alpha
    # Stored sideways with EXIF orientation 6 ("turn 90 degrees clockwise to show"): shown, the top
    # half is red and the bottom half blue. Colour edges on 8-pixel block borders, no chroma
    # subsampling: the JPEG keeps the colours to a level.
    upright = np.zeros((size, size, 3), np.uint8)
    upright[: size // 2] = (255, 0, 0)
    upright[size // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    sideways.save(folder / "exif_rotated.jpg", quality=100, subsampling=0, exif=exif)
    expected["exif_rotated.jpg"] = upright
    return expected


def write_bad_images(folder: Path, size: int = 16) -> None:
    """Write :data:`BAD_IMAGES` into ``folder``."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_bytes.jpg").write_bytes(b"")
    (folder / "not_an_image.png").write_text("name,label\nthis is a CSV file saved as .png,1\n")
    photo = Image.fromarray(class_image(1, 0, 64))
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    photo.save(png, "PNG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) * 2 // 3])
    corrupt = bytearray(png.getvalue())
    middle = len(corrupt) // 2
    corrupt[middle : middle + 16] = bytes(16)  # data of the image chunk overwritten: its checksum fails
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "huge.png").write_bytes(huge_png_header())


class StopTraining(Exception):
    """Raised by :func:`stop_after_first_epoch`: a run stopped the way a kill would, in-process."""


def stop_after_first_epoch(event: object) -> None:
    """A training ``progress`` callback that stops the run at its first epoch's end (the loop writes
    that epoch's checkpoint before it reports the event)."""
    from clipdebias.training.loop import EpochEnd

    if isinstance(event, EpochEnd):
        raise StopTraining


def attach_image_files(csv: Path, size: int = 24, broken: tuple[int, ...] = (), relative: bool = True) -> Path:
    """Give a pseudo-label CSV real image files: one PNG per row (coloured by its ground-truth class)
    under ``images/`` beside it, its ``path`` column relative to the CSV's folder (or absolute); the
    rows in ``broken`` get a file that is not an image."""
    import pandas as pd

    frame = pd.read_csv(csv)
    folder = csv.parent / "images"
    folder.mkdir(exist_ok=True)
    paths = []
    for row, label in enumerate(frame["label"].fillna(0).astype(int)):
        file = folder / f"img_{row:05d}.png"
        if row in broken:
            file.write_bytes(b"not an image")
        else:
            Image.fromarray(class_image(int(label), row, size)).save(file)
        paths.append(str(file.relative_to(csv.parent)) if relative else str(file))
    frame["path"] = paths
    frame.to_csv(csv, index=False)
    return csv
