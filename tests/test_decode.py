"""--decode auto|cpu|gpu and reduced-size JPEG decoding (clipdebias.clip.jpeg_batches, read_image's min_side).

The device path runs here with device=cpu: torchvision decodes JPEGs on CPU tensors with the same call
the GPU path makes, and the resize/crop/normalise is the same tensor code on either device."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import BAD_IMAGES, ODD_IMAGES, write_bad_images, write_odd_images
from PIL import Image

from clipdebias.clip.backbone import BackboneConfig, load_backbone
from clipdebias.clip.cache import Decoding, encode_split, load_embeddings, read_manifest
from clipdebias.clip.jpeg_batches import DevicePreprocess, JpegBatches, min_decode_side, resolve_decode
from clipdebias.config import defaults
from clipdebias.data.image_files import read_image
from clipdebias.data.jpeg_header import device_decodable, read_jpeg_header
from clipdebias.data.sources import open_dataset
from clipdebias.utils.errors import OptionError

COSINE = 0.995
CPU = torch.device("cpu")
# (height, width) of the generated photos: landscape, portrait, square, exactly 32 px, smaller than 32 px
SIZES = ((375, 500), (500, 375), (300, 300), (32, 48), (20, 30), (1200, 1600))


def smooth_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like image: smooth colour waves plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = max(height, width) / 500
    waves = [np.sin(x / (37 * scale) + seed), np.cos(y / (23 * scale) + seed), np.sin((x + y) / (51 * scale))]
    pixels = 127 + 100 * np.stack(waves, -1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_photos(folder: Path, sizes=SIZES, **save) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (height, width) in enumerate(sizes):
        path = folder / f"photo_{index:02d}.jpg"
        Image.fromarray(smooth_photo(height, width, index)).save(path, quality=90, **save)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny():
    from conftest import TINY_CLIP

    return load_backbone(BackboneConfig(model=str(TINY_CLIP), pretrained="none", device="cpu"))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _device_batches(source, backbone, min_side=None, threads=2) -> JpegBatches:
    return JpegBatches(source, DevicePreprocess(backbone.preprocess_cfg, CPU), backbone.transform, min_side, threads)


def _folder(root: Path) -> Path:
    return root / "train" / "photos"


# --- choosing the path ---------------------------------------------------------------------------


def test_auto_decodes_on_cpus_when_the_model_runs_on_a_cpu(tiny):
    assert defaults.DECODE == "auto"
    assert resolve_decode("auto", CPU, tiny.preprocess_cfg) == "cpu"
    assert resolve_decode("cpu", CPU) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_decode_without_cuda_is_refused_as_an_option_error():
    with pytest.raises(OptionError, match="needs a CUDA GPU"):
        resolve_decode("gpu", CPU)


def test_auto_keeps_preprocessing_the_device_path_lacks_on_cpus(tiny):
    squashed = {**tiny.preprocess_cfg, "resize_mode": "squash"}
    assert resolve_decode("auto", torch.device("cuda"), squashed) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("command", ["encode", "pseudolabel", "zeroshot"])
def test_decode_gpu_without_cuda_is_one_error_line_and_exit_2_before_any_work(tmp_path, command):
    out = {"encode": [], "pseudolabel": ["--out", str(tmp_path / "pl.csv")], "zeroshot": ["--out", str(tmp_path)]}
    done = subprocess.run(
        [sys.executable, "-m", "clipdebias", command, "--dataset", "digits", "--decode", "gpu", *out[command],
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --decode gpu needs a CUDA GPU, and torch sees none here; use --decode cpu (or auto)"
    ]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "pl.csv").exists()


def test_an_unknown_decode_name_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "clipdebias", "encode", "--dataset", "digits", "--decode", "nvjpeg"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown --decode 'nvjpeg'; choose one of: auto, cpu, gpu" in done.stderr


# --- the device path, run on CPU tensors ---------------------------------------------------------


def test_device_preprocessing_matches_open_clips_transform_to_one_level(tmp_path, tiny):
    paths = write_photos(tmp_path)
    preprocess = DevicePreprocess(tiny.preprocess_cfg, CPU)
    decoded = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
    expected = torch.stack([tiny.transform(Image.open(p).convert("RGB")) for p in paths])
    got = preprocess(decoded)
    level = 1 / 255 / min(tiny.preprocess_cfg["std"])  # one 8-bit level after normalisation
    assert got.shape == expected.shape == (len(paths), 3, 32, 32)
    assert (got - expected).abs().max().item() <= 1.01 * level


def test_device_path_embeddings_match_the_pillow_path(tmp_path, tiny):
    write_photos(_folder(tmp_path), SIZES * 2)
    source = open_dataset("imagefolder", "train", tmp_path)
    batches = list(_device_batches(source, tiny)([[0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]]))
    ids = [i for batch_ids, _, _ in batches for i in batch_ids]
    assert ids == list(range(12)) and all(not failed for _, _, failed in batches)
    device = torch.cat([tiny.encode_images(pixels) for _, pixels, _ in batches]).numpy()
    pillow = tiny.encode_images(torch.stack([tiny.transform(source.load(i)) for i in ids])).numpy()
    assert _cosines(device, pillow).min() >= COSINE


def test_the_device_decoder_takes_plain_jpegs_and_leaves_the_rest_to_pillow(tmp_path):
    write_photos(tmp_path, ((64, 48),))
    Image.fromarray(smooth_photo(64, 48, 1)).save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    Image.fromarray(smooth_photo(64, 48, 2)).convert("L").save(tmp_path / "gray.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 1  # upright, as cameras write it
    Image.fromarray(smooth_photo(64, 48, 3)).save(tmp_path / "upright_exif.jpg", exif=exif)
    write_odd_images(tmp_path / "odd")
    write_bad_images(tmp_path / "bad")
    takes = {p.name: device_decodable(read_jpeg_header(p.read_bytes())) for p in tmp_path.rglob("*.*")}
    for name in ("photo_00.jpg", "progressive.jpg", "gray.jpg", "upright_exif.jpg"):
        assert takes.pop(name), name
    assert not any(takes.values()), takes  # CMYK, EXIF-rotated, truncated, PNG, PGM, empty: Pillow


def test_a_twelve_bit_jpeg_header_goes_to_pillow(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(smooth_photo(16, 16, 0)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")
    assert device_decodable(read_jpeg_header(data))
    data[frame + 4] = 12  # sample precision
    assert read_jpeg_header(data).precision == 12 and not device_decodable(read_jpeg_header(data))


def _encode(source, backbone, cache: Path, decoding: Decoding | None, batch_size: int = 4):
    return encode_split(
        source, backbone, backbone.transform, backbone.transform_id, cache, batch_size=batch_size, decoding=decoding
    )


def test_odd_and_bad_files_take_the_cpu_path_and_are_skipped_and_listed_as_before(tmp_path, tiny):
    folder = _folder(tmp_path)
    write_photos(folder, ((64, 48), (40, 40)))
    write_odd_images(folder)
    write_bad_images(folder)
    source = open_dataset("imagefolder", "train", tmp_path)
    before = _encode(source, tiny, tmp_path / "cpu", None)
    device = _encode(source, tiny, tmp_path / "device", Decoding(device=_device_batches(source, tiny)))
    assert device.failed == before.failed == len(BAD_IMAGES)
    assert read_manifest(device.entry).equals(read_manifest(before.entry))  # same paths, same reasons
    ids, vectors, _ = load_embeddings(device.entry)
    cpu_ids, cpu_vectors, _ = load_embeddings(before.entry)
    assert ids.tolist() == cpu_ids.tolist() and len(ids) == 2 + len(ODD_IMAGES)
    assert _cosines(vectors, cpu_vectors).min() >= COSINE


def test_a_file_the_device_decoder_rejects_is_found_by_halving_and_decoded_by_pillow(tmp_path, tiny, monkeypatch):
    write_photos(_folder(tmp_path), ((64, 48), (48, 64), (40, 40), (30, 60), (60, 30)))
    source = open_dataset("imagefolder", "train", tmp_path)
    import clipdebias.clip.jpeg_batches as jpeg_batches

    real, rejected, calls = jpeg_batches.decode_jpeg, (_folder(tmp_path) / "photo_01.jpg").stat().st_size, []

    def reject_the_second(data, **kwargs):
        batch = data if isinstance(data, list) else [data]
        calls.append(len(batch))
        if any(item.numel() == rejected for item in batch):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(jpeg_batches, "decode_jpeg", reject_the_second)
    ids, pixels, failed = next(iter(_device_batches(source, tiny)([[0, 1, 2, 3, 4]])))
    assert ids == [0, 1, 2, 3, 4] and not failed
    assert calls == [5, 2, 1, 1, 3]  # the batch, its first half, its halves; the second half at once
    assert torch.equal(pixels[1], tiny.transform(source.load(1)))  # Pillow's, exactly


def test_one_cache_entry_serves_both_decoders(tmp_path, tiny):
    """Both paths implement the model's preprocessing (within cosine 0.995): an entry written by one is
    reused by the other, and meta.json names the decoders that wrote it."""
    write_photos(_folder(tmp_path))
    source = open_dataset("imagefolder", "train", tmp_path)
    first = _encode(source, tiny, tmp_path / "cache", Decoding(device=_device_batches(source, tiny)))
    again = _encode(source, tiny, tmp_path / "cache", Decoding(min_side=min_decode_side(tiny.preprocess_cfg)))
    assert first.encoded == len(SIZES) and again.was_complete and again.entry.path == first.entry.path
    assert json.loads((first.entry.path / "meta.json").read_text())["decoders"] == ["gpu"]


# --- reduced-size decoding on CPUs ---------------------------------------------------------------


def test_a_large_jpeg_is_decoded_at_a_reduced_size_never_below_the_side_asked_for(tmp_path):
    (path,) = write_photos(tmp_path, ((1200, 1600),))
    assert read_image(path).size == (1600, 1200)
    assert read_image(path, min_side=64).size == (200, 150)  # 1/8
    assert read_image(path, min_side=448).size == (800, 600)  # 1/2: 1/4 would leave 300 < 448
    assert read_image(path, min_side=700).size == (1600, 1200)  # less than twice: every pixel


def test_reduced_size_decoding_is_within_the_cosine_tolerance(tmp_path, tiny):
    paths = write_photos(tmp_path, ((1200, 1600), (1600, 1200), (900, 1200), (2000, 1500)))
    min_side = min_decode_side(tiny.preprocess_cfg)
    assert min_side == defaults.DECODE_DRAFT_SCALE * 32
    full = torch.stack([tiny.transform(read_image(p)) for p in paths])
    reduced = torch.stack([tiny.transform(read_image(p, min_side)) for p in paths])
    assert (full - reduced).abs().mean().item() < 0.02
    cos = _cosines(tiny.encode_images(full).numpy(), tiny.encode_images(reduced).numpy())
    assert cos.min() >= COSINE


def test_reduced_size_decoding_keeps_exif_rotation_and_cmyk(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth_photo(600, 800, 0)).save(tmp_path / "turned.jpg", exif=exif)
    Image.new("CMYK", (800, 600), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "turned.jpg").size == (600, 800)  # upright: turned a quarter
    assert read_image(tmp_path / "turned.jpg", min_side=64).size == (75, 100)  # 1/8, upright
    red = np.asarray(read_image(tmp_path / "cmyk.jpg", min_side=64))
    assert red.shape[:2] == (75, 100) and np.abs(red.astype(int) - (255, 0, 0)).max() <= 3
