"""Interrupted work is never lost or corrupted (docs/reliability.md, "Interrupted work").

``encode``, ``pseudolabel``, ``ssl`` and ``zeroshot`` are killed with SIGKILL at random moments
(tests/interrupt.py: seeded, logged), several times on the same output, then run to the end; the
result must equal an uninterrupted run's. Between the kills, what is on disk must be complete
files only. A loss that turns NaN must stop the run and keep the last good checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipdebias.cli import main
from clipdebias.embeddings import META_FILE, SHARDS_DIR, load_embeddings, open_entry, read_manifest
from fakes import make_image_folder
from interrupt import Killer, run_to_end

KILLS = 3
IMAGES = 48  # 3 classes
WRITE_PAUSE_S = 0.02
# A CLIP slow enough (64 px, 4 layers) that encoding 24 images takes a noticeable time to interrupt.
SLOW_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TIMESTAMPS = ("started", "finished", "last_run_s")  # the only meta.json fields that may differ


@pytest.fixture
def killer() -> Killer:
    return Killer.from_environment()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=IMAGES // 3, val_per_class=1)


@pytest.fixture(scope="module")
def slow_clip(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "slow-clip.json"
    path.write_text(json.dumps(SLOW_CLIP))
    return str(path)


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "embeddings").iterdir()
    return entry


# --- encode ---------------------------------------------------------------------------------------


def _check_cache_entry(cache: Path) -> str:
    """What a killed ``encode`` may leave: a readable meta.json, loadable shards, a finished entry
    only with its index and manifest. Returns what it found."""
    entries = list((cache / "embeddings").glob("*")) if (cache / "embeddings").is_dir() else []
    found = []
    for entry in entries:
        if not (entry / META_FILE).exists():
            found.append("entry without meta.json")
            continue
        meta = json.loads((entry / META_FILE).read_text())
        if meta["complete"]:
            assert open_entry(entry).num_images == meta["num_images"]
            assert len(read_manifest(open_entry(entry))) == meta["num_images"]
        shards = list((entry / SHARDS_DIR).glob("shard-*.npz"))
        for shard in shards:
            with np.load(shard) as content:
                assert len(content["ids"]) + len(content["failed_ids"]) == 4
        temporaries = len(list(entry.glob(".*.tmp")) + list(entry.glob(f"{SHARDS_DIR}/.*.tmp")))
        found.append(f"{'complete' if meta['complete'] else 'unfinished'}, {len(shards)} shards, {temporaries} temporary files")
    return "; ".join(found) or "no cache entry yet"


def test_encode_killed_at_random_moments_resumes_to_the_same_cache(images, slow_clip, tmp_path, killer, capsys):
    args = ["encode", "--dataset", "imagefolder", "--data-root", str(images), "--model", slow_clip,
            "--pretrained", "none", "--device", "cpu", "--batch-size", "2", "--chunk-size", "4"]  # fmt: skip
    assert main([*args, "--cache-dir", str(tmp_path / "whole")]) == 0  # also imports everything the children need
    code, seconds = run_to_end([*args, "--cache-dir", str(tmp_path / "timed")])
    assert code == 0
    cut = tmp_path / "cut"
    kills = 0
    for _ in range(KILLS):
        kills += killer.run_and_kill([*args, "--cache-dir", str(cut)], seconds)
        killer.note(_check_cache_entry(cut))
    assert kills >= 1, f"no run was killed ({killer})"
    capsys.readouterr()
    entry = _entry(cut) if (cut / "embeddings").is_dir() else None
    meta = json.loads((entry / META_FILE).read_text()) if entry and (entry / META_FILE).exists() else {}
    shards = list((entry / SHARDS_DIR).glob("shard-*.npz")) if entry else []
    done = sum(int(s.name[19:31]) - int(s.name[6:18]) for s in shards)

    assert main([*args, "--cache-dir", str(cut)]) == 0, str(killer)
    out = capsys.readouterr().out
    if meta.get("complete"):
        assert "nothing to encode" in out, str(killer)
    else:  # only the chunks without a shard were encoded
        assert f"{IMAGES - done} in" in out, str(killer)
    resumed, whole = open_entry(_entry(cut)), open_entry(_entry(tmp_path / "whole"))
    for got, want in zip(load_embeddings(resumed), load_embeddings(whole), strict=True):
        assert np.array_equal(got, want), str(killer)
    assert read_manifest(resumed).equals(read_manifest(whole))
    strip = lambda meta: {k: v for k, v in meta.items() if k not in TIMESTAMPS}  # noqa: E731
    assert strip(resumed.meta) == strip(whole.meta), str(killer)
    assert sorted(p.name for p in _entry(cut).iterdir()) == [".lock", "index.faiss", "manifest.csv", "meta.json"]
    print(killer)


# --- pseudolabel ----------------------------------------------------------------------------------


def _pseudolabel_files(folder: Path) -> list[Path]:
    """The files one ``pseudolabel --out FOLDER/labels.csv --reference-format FOLDER/reference``
    writes, in the order it writes them."""
    return [folder / "labels.csv", folder / "labels.json",
            folder / "reference" / "CLIPPseudoLabel0.98.csv", folder / "reference" / "CLIPPseudoLabel0.98-Unselected.csv"]  # fmt: skip


def _contents(files: list[Path]) -> list[bytes | None]:
    return [file.read_bytes() if file.exists() else None for file in files]


def _slow_writes(monkeypatch, pause_s: float) -> None:
    """Every atomic write pauses before it starts and between writing and renaming its temporary
    file, in this process and the children forked from it: the moments between two files of a
    group, and with a temporary file on disk, last long enough for a random kill to land in them."""
    import time

    from clipdebias import atomic

    write_file = atomic.atomic_write

    def slow(path, write):
        def slow_write(handle):
            write(handle)
            time.sleep(pause_s)

        time.sleep(pause_s)
        return write_file(path, slow_write)

    monkeypatch.setattr(atomic, "atomic_write", slow)


def test_pseudolabel_killed_at_random_moments_never_leaves_a_partial_or_mixed_output(
    images, slow_clip, tmp_path, killer, monkeypatch
):
    def args(folder: Path, tau: str) -> list[str]:
        return ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(images), "--model", slow_clip,
                "--pretrained", "none", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--templates", "simple",
                "--logit-scale", "100", "--threshold", "0.98", "--tau", tau, "--out", str(folder / "labels.csv"),
                "--reference-format", str(folder / "reference")]  # fmt: skip

    cut, whole = tmp_path / "cut", tmp_path / "whole"
    files = _pseudolabel_files(cut)
    assert main(args(cut, "0")) == 0  # an earlier run's output (plain labels) that the killed runs replace
    assert main(args(whole, "0.4")) == 0
    old, new = _contents(files), _contents(_pseudolabel_files(whole))
    assert None not in old and None not in new and all(a != b for a, b in zip(old[:2], new[:2]))
    assert pd.read_csv(files[0])["selected"].any() and pd.read_csv(files[0])["selected"].sum() < IMAGES
    _slow_writes(monkeypatch, WRITE_PAUSE_S)
    code, seconds = run_to_end(args(tmp_path / "timed", "0.4"))
    assert code == 0

    def every_file_is_complete() -> None:  # polled while a run writes: old or new bytes, never a part
        for file, now, before, after in zip(files, _contents(files), old, new, strict=True):
            assert now in (None, before, after), f"{file.name} is half-written ({killer})"

    kills = rounds = 0
    while rounds < KILLS or (kills < 2 and rounds < 2 * KILLS):
        # Every other kill comes at any moment, the others while the files are being written (after
        # the first temporary file appeared), the moments that could mix two runs' files.
        writing = lambda: any(cut.glob("**/.*.tmp"))  # noqa: E731
        whole_run = rounds % 2 == 0
        kills += killer.run_and_kill(
            args(cut, "0.4"), seconds if whole_run else 8 * WRITE_PAUSE_S, watch=every_file_is_complete,
            after=None if whole_run else writing,
        )  # fmt: skip
        rounds += 1
        present = [content is not None for content in _contents(files)]
        temporaries = len(list(cut.glob("**/.*.tmp")))
        killer.note(f"present: {present}, new: {[a == b for a, b in zip(_contents(files), new)]}, {temporaries} temporary files")
        # The files present are the first few in write order, and all come from the same run.
        assert present == sorted(present, reverse=True), str(killer)
        assert any(
            all(now in (None, version) for now, version in zip(_contents(files), run_files, strict=True))
            for run_files in (old, new)
        ), f"files of two runs side by side ({killer})"
    assert kills >= 1, f"no run was killed ({killer})"

    monkeypatch.undo()
    assert main(args(cut, "0.4")) == 0
    assert _contents(files) == new, str(killer)
    assert not list(cut.glob("**/.*.tmp")), "temporary files of the killed runs are left"
    print(killer)
