"""Interrupted work is never lost or corrupted (docs/reliability.md, "Interrupted work").

``encode``, ``pseudolabel``, ``ssl`` and ``zeroshot`` are killed with SIGKILL at random moments
(tests/interrupt.py: seeded, logged), several times on the same output, then run to the end; the
result must equal an uninterrupted run's. Between the kills, what is on disk must be complete
files only. A loss that turns NaN must stop the run and keep the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import make_image_folder
from interrupt import Killer, run_to_end

from clipdebias.cli import main
from clipdebias.clip.cache import META_FILE, SHARDS_DIR, load_embeddings, open_entry, read_manifest

KILLS = 3
IMAGES = 48  # 3 classes
WRITE_PAUSE_S = 0.02
# A CLIP slow enough (64 px, 4 layers) that encoding the images takes a noticeable time to interrupt.
SLOW_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TIMESTAMPS = ("started", "finished", "last_run_s")  # the only meta.json fields that may differ


@pytest.fixture
def killer() -> Iterator[Killer]:
    """The test's seeded killer; torch on one thread meanwhile, in the test and the forked children
    alike (a forked child cannot use its parent's OpenMP threads, and the children's results are
    compared with the test's own runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Killer.from_environment()
    finally:
        torch.set_num_threads(threads)


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
        found.append(
            f"{'complete' if meta['complete'] else 'unfinished'}, {len(shards)} shards, {temporaries} temporary files"
        )
    return "; ".join(found) or "no cache entry yet"


def test_encode_killed_at_random_moments_resumes_to_the_same_cache(images, slow_clip, tmp_path, killer, capsys):
    args = ["encode", "--dataset", "imagefolder", "--data-root", str(images), "--model", slow_clip,
            "--pretrained", "none", "--device", "cpu", "--encode-batch-size", "2", "--chunk-size", "4"]  # fmt: skip
    assert main([*args, "--cache-dir", str(tmp_path / "whole")]) == 0  # also imports everything the children need
    code, seconds = run_to_end([*args, "--cache-dir", str(tmp_path / "timed")])
    assert code == 0
    cut = tmp_path / "cut"
    kills = rounds = 0
    while rounds < KILLS or (kills < 2 and rounds < 2 * KILLS):
        killed = killer.run_and_kill([*args, "--cache-dir", str(cut)], seconds)
        killer.note(_check_cache_entry(cut))
        seconds = seconds if killed else killer.last_run_s
        kills, rounds = kills + killed, rounds + 1
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
            folder / "reference" / "CLIPPseudoLabel0.98.csv",
            folder / "reference" / "CLIPPseudoLabel0.98-Unselected.csv",
            folder / "reference" / "CLIPRankedPredictions.csv"]  # fmt: skip


def _read_or_none(file: Path) -> bytes | None:
    try:  # no exists() first: a writer may remove the file between the two calls (polled mid-run)
        return file.read_bytes()
    except FileNotFoundError:
        return None


def _contents(files: list[Path]) -> list[bytes | None]:
    return [_read_or_none(file) for file in files]


def _slow_writes(monkeypatch, pause_s: float) -> None:
    """Every atomic write pauses before it starts and between writing and renaming its temporary
    file, in this process and the children forked from it: the moments between two files of a
    group, and with a temporary file on disk, last long enough for a random kill to land in them."""
    import time

    from clipdebias.utils import atomic

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
                "--pretrained", "none", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                "--templates", "simple",
                "--logit-scale", "100", "--select-threshold", "0.98", "--tau", tau, "--out", str(folder / "labels.csv"),
                "--reference-format", str(folder / "reference"), "--overwrite"]  # fmt: skip

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
        left = set(cut.glob("**/.*.tmp"))  # by an earlier kill
        writing = lambda left=left: bool(set(cut.glob("**/.*.tmp")) - left)  # noqa: E731
        whole_run = rounds % 2 == 0
        killed = killer.run_and_kill(
            args(cut, "0.4"), seconds if whole_run else 8 * WRITE_PAUSE_S, watch=every_file_is_complete,
            after=None if whole_run else writing,
        )  # fmt: skip
        seconds = seconds if killed or not whole_run else killer.last_run_s
        kills, rounds = kills + killed, rounds + 1
        present = [content is not None for content in _contents(files)]
        temporaries = len(list(cut.glob("**/.*.tmp")))
        killer.note(
            f"present: {present}, new: {[a == b for a, b in zip(_contents(files), new)]}, {temporaries} temporary files"
        )
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


