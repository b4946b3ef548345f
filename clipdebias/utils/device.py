"""Choosing the torch device from ``--device auto|cpu|cuda``, and how many worker processes to start.

Under torchrun (several processes, ``LOCAL_RANK`` set) ``auto`` and ``cuda`` mean this process's
own GPU, ``cuda:LOCAL_RANK``: one process per GPU.
"""

from __future__ import annotations

import os

import torch

from clipdebias.utils.distributed import launch_info
from clipdebias.utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
# Most worker processes (image decoding) per process that ``--workers`` picks by itself.
MAX_AUTO_WORKERS = 8


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`UserError`."""
    ordinal = name.removeprefix("cuda:") if name.startswith("cuda:") else None
    if name not in DEVICES and not (ordinal is not None and ordinal.isdigit()):
        raise UserError(f"unknown --device {name!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if ordinal is not None and int(ordinal) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s) here, cuda:0 and up")
    if name == "cuda":
        return _local_gpu()
    return torch.device(name)


def _local_gpu() -> torch.device:
    info = launch_info()
    if not info.launched:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise UserError(
            f"torchrun started {info.local_world_size} processes on this node but torch sees {count} GPU(s); "
            f"use --nproc_per_node {count} or fewer"
        )
    return torch.device("cuda", info.local_rank)


def cores_per_process() -> int:
    """The CPU cores this process may use: all of the node's, or its share under torchrun."""
    return max(1, (os.cpu_count() or 1) // max(1, launch_info().local_world_size))


def training_workers() -> int:
    """Loader workers of a training run: this process's cores less one for the training process
    itself, at most :data:`MAX_AUTO_WORKERS`."""
    return min(MAX_AUTO_WORKERS, max(0, cores_per_process() - 1))


def encode_workers(requested: int | None, device_type: str) -> int:
    """Decoding workers of ``encode``: as given, else 0 on CPU (decoding would compete with the
    model for the cores) and ``min(MAX_AUTO_WORKERS, cores)`` when a GPU runs the model."""
    if requested is not None:
        return requested
    return 0 if device_type == "cpu" else min(MAX_AUTO_WORKERS, cores_per_process())
