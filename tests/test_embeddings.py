"""The embedding cache: keys, resume after a kill, unreadable images, readers, FAISS GPU use."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import make_image_folder

from clipdebias.cli import main
from clipdebias.clip.backbone import BackboneConfig, load_backbone
from clipdebias.clip.cache import (
    LOCK_FILE,
    SHARDS_DIR,
    EmbeddingStore,
    cache_key,
    encode_split,
    entry_path,
    load_embeddings,
    open_entry,
    open_index,
    read_manifest,
    search,
)
from clipdebias.data.sources import open_dataset
from clipdebias.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backbone():
    config = Path(__file__).parent / "assets" / "tiny-clip.json"
    return load_backbone(BackboneConfig(model=str(config), pretrained="none"))


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=5, val_per_class=2)


def _encode(source, backbone, cache, **kwargs):
    return encode_split(source, backbone, backbone.transform, backbone.transform_id, cache, **kwargs)


def _entry_dirs(cache: Path) -> list[Path]:
    return sorted((cache / "embeddings").iterdir()) if (cache / "embeddings").is_dir() else []


def test_encode_once_then_reuse(backbone, folder, tmp_path):
    source = open_dataset("imagefolder", "train", folder)
    first = _encode(source, backbone, tmp_path / "cache", data_root=folder, batch_size=4, chunk_size=6)
    assert (first.encoded, first.reused, first.failed, first.was_complete) == (15, 0, 0, False)
    ids, embeddings, labels = load_embeddings(first.entry)
    assert ids.tolist() == list(range(15)) and labels.tolist() == source.labels.tolist()
    assert embeddings.dtype == np.float32 and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    expected = backbone.encode_images(torch.stack([backbone.transform(source.load(i)) for i in range(15)])).numpy()
    assert np.allclose(embeddings, expected, atol=1e-5)
    again = _encode(source, backbone, tmp_path / "cache", data_root=folder)
    assert (again.encoded, again.reused, again.was_complete) == (0, 15, True)
    assert not (first.entry.path / SHARDS_DIR).exists()
    meta = json.loads((first.entry.path / "meta.json").read_text())
    assert meta["complete"] and meta["num_encoded"] == 15 and meta["dim"] == 32


def test_cache_key_separates_everything_the_embeddings_depend_on(backbone, folder, tmp_path):
    train = open_dataset("imagefolder", "train", folder)
    val = open_dataset("imagefolder", "val", folder)
    base = cache_key(train, folder, backbone.cache_identity, backbone.transform_id)
    assert cache_key(train, folder, backbone.cache_identity, backbone.transform_id) == base
    variants = [
        cache_key(val, folder, backbone.cache_identity, backbone.transform_id),
        cache_key(train, folder, backbone.cache_identity, "random-crop-view-1"),
        cache_key(train, folder, {**backbone.cache_identity, "weights": "sha256:other"}, backbone.transform_id),
        cache_key(train, folder, {**backbone.cache_identity, "precision": "bf16"}, backbone.transform_id),
        cache_key(train, tmp_path, backbone.cache_identity, backbone.transform_id),
    ]
    paths = {entry_path(tmp_path, key) for key in [base, *variants]}
    assert len(paths) == 6
    (folder / "train" / "cat" / "img_999.png").write_bytes((folder / "train" / "cat" / "img_000.png").read_bytes())
    grown = open_dataset("imagefolder", "train", folder)
    assert entry_path(tmp_path, cache_key(grown, folder, backbone.cache_identity, backbone.transform_id)) != entry_path(
        tmp_path, base
    )


def test_another_transform_is_its_own_entry(backbone, folder, tmp_path):
    from torchvision.transforms import functional as TF

    source = open_dataset("imagefolder", "train", folder)
    plain = _encode(source, backbone, tmp_path, data_root=folder)
    flipped = encode_split(
        source, backbone, lambda image: backbone.transform(TF.hflip(image)), "hflip", tmp_path, data_root=folder
    )
    assert flipped.entry.path != plain.entry.path and flipped.encoded == 15
    assert not np.allclose(load_embeddings(flipped.entry)[1], load_embeddings(plain.entry)[1])


def test_unreadable_images_are_skipped_counted_and_listed(backbone, folder, tmp_path):
    (folder / "train" / "dog" / "img_001.png").write_bytes(b"this is not a png")
    good = (folder / "train" / "cat" / "img_002.png").read_bytes()
    (folder / "train" / "cat" / "img_002.png").write_bytes(good[: len(good) // 3])
    source = open_dataset("imagefolder", "train", folder)
    result = _encode(source, backbone, tmp_path, data_root=folder, batch_size=4, chunk_size=4)
    assert (result.encoded, result.failed) == (13, 2) and result.entry.num_failed == 2
    assert [index for index, _, _ in result.failed_examples] == [2, 6]
    manifest = read_manifest(result.entry)
    assert len(manifest) == 15 and manifest["label"].tolist() == source.labels.tolist()
    failed = manifest[manifest["error"] != ""]
    assert (
        failed["index"].tolist() == [2, 6] and failed["path"].str.endswith(("cat/img_002.png", "dog/img_001.png")).all()
    )
    assert load_embeddings(result.entry)[0].tolist() == [i for i in range(15) if i not in (2, 6)]


class _StopAfter:
    """A progress sink that interrupts the run after ``limit`` images, like Ctrl-C would."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, 0

    def start(self, label, total, completed=0):
        self.completed = completed

    def advance(self, count):
        self.seen += count
        if self.seen >= self.limit:
            raise KeyboardInterrupt

    def note(self, text, warning=False):
        pass


