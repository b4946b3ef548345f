"""What a JPEG file's header says, read from its bytes without decoding, to decide which decoder may take it.

``--decode gpu`` hands a file to torchvision's batched ``decode_jpeg`` on the device only when the
result is sure to be what :func:`clipdebias.data.image_files.read_image` (Pillow) gives; every other
file takes Pillow's path, which converts or refuses it as it always has (docs/reliability.md):

- baseline, extended or progressive Huffman JPEG (SOF0, SOF1, SOF2), 8 bits per sample, 1 (gray)
  or 3 (YCbCr) components: CMYK / YCCK (4 components), 12-bit, lossless, arithmetic-coded and
  hierarchical files are left to Pillow;
- colour stored as YCbCr: an Adobe APP14 marker that says RGB (transform 0) or that cannot be read
  sends a colour file to Pillow;
- upright: an EXIF orientation other than 1 (or an EXIF block that cannot be read) goes to Pillow,
  which turns the image as a viewer shows it;
- complete: the data ends with the end-of-image marker (Pillow refuses a truncated file, where a
  device decoder may return it half grey);
- no larger than Pillow's ``MAX_IMAGE_PIXELS`` (Pillow warns above it and refuses twice as many).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from PIL import Image

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
DEVICE_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive (Huffman)
OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
SOS, APP1, APP14 = 0xDA, 0xE1, 0xEE
STANDALONE = (0x01, *range(0xD0, 0xD8))  # markers without a length field
ORIENTATION_TAG = 0x0112
UPRIGHT = 1
UNKNOWN = 0  # an orientation that could not be read
_TAIL = 64  # bytes at the end searched for the end-of-image marker (after zero padding)


@dataclass(frozen=True)
class JpegHeader:
    """The facts of a JPEG header that decide the decoder: frame marker, size, sample precision, number
    of components, EXIF orientation (1 = upright, 0 = unreadable), the Adobe marker's colour transform
    (``None`` without one, -1 unreadable), a complete file."""

    frame: int
    width: int
    height: int
    precision: int
    components: int
    orientation: int
    adobe_transform: int | None
    complete: bool


def _exif_orientation(segment: bytes) -> int:
    """The orientation tag of an APP1 ``Exif`` segment's first IFD (1 when absent, 0 when unreadable)."""
    tiff = segment[6:]
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for entry in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, offset + 2 + 12 * entry)
            if tag == ORIENTATION_TAG:
                return struct.unpack_from(order + "H", value)[0] if kind == 3 else UNKNOWN
    except (KeyError, struct.error):
        return UNKNOWN
    return UPRIGHT


def _complete(data: bytes | bytearray) -> bool:
    return bytes(data[-_TAIL:]).rstrip(b"\0").endswith(EOI)


def read_jpeg_header(data: bytes | bytearray) -> JpegHeader | None:
    """The header of the JPEG file ``data``; ``None`` if it is not a JPEG or its markers are broken."""
    if not data.startswith(SOI):
        return None
    position, orientation = 2, UPRIGHT
    adobe: int | None = None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = bytes(data[position + 4 : position + 2 + length])
        if marker == APP1 and segment.startswith(b"Exif\0\0"):
            orientation = _exif_orientation(segment)
        elif marker == APP14 and segment.startswith(b"Adobe"):
            adobe = segment[11] if len(segment) >= 12 else -1
        elif marker in DEVICE_FRAMES or marker in OTHER_FRAMES:
            if len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", segment)
            return JpegHeader(marker, width, height, precision, components, orientation, adobe, _complete(data))
        elif marker == SOS:
            return None  # scan data before any frame header
        position += 2 + length
    return None


def device_decodable(header: JpegHeader | None) -> bool:
    """Whether a device decoder gives this file what Pillow gives (see the module docstring)."""
    return (
        header is not None
        and header.frame in DEVICE_FRAMES
        and header.precision == 8
        and header.components in (1, 3)
        and header.orientation == UPRIGHT
        and (header.components == 1 or header.adobe_transform in (None, 1))
        and header.complete
        and 0 < header.width * header.height <= (Image.MAX_IMAGE_PIXELS or float("inf"))
    )
