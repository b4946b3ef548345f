"""Telling a weights file from anything else, from its first bytes, without unpickling it.

``--pretrained FILE`` (CLIP) and ``--init-weights FILE`` (a student) are loaded with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers only. Anything else
makes torch raise an error that advises loading again with ``weights_only=False``, which would run
whatever code the file holds, and which no clipdebias option offers. These helpers say instead,
before the model is built where possible, that the file is not a checkpoint and what one is.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from types import TracebackType

TORCH_ARCHIVE_MARKER = "data.pkl"
"""The pickle inside the zip archive that ``torch.save`` writes (torch >= 1.6)."""
TORCHSCRIPT_MARKER = "constants.pkl"
"""What marks a TorchScript archive (OpenAI's original CLIP checkpoints, e.g. ``ViT-B-32.pt``)."""
PICKLE_PROTOCOL_BYTE = b"\x80"
"""The first byte of a pickle stream (protocol 2 and later): ``torch.save``'s legacy format."""
_SAFETENSORS_HEADER_START = b"{"
# Source files whose frames mark an error raised while a checkpoint was read, not while the model was built.
_READERS = ("torch/serialization.py", "torch/_weights_only_unpickler.py", "safetensors/torch.py")

PICKLED_OBJECTS = (
    "it holds pickled Python objects besides tensors, which clipdebias does not load (unpickling them could run "
    "any code)"
)
"""Why ``torch.load(weights_only=True)`` refused a file: in words that do not advise turning the check off."""


def checkpoint_kind(path: str | Path) -> str | None:
    """``"torch"`` (a zip archive written by ``torch.save``), ``"torchscript"``, ``"safetensors"``,
    ``"torch-legacy"`` (a pickle stream, as ``torch.save`` wrote before torch 1.6), or ``None``
    when the file is none of these (text, an image, an empty file, a zip of something else)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(9)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = {name.rsplit("/", 1)[-1] for name in archive.namelist()}
            if TORCHSCRIPT_MARKER in names:
                return "torchscript"
            return "torch" if TORCH_ARCHIVE_MARKER in names else None
    except (OSError, zipfile.BadZipFile):
        return None
    if len(head) == 9 and head[8:9] == _SAFETENSORS_HEADER_START and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == PICKLE_PROTOCOL_BYTE:
        return "torch-legacy"
    return None


def refused_pickle(err: BaseException) -> bool:
    """Whether ``err`` is ``torch.load(weights_only=True)`` refusing the objects a file holds."""
    return isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err)


def raised_while_reading(err: BaseException) -> bool:
    """Whether ``err`` was raised while torch or safetensors read a file (a damaged or foreign file),
    rather than while a model was built from what they read."""
    frame: TracebackType | None = err.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.replace("\\", "/").endswith(_READERS):
            return True
        frame = frame.tb_next
    return False
