"""``--decode``: which decoder feeds CLIP while encoding, and the device decoder (``--decode gpu``).

Two paths turn a split's image files into CLIP's input batches:

- ``cpu``: Pillow in DataLoader workers (:func:`clipdebias.data.image_files.read_image`), then
  open_clip's evaluation transform. A JPEG at least twice the size it needs is decoded at 1/2, 1/4 or
  1/8 of its size, keeping :func:`min_decode_side` pixels on its shortest side.
- ``gpu``: :class:`JpegBatches`. Threads read the files' bytes (the next batch's while the current
  one is decoded and encoded); torchvision's ``decode_jpeg`` decodes the JPEGs of a batch at once on
  the model's device; :class:`DevicePreprocess` resizes (one ``interpolate`` per group of images of
  one size), crops and normalises them there, as open_clip's transform does. A file the device
  decoder may not take (not a JPEG, CMYK, 12-bit, EXIF-rotated, truncated: see
  :mod:`clipdebias.data.jpeg_header`) takes the ``cpu`` path in the reading threads, and one it fails
  on takes it after the batch (a failed batch is split in halves until the failing files are found),
  so an unreadable file is skipped with Pillow's reason, as before.

``auto`` is ``gpu`` when the model encodes on a CUDA device, else ``cpu``. Both paths implement the
same preprocessing (the cache key's ``transform``): their embeddings agree within cosine 0.995
(tests/test_decode.py, docs/performance.md), so one cache entry serves both.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from clipdebias.config.defaults import DECODE_DRAFT_SCALE, DECODES
from clipdebias.data.image_files import UnreadableImage
from clipdebias.data.jpeg_header import device_decodable, read_jpeg_header
from clipdebias.data.sources import FolderSource, ImageSource
from clipdebias.utils.device import cores_per_process
from clipdebias.utils.errors import OptionError, UserError

Batch = tuple[list[int], Tensor | None, list[tuple[int, str]]]
"""``(dataset indices encoded, their pixels [B, 3, S, S] or None, (index, reason) of unreadable ones)``."""
PREFETCH_BATCHES = 2  # batches whose files are read ahead of the one being decoded


def _square_size(preprocess_cfg: dict) -> int | None:
    size = preprocess_cfg["size"]
    sides = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    return int(sides[0]) if sides[0] == sides[-1] else None


def min_decode_side(preprocess_cfg: dict) -> int:
    """The shortest side a reduced-size JPEG decode keeps for this model: ``DECODE_DRAFT_SCALE`` times
    its input size (the resize that follows then still averages over at least 2x2 pixels)."""
    size = preprocess_cfg["size"]
    largest = max(size) if isinstance(size, (list, tuple)) else int(size)
    return DECODE_DRAFT_SCALE * int(largest)


def device_preprocessable(preprocess_cfg: dict) -> bool:
    """Whether :class:`DevicePreprocess` implements this open_clip preprocessing (square input, resize of
    the shortest side, RGB, bicubic or bilinear)."""
    return (
        _square_size(preprocess_cfg) is not None
        and preprocess_cfg.get("resize_mode", "shortest") == "shortest"
        and preprocess_cfg.get("mode", "RGB") == "RGB"
        and preprocess_cfg.get("interpolation", "bicubic") in ("bicubic", "bilinear")
    )


def resolve_decode(decode: str, device: torch.device, preprocess_cfg: dict | None = None) -> str:
    """``cpu`` or ``gpu``: the path ``--decode`` takes when the model encodes on ``device``.

    ``auto`` is ``gpu`` on a CUDA device whose model's preprocessing the device path implements;
    ``gpu`` without that is an :class:`OptionError`.
    """
    if decode not in DECODES:
        raise UserError(f"unknown --decode {decode!r}; choose one of: {', '.join(DECODES)}")
    supported = preprocess_cfg is None or device_preprocessable(preprocess_cfg)
    if decode == "cpu" or (decode == "auto" and (device.type != "cuda" or not supported)):
        return "cpu"
    if decode == "gpu":
        check_gpu_decode(device.type)
        if not supported:
            raise OptionError("decode", "gpu implements square inputs resized by their shortest side only")
    return "gpu"


def check_gpu_decode(device_type: str) -> None:
    """The :class:`OptionError` of ``--decode gpu`` where no CUDA device encodes."""
    if not torch.cuda.is_available():
        raise OptionError("decode", "gpu needs a CUDA GPU, and torch sees none here; use --decode cpu (or auto)")
    if device_type != "cuda":
        raise OptionError("decode", f"gpu decodes on the model's device; it needs --device cuda, not {device_type}")


def check_decode(decode: str, device: str) -> None:
    """``--decode`` against ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), when the options are
    resolved, before any work: an unknown name, or ``gpu`` where the model will not run on CUDA."""
    if decode not in DECODES:
        raise UserError(f"unknown --decode {decode!r}; choose one of: {', '.join(DECODES)}")
    if decode == "gpu":
        check_gpu_decode("cpu" if device == "cpu" else "cuda")


class DevicePreprocess:
    """open_clip's evaluation transform on decoded uint8 ``[3, H, W]`` tensors, on their device.

    As ``Resize(S)`` (shortest side to S, the other ``int(S * long / short)``, antialiased bicubic,
    rounded to 8 bits as Pillow does), ``CenterCrop(S)``, ``ToTensor``, ``Normalize(mean, std)``.
    Images of one size are resized by one ``interpolate`` call.
    """

    def __init__(self, preprocess_cfg: dict, device: torch.device):
        if not device_preprocessable(preprocess_cfg):
            raise ValueError(f"no device preprocessing for {preprocess_cfg}")
        self.size = int(_square_size(preprocess_cfg))  # type: ignore[arg-type]
        self.mode = preprocess_cfg.get("interpolation", "bicubic")
        self.device = device
        self.mean = torch.tensor(preprocess_cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess_cfg["std"], device=device).view(1, 3, 1, 1)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's ``Resize(S)`` output size for an image of ``height`` x ``width``."""
        short, long = min(height, width), max(height, width)
        if short == self.size:
            return height, width
        other = int(self.size * long / short)
        return (self.size, other) if height <= width else (other, self.size)

    def _resize_crop(self, images: Tensor) -> Tensor:
        """``[n, 3, H, W]`` uint8 of one size -> ``[n, 3, S, S]`` float in 0..255 (8-bit values)."""
        height, width = images.shape[-2:]
        new_h, new_w = self.resized_size(height, width)
        pixels = images.float()
        if (new_h, new_w) != (height, width):
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode=self.mode, antialias=True, align_corners=False)
            pixels = pixels.clamp_(0, 255).round_()
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return pixels[..., top : top + self.size, left : left + self.size]

    def __call__(self, images: list[Tensor]) -> Tensor:
        """The model's input ``[len(images), 3, S, S]`` (float32) of decoded images in their order."""
        out = torch.empty(len(images), 3, self.size, self.size, device=self.device)
        groups: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for position, image in enumerate(images):
            groups[tuple(image.shape)].append(position)
        for positions in groups.values():
            stacked = torch.stack([images[p].to(self.device, non_blocking=True) for p in positions])
            out[positions] = self._resize_crop(stacked)
        return out.div_(255.0).sub_(self.mean).div_(self.std)


