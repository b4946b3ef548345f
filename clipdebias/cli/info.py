"""``clipdebias info``: versions, GPUs and the cache directory."""

from __future__ import annotations

import importlib.metadata
import platform

from rich.console import Console
from rich.table import Table

from clipdebias import __version__
from clipdebias.utils.paths import cache_dir


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> list[tuple[str, str]]:
    """``(name, value)`` rows describing this installation and its accelerators."""
    # torch is imported once the command runs, so that --help stays fast
    import torch

    rows = [
        ("clipdebias", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torchvision", _version("torchvision")),
        ("open_clip", _version("open_clip_torch")),
        ("faiss", _version("faiss-cpu") if _version("faiss-cpu") != "not installed" else _version("faiss-gpu")),
        ("CUDA available", str(torch.cuda.is_available())),
        ("CUDA (torch build)", str(torch.version.cuda)),
        ("GPU count", str(torch.cuda.device_count())),
    ]
    for index in range(torch.cuda.device_count()):
        rows.append((f"GPU {index}", torch.cuda.get_device_name(index)))
    try:
        import faiss

        rows.append(("faiss GPU count", str(faiss.get_num_gpus())))
    except ImportError:
        rows.append(("faiss GPU count", "faiss not importable"))
    rows.append(("cache directory", str(cache_dir())))
    return rows


def info_command() -> None:
    table = Table(title="clipdebias environment", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    for name, value in environment_report():
        table.add_row(name, value)
    Console().print(table)