# --- training: ssl and zeroshot -------------------------------------------------------------------

# Everything of metrics.json that does not depend on the clock or on how the run was started.
SSL_STABLE = ("method", "top1", "top5", "per_class_top1", "pseudo_labels", "prior", "steps", "labeled_images")
ZEROSHOT_STABLE = (*SSL_STABLE, "zeroshot_top1", "zeroshot_debiased_top1", "train_pseudo_labels")


def _history(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def _check_run_folder(out: Path, epochs: int) -> str:
    """What a killed training run may leave: complete files only, and a metrics.jsonl that is the
    checkpoint's history or one epoch behind it (the checkpoint is written first, and a resumed run
    rewrites metrics.jsonl from the checkpoint when it starts). Returns what it found."""
    if (out / "config.json").exists():
        json.loads((out / "config.json").read_text())
    for name in ("labeled_index.csv", "unlabeled_index.csv"):
        if (out / name).exists():
            assert list(pd.read_csv(out / name).columns) == ["index", "path", "label"]
    history = _history(out)
    temporaries = len(list(out.glob(".*.tmp")))
    if not (out / "checkpoint.pt").exists():
        assert history == []
        return f"no checkpoint, {temporaries} temporary files"
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    epoch = checkpoint["epoch"]
    assert 1 <= epoch <= epochs and len(history) in (epoch - 1, epoch)
    assert history == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in checkpoint["history"][: len(history)]]
    return f"checkpoint of epoch {epoch}, {len(history)} epochs in metrics.jsonl, {temporaries} temporary files"


def _inode(file: Path) -> int | None:
    return file.stat().st_ino if file.exists() else None


def _kill_training(killer: Killer, args: list[str], out: Path, seconds: float, whole: Path) -> None:
    """Kill ``args --out OUT --resume`` at random moments (at least twice), then run it to the end.

    ``seconds``: how long the whole run takes; ``whole``: the run folder of an uninterrupted run.
    Every other kill comes at any moment of the run; the others during training, within an epoch's
    time after the run wrote a checkpoint."""
    history = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    epochs, epoch_s = len(history), history[-1]["elapsed_s"] / len(history)
    kills = rounds = 0
    while rounds < KILLS or (kills < 2 and rounds < 2 * KILLS):
        checkpoint = _inode(out / "checkpoint.pt")
        if rounds % 2 == 0:
            killed = killer.run_and_kill([*args, "--out", str(out), "--resume"], seconds)
            seconds = seconds if killed else killer.last_run_s  # what is left to do only gets shorter
        else:
            saved = lambda checkpoint=checkpoint: _inode(out / "checkpoint.pt") not in (None, checkpoint)  # noqa: E731
            killed = killer.run_and_kill([*args, "--out", str(out), "--resume"], epoch_s, after=saved)
        killer.note(_check_run_folder(out, epochs))
        kills, rounds = kills + killed, rounds + 1
    assert kills >= 1, f"no run was killed ({killer})"
    # A temporary file a killed write left behind is removed; it never confuses the resumed run.
    (out / ".checkpoint.pt.abandon1.tmp").write_bytes(b"half a checkpoint")
    assert main([*args, "--out", str(out), "--resume"]) == 0, str(killer)
    assert not list(out.glob(".*.tmp")), str(killer)
    print(killer)