@dataclass(frozen=True)
class _Read:
    """One image after the reading threads: JPEG bytes for the device, or the CPU path's pixels or reason."""

    index: int
    data: Tensor | None = None
    pixels: Tensor | None = None
    reason: str = ""


def decode_or_split(data: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """``decode_jpeg`` of the encoded JPEGs ``data`` in one batch on ``device`` (RGB); when the batch
    fails, each half on its own, down to the single files that fail (``None``)."""
    if not data:
        return []
    try:
        if len(data) == 1:
            return [decode_jpeg(data[0], mode=ImageReadMode.RGB, device=device)]
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        if len(data) == 1:
            return [None]
        middle = len(data) // 2
        return decode_or_split(data[:middle], device) + decode_or_split(data[middle:], device)


def read_threads(workers: int | None) -> int:
    """Threads reading files for the device path: ``--workers`` when given (0 counts as 1), else one
    per core of this process."""
    return max(1, workers) if workers is not None else cores_per_process()


class JpegBatches:
    """The device path of :mod:`clipdebias.clip.jpeg_batches`: batches of dataset indices -> :data:`Batch`.

    ``transform`` and ``min_side`` are the CPU path's, for the files the device does not decode.
    ``device`` may be the CPU: torchvision decodes there too (the tests run this path so).
    """

    def __init__(
        self,
        source: ImageSource,
        preprocess: DevicePreprocess,
        transform: Callable,
        min_side: int | None,
        threads: int,
    ):
        self.source = source
        self.preprocess = preprocess
        self.transform = transform
        self.min_side = min_side
        self.threads = max(1, threads)
        self.files = isinstance(source, FolderSource)

    def _on_cpu(self, index: int) -> _Read:
        try:
            image = self.source.load_at_least(index, self.min_side)
            return _Read(index, pixels=self.transform(image))
        except UnreadableImage as err:
            return _Read(index, reason=err.reason)

    def _read(self, index: int) -> _Read:
        if self.files:
            try:
                with open(self.source.path(index), "rb") as handle:
                    data = bytearray(handle.read())
            except OSError:
                data = None  # Pillow reports why, on the CPU path
            if data is not None and device_decodable(read_jpeg_header(data)):
                return _Read(index, data=torch.frombuffer(data, dtype=torch.uint8))
        return self._on_cpu(index)

    def _decode(self, reads: list[_Read]) -> list[Tensor | None]:
        """The device decodes of ``reads`` (each with data); ``None`` where the device decoder failed."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec
            return decode_or_split([r.data for r in reads], self.preprocess.device)  # type: ignore[misc]

    def _assemble(self, reads: list[_Read]) -> Batch:
        on_device = [r for r in reads if r.data is not None]
        decoded = dict(zip([r.index for r in on_device], self._decode(on_device), strict=True))
        reads = [self._on_cpu(r.index) if r.data is not None and decoded[r.index] is None else r for r in reads]
        good = [r for r in reads if r.reason == ""]
        failed = [(r.index, r.reason) for r in reads if r.reason != ""]
        if not good:
            return [], None, failed
        size, device = self.preprocess.size, self.preprocess.device
        pixels = torch.empty(len(good), 3, size, size, device=device)
        device_rows = [p for p, r in enumerate(good) if r.pixels is None]
        if device_rows:
            pixels[device_rows] = self.preprocess([decoded[good[p].index] for p in device_rows])  # type: ignore[misc]
        for position, read in enumerate(good):
            if read.pixels is not None:
                pixels[position] = read.pixels.to(device)
        return [r.index for r in good], pixels, failed

    def __call__(self, batches: Iterable[list[int]]) -> Iterator[Batch]:
        """The batches of ``batches`` in order; the files of the next :data:`PREFETCH_BATCHES` are read meanwhile."""
        with ThreadPoolExecutor(self.threads, thread_name_prefix="clipdebias-read") as pool:
            pending: collections.deque[list[Future[_Read]]] = collections.deque()
            todo = iter(batches)
            for batch in todo:
                pending.append([pool.submit(self._read, index) for index in batch])
                if len(pending) > PREFETCH_BATCHES:
                    yield self._assemble([future.result() for future in pending.popleft()])
            while pending:
                yield self._assemble([future.result() for future in pending.popleft()])
