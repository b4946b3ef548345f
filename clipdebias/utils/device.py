"""Choosing the torch device from ``--device auto|cpu|cuda``.

Under torchrun (several processes, ``LOCAL_RANK`` set) ``auto`` and ``cuda`` mean this process's
own GPU, ``cuda:LOCAL_RANK``: one process per GPU.
"""

from __future__ import annotations

import torch

from clipdebias.utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


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
    from clipdebias.utils.distributed import launch_info

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