def test_ssl_killed_at_random_moments_resumes_to_the_same_result(tmp_path, killer):
    args = ["ssl", "--dataset", "digits", "--epochs", "6", "--steps-per-epoch", "6", "--batch-size", "8", "--mu", "2",
            "--device", "cpu", "--seed", "1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    code, seconds = run_to_end([*args, "--out", str(tmp_path / "timed")])
    assert code == 0

    _kill_training(killer, args, tmp_path / "cut", seconds, tmp_path / "whole")
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert {k: resumed[k] for k in SSL_STABLE} == {k: whole[k] for k in SSL_STABLE}, str(killer)
    assert _history(tmp_path / "cut") == _history(tmp_path / "whole"), str(killer)


def test_a_resumed_run_rewrites_the_history_of_its_checkpoint_first(tmp_path):
    """A kill between the checkpoint and metrics.jsonl leaves the history an epoch behind; the resumed
    run puts it back before anything else (so kills in a row never leave it further behind)."""
    args = ["ssl", "--dataset", "digits", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4", "--mu", "2",
            "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 2
    (tmp_path / "run" / "metrics.jsonl").write_text(lines[0])
    assert main([*args, "--resume"]) == 0  # nothing left to train, yet the history is whole again
    assert (tmp_path / "run" / "metrics.jsonl").read_text().splitlines(keepends=True) == lines


def test_zeroshot_killed_at_random_moments_resumes_to_the_same_result(images, slow_clip, tmp_path, killer):
    def args(cache: str) -> list[str]:
        return ["zeroshot", "--dataset", "imagefolder", "--data-root", str(images), "--model", slow_clip,
                "--pretrained", "none", "--device", "cpu", "--templates", "simple", "--logit-scale", "100",
                "--cache-dir", str(tmp_path / cache), "--workers", "0", "--threads", "1", "--views", "1",
                "--select-threshold", "0.98", "--epochs", "4", "--steps-per-epoch", "10", "--batch-size", "2",
                "--mu", "2",
                "--no-report"]  # fmt: skip

    assert main([*args("cache"), "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    code, seconds = run_to_end([*args("timed-cache"), "--out", str(tmp_path / "timed")])
    assert code == 0

    # The killed runs start with an empty cache: a kill can also land in the encoding.
    _kill_training(killer, args("cut-cache"), tmp_path / "cut", seconds, tmp_path / "whole")
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert {k: resumed[k] for k in ZEROSHOT_STABLE} == {k: whole[k] for k in ZEROSHOT_STABLE}, str(killer)
    assert _history(tmp_path / "cut") == _history(tmp_path / "whole"), str(killer)
    assert (tmp_path / "cut" / "pseudolabels.csv").read_bytes() == (
        tmp_path / "whole" / "pseudolabels.csv"
    ).read_bytes()


# --- a loss that turns NaN ------------------------------------------------------------------------

NAN_ARGS = ["ssl", "--dataset", "digits", "--epochs", "3", "--steps-per-epoch", "3", "--batch-size", "4", "--mu", "2",
            "--device", "cpu", "--seed", "2"]  # fmt: skip


class _NaNGradient(torch.autograd.Function):
    """The identity whose gradient is NaN: the loss stays finite, the weights do not."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("nan") / "whole"
    assert main([*NAN_ARGS, "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("poison", "step", "message"),
    [
        ("loss", 5, "the loss became NaN or infinite at epoch 2, step 2 of 3; training stopped and "),
        ("gradient", 6, "the weights became NaN or infinite in epoch 2 while the loss was finite"),
    ],
)
def test_a_nan_stops_the_run_keeps_the_last_good_checkpoint_and_resumes_from_it(
    tmp_path, monkeypatch, capsys, uninterrupted, poison, step, message
):
    from clipdebias.training import loop as train

    real_step, calls = train.fixmatch_step, []

    def poisoned_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) != step:
            return out
        loss = out.loss * float("nan") if poison == "loss" else _NaNGradient.apply(out.loss)
        return dataclasses.replace(out, loss=loss)

    monkeypatch.setattr(train, "fixmatch_step", poisoned_step)
    out = tmp_path / "run"
    assert main([*NAN_ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {message}") and "Traceback" not in err
    assert f"{out / 'checkpoint.pt'} keeps epoch 1, the last good one" in last and "lower --lr" in last
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and len(_history(out)) == 1 and not (out / "metrics.json").exists()
    for state in (checkpoint["model"], checkpoint["teacher"]):
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())

    monkeypatch.undo()  # the cause removed, the run continues from the last good epoch
    assert main([*NAN_ARGS, "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    assert {k: resumed[k] for k in SSL_STABLE} == {k: uninterrupted[k] for k in SSL_STABLE}


def test_a_nan_in_the_first_epoch_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    from clipdebias.training import loop as train

    real_step = train.fixmatch_step
    monkeypatch.setattr(
        train,
        "fixmatch_step",
        lambda *a, **k: dataclasses.replace(out := real_step(*a, **k), loss=out.loss * float("inf")),
    )
    assert main([*NAN_ARGS, "--out", str(tmp_path / "run"), "--precision", "bf16"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the loss became NaN or infinite at epoch 1, step 1 of 3")
    assert "no epoch had finished, so no checkpoint was written" in last and "fp32" in last
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
