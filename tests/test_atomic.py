"""Atomic writes: complete files or nothing, usual permissions, no temporary files left behind (those
of a killed writer are removed by the next write), groups of files that never mix two writes."""

import contextlib
import json
import os
import stat

import pytest

from clipdebias.utils.atomic import (
    atomic_write,
    atomic_write_group,
    atomic_write_json,
    atomic_write_text,
    bytes_writer,
    remove_abandoned_temporaries_in,
)


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(target.parent) == ["out.json"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    """A writer killed (SIGKILL) mid-write leaves its temporary file; the next write of the same file
    removes it, but never the temporary file of a writer that is still alive."""
    import signal
    import time

    target = tmp_path / "out.csv"

    def hang(handle):
        handle.write(b"half a fi")
        handle.flush()
        time.sleep(60)

    writers = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # a writer that never finishes
            try:
                atomic_write(target, hang)
            finally:
                os._exit(1)
        writers.append(pid)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob(".out.csv.*.tmp"))) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(writers[0], signal.SIGKILL)
        os.waitpid(writers[0], 0)
        atomic_write_text(tmp_path / "other.csv", "x")  # another file's write leaves them alone
        assert len(list(tmp_path.glob(".out.csv.*.tmp"))) == 2
        atomic_write_text(target, "complete")
        assert target.read_text() == "complete"
        (live,) = tmp_path.glob(".out.csv.*.tmp")  # the killed writer's is gone, the live one's kept
        assert live.read_bytes() == b"half a fi"
    finally:
        for pid in writers:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    remove_abandoned_temporaries_in(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["other.csv", "out.csv"]


def test_a_group_write_stopped_at_any_point_never_mixes_files_of_two_calls(tmp_path, monkeypatch):
    """Every removal and rename of a group is a point where a kill could land: at each, the files
    present are the first few of the group, all from one call, each complete."""
    files = [tmp_path / "labels.csv", tmp_path / "labels.json", tmp_path / "ref" / "a.csv", tmp_path / "ref" / "b.csv"]
    old = [f"old {file.name}".encode() for file in files]
    new = [f"new {file.name}, longer".encode() for file in files]
    real = {"replace": os.replace, "unlink": os.unlink}

    class Killed(BaseException):
        pass

    points = 0
    while True:
        atomic_write_group([(file, bytes_writer(data)) for file, data in zip(files, old)])
        calls = []

        def stop_at(name, calls=calls, points=points):
            def call(*args, **kwargs):
                calls.append(name)
                if len(calls) == points + 1:
                    raise Killed
                return real[name](*args, **kwargs)

            return call

        monkeypatch.setattr(os, "replace", stop_at("replace"))
        monkeypatch.setattr(os, "unlink", stop_at("unlink"))
        try:
            atomic_write_group([(file, bytes_writer(data)) for file, data in zip(files, new)])
            finished = True
        except Killed:
            finished = False
        finally:
            monkeypatch.undo()
        contents = [file.read_bytes() if file.exists() else None for file in files]
        present = [content is not None for content in contents]
        assert present == sorted(present, reverse=True), (points, contents)
        assert present[0], "the first file never goes missing"
        assert all(c in (None, o) for c, o in zip(contents, old)) or all(
            c in (None, n) for c, n in zip(contents, new)
        ), (points, contents)
        if finished:
            break
        points += 1
    assert contents == new and points == 7  # 3 removals and 4 renames
