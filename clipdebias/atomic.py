"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed.

A reader (or a resumed run) sees either the old file or the complete new one, never half of it.

A write that the file system refuses (no space left, a quota, a read-only file system, no
permission, a file where a folder should be) raises :class:`WriteError`, a :class:`UserError`
naming the path and the reason, so a command ends with one line instead of a traceback.
:func:`prepare_dir` checks a folder the same way before a long job starts writing into it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from clipdebias.errors import UserError

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "check the folder's permissions or write elsewhere",
    errno.EPERM: "check the folder's permissions or write elsewhere",
}


class WriteError(UserError):
    """A file or folder could not be written (the message names it and the reason)."""


def _in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder, if any."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def write_error(path: str | Path, err: OSError, what: str = "cannot write") -> WriteError:
    """A one-line :class:`WriteError` for ``err`` raised while writing ``path``."""
    path = Path(path)
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and (blocking := _in_the_way(path.parent)) is not None:
        return WriteError(f"{what} {str(path)!r}: {str(blocking)!r} is a file, not a folder")
    text = str(err).strip()
    reason = err.strerror or (text.splitlines()[0] if text else type(err).__name__)
    hint = _HINTS.get(err.errno or 0)
    return WriteError(f"{what} {str(path)!r}: {reason}" + (f"; {hint}" if hint else ""))


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it to ``path``.

    An :class:`OSError` of the file system becomes a :class:`WriteError`; the temporary file is
    removed whatever happens.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise
    return path


def prepare_dir(path: str | Path, option: str) -> Path:
    """Create the folder ``path`` (and its parents) and check that a file can be created in it.

    Raises a :class:`WriteError` that names ``option`` (e.g. ``--out``) when a file is in the way
    or the file system refuses; cheap, so commands call it before a long job writes there.
    """
    path = Path(path).expanduser()
    blocking = _in_the_way(path)
    if blocking is not None:
        where = "is a file" if blocking == path else f"is inside {str(blocking)!r}, which is a file"
        raise WriteError(f"{option} {str(path)!r} {where}; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".clipdebias-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise write_error(path, err, what=f"{option}: cannot write into") from err
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
