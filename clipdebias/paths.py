"""Where clipdebias keeps things on disk."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CLIPDEBIAS_CACHE"


def cache_dir(override: str | Path | None = None) -> Path:
    """The cache directory: ``override`` if given, else ``$CLIPDEBIAS_CACHE``, else ``~/.cache/clipdebias``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path("~/.cache/clipdebias").expanduser()
