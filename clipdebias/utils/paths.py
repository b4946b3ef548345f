"""Where clipdebias keeps things on disk."""

from __future__ import annotations

import os
from pathlib import Path

from clipdebias.utils.atomic import prepare_dir

CACHE_ENV = "CLIPDEBIAS_CACHE"


def cache_dir(override: str | Path | None = None) -> Path:
    """The cache directory: ``override`` if given, else ``$CLIPDEBIAS_CACHE``, else ``~/.cache/clipdebias``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path("~/.cache/clipdebias").expanduser()


def prepare_cache_dir(override: str | Path | None = None) -> Path:
    """:func:`cache_dir`, created and checked writable: a one-line
    :class:`~clipdebias.utils.atomic.WriteError` before any work when it is not (a file in the way, a
    read-only file system, no permission)."""
    return prepare_dir(cache_dir(override), "cache directory (--cache-dir)")
