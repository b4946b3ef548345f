"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed.

A reader (or a resumed run) sees either the old file or the complete new one, never half of it.

A process killed while writing (``kill -9``, a crash) leaves its temporary file behind: a hidden
``.NAME.XXXXXXXX.tmp`` beside ``NAME``. The writer holds an advisory lock (``flock``) on its
temporary file until the rename, and the kernel drops that lock when the process dies, so the next
write of ``NAME`` (from any process) can tell an abandoned temporary file from one being written
right now: it removes the abandoned ones and leaves the others alone. Nothing ever reads a
temporary file.

A write that the file system refuses (no space left, a quota, a read-only file system, no
permission, a file where a folder should be) raises :class:`WriteError`, a :class:`UserError`
naming the path and the reason, so a command ends with one line instead of a traceback.
:func:`prepare_dir` checks a folder the same way before a long job starts writing into it.

:func:`atomic_write_group` writes several files that belong together (a CSV and its sidecar) so
that a kill never leaves files of two different runs side by side.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from clipdebias.utils.errors import UserError

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


Writer = Callable[[IO[bytes]], None]
TEMPORARY_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Writer) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it to ``path``.

    Temporary files of ``path`` that a killed writer left behind are removed first. An
    :class:`OSError` of the file system becomes a :class:`WriteError`; the temporary file is
    removed whatever happens.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temporaries(path)
        handle, tmp = _locked_temporary(path)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)  # still locked: nobody may take it for abandoned before it is renamed
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise
    _fsync_folder(path.parent)
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


def _locked_temporary(path: Path) -> tuple[IO[bytes], str]:
    """A new temporary file beside ``path``, open for writing and locked while this process lives."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        handle = os.fdopen(fd, "wb")
        with contextlib.suppress(OSError):  # a file system without locks: the file stays unlocked
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        if os.fstat(handle.fileno()).st_nlink > 0:
            return handle, tmp
        handle.close()  # another process took it for abandoned between its creation and the lock


def _temporary_name(name: str) -> re.Pattern[str]:
    # mkstemp's random part is made of lower-case letters, digits and underscores.
    return re.compile(re.escape(f".{name}.") + r"[a-z0-9_]+" + re.escape(TEMPORARY_SUFFIX))


def remove_abandoned_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` whose writer is gone (killed); returns them.

    A temporary file that another process is writing (it holds the lock) is left alone, and so is
    every temporary file on a file system without locks.
    """
    path = Path(path)
    pattern = _temporary_name(path.name)
    try:
        candidates = [entry.path for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return []
    removed = []
    for candidate in candidates:
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue  # renamed or removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(candidate)
            removed.append(Path(candidate))
        except OSError:
            pass  # locked: being written now (or no locks here: keep it, to be safe)
        finally:
            os.close(fd)
    return removed


def remove_abandoned_temporaries_in(folder: str | Path) -> list[Path]:
    """:func:`remove_abandoned_temporaries` for every file of ``folder`` (not its subfolders)."""
    names = re.compile(r"\.(.+)\.[a-z0-9_]+" + re.escape(TEMPORARY_SUFFIX))
    try:
        targets = {match[1] for entry in os.scandir(folder) if (match := names.fullmatch(entry.name))}
    except OSError:
        return []
    return [removed for name in sorted(targets) for removed in remove_abandoned_temporaries(Path(folder) / name)]


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (it survives a power loss, not only a killed process)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_group(files: Sequence[tuple[str | Path, Writer]]) -> list[Path]:
    """Write ``files`` (``(path, write)`` pairs) one after the other, each atomically, so that at
    every moment the files present are the first few of the list, all from the same call.

    Before the first file is replaced, the others are removed, the last one first: a process killed
    half-way leaves some of the old files or some of the new ones (the rest missing), never a new
    file beside an old one. The first file itself is replaced atomically, so it never goes missing.
    """
    paths = [Path(path) for path, _ in files]
    for path in reversed(paths[1:]):
        path.unlink(missing_ok=True)
    return [atomic_write(path, write) for path, (_, write) in zip(paths, files, strict=True)]


def bytes_writer(data: bytes) -> Writer:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    return write


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented JSON every clipdebias JSON file uses."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, bytes_writer(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))