def test_interrupted_run_resumes_encoding_only_missing_chunks(backbone, folder, tmp_path):
    source = open_dataset("imagefolder", "train", folder)
    with pytest.raises(KeyboardInterrupt):
        _encode(source, backbone, tmp_path / "a", data_root=folder, batch_size=2, chunk_size=4, progress=_StopAfter(9))
    (entry,) = _entry_dirs(tmp_path / "a")
    assert (
        len(list((entry / SHARDS_DIR).glob("shard-*.npz"))) == 2
        and not json.loads((entry / "meta.json").read_text())["complete"]
    )
    sink = _StopAfter(10**9)
    resumed = _encode(source, backbone, tmp_path / "a", data_root=folder, batch_size=2, chunk_size=99, progress=sink)
    assert (resumed.encoded, resumed.reused, sink.completed) == (7, 8, 8)  # the first grid (4) is kept
    whole = _encode(source, backbone, tmp_path / "b", data_root=folder, batch_size=2, chunk_size=4)
    for got, want in zip(load_embeddings(resumed.entry), load_embeddings(whole.entry), strict=True):
        assert np.array_equal(got, want)


def test_a_second_writer_is_refused(backbone, folder, tmp_path):
    source = open_dataset("imagefolder", "train", folder)
    path = entry_path(tmp_path, cache_key(source, folder, backbone.cache_identity, backbone.transform_id))
    path.mkdir(parents=True)
    with open(path / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another clipdebias process"):
            _encode(source, backbone, tmp_path, data_root=folder)
    assert _encode(source, backbone, tmp_path, data_root=folder).encoded == 15


def test_readers_chunks_search_and_faiss_gpu_when_present(backbone, folder, tmp_path, monkeypatch):
    import faiss

    source = open_dataset("imagefolder", "train", folder)
    entry = open_entry(_encode(source, backbone, tmp_path, data_root=folder).entry.path)
    ids, embeddings, labels = load_embeddings(entry)
    store = EmbeddingStore(entry)
    chunks = list(store.chunks(4))
    assert [len(i) for i, _ in chunks] == [4, 4, 4, 3]
    assert np.array_equal(np.concatenate([e for _, e in chunks]), embeddings) and not store.vectors.flags.writeable
    scores, found = search(entry, embeddings[[3, 11]], k=1, gpu=False)
    assert found[:, 0].tolist() == [3, 11] and np.allclose(scores[:, 0], 1, atol=1e-5)

    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: moved.append(index) or index)
    assert open_index(entry).ntotal == 15 and len(moved) == 1
    with pytest.raises(UserError, match="not a finished"):
        open_entry(tmp_path / "nowhere")


SLOW_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, capsys):
    model = tmp_path / "slow-clip.json"
    model.write_text(json.dumps(SLOW_CLIP))
    data = make_image_folder(tmp_path / "data", per_class=8, val_per_class=1)
    args = [
        "encode",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(data),
        "--model",
        str(model),
        "--pretrained",
        "none",
    ]
    args += ["--encode-batch-size", "2", "--chunk-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    worker = subprocess.Popen(
        [sys.executable, "-m", "clipdebias", *args, "--cache-dir", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while (
        not list(killed.glob(f"embeddings/*/{SHARDS_DIR}/shard-*.npz"))
        and worker.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (entry,) = _entry_dirs(killed)
    shards = len(list((entry / SHARDS_DIR).glob("shard-*.npz")))
    assert 1 <= shards < 6 and not json.loads((entry / "meta.json").read_text())["complete"]

    assert main([*args, "--cache-dir", str(killed)]) == 0
    resumed_out = capsys.readouterr().out
    assert main([*args, "--cache-dir", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main([*args, "--cache-dir", str(killed)]) == 0
    assert "nothing to encode" in capsys.readouterr().out
    assert f"{24 - 4 * shards} in" in resumed_out  # only the missing chunks were encoded

    resumed, whole = open_entry(entry), open_entry(_entry_dirs(tmp_path / "whole")[0])
    for got, want in zip(load_embeddings(resumed), load_embeddings(whole), strict=True):
        assert np.array_equal(got, want)
    assert read_manifest(resumed).equals(read_manifest(whole))


def test_cli_encode_uses_clipdebias_cache_and_rebuilds_on_request(folder, tiny_clip, cache_root, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    args = [
        "encode",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(folder),
        "--model",
        tiny_clip,
        "--pretrained",
        "none",
    ]
    assert main(args) == 0
    assert "15 in" in capsys.readouterr().out
    (entry,) = _entry_dirs(cache_root)
    assert main([*args, "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "15 in" in out and str(entry) in out
    assert main([*args, "--split", "val"]) == 0
    assert len(_entry_dirs(cache_root)) == 2
