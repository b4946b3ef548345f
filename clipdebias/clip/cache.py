"""The embedding cache: every image of a dataset split encoded once, kept as a FAISS index.

One cache entry is a folder ``CACHE_DIR/embeddings/<dataset>-<split>-<model>-<key digest>/``:

| file | content |
|---|---|
| ``index.faiss`` | ``IndexIDMap2(IndexFlatIP(D))``: L2-normalised float32 embeddings, ids = dataset indices |
| ``manifest.csv`` | ``index,path,label,error`` for every image of the split; ``error`` names why an image was skipped |
| ``meta.json`` | the key, counts, dimension, timings; ``"complete": true`` once the entry is finished |
| ``shards/`` | while encoding only: one ``.npz`` per chunk of ``chunk_size`` images |

The key is the model, the weights (content hash for files), the precision, the dataset, its root,
the split, a fingerprint of the split's file list and the image transform. Changing any of them
makes a new entry; nothing stale is reused.

Crash safety: each chunk is written atomically as a shard once all its images are encoded, and
the finished entry is written by one merge of the shards (index, then manifest, then
``meta.json`` marked complete, each atomic). A run killed at any moment (even ``kill -9``)
leaves finished shards behind; the next run encodes only the chunks without a shard, on the same
chunk grid, so the result equals an uninterrupted run. A lock file keeps two processes from
writing one entry at once.

Decoders and the cache: ``--decode cpu`` (Pillow, large JPEGs decoded at a reduced size) and ``--decode
gpu`` (:mod:`clipdebias.clip.jpeg_batches`) implement the same preprocessing, so they write and reuse the
same entry (the key's ``transform`` names the model's preprocessing, not the decoder). Their embeddings of
one image agree within cosine 0.995 (tests/test_decode.py); an entry, or a resumed one's shards, may hold
both. ``meta.json`` lists the decoders that wrote an entry's shards under ``"decoders"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from clipdebias import __version__
from clipdebias.clip.backbone import Backbone
from clipdebias.clip.jpeg_batches import DevicePreprocess, JpegBatches, min_decode_side, read_threads, resolve_decode
from clipdebias.config import defaults
from clipdebias.data.sources import ArraySource, FolderSource, ImageSource, UnreadableImage
from clipdebias.utils import distributed
from clipdebias.utils.atomic import atomic_write, atomic_write_json, prepare_dir
from clipdebias.utils.device import encode_workers
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.progress import NoProgress, Progress

CACHE_FORMAT = 1
DEFAULT_CHUNK_SIZE = defaults.CHUNK_SIZE
ENTRIES_DIR = "embeddings"
META_FILE = "meta.json"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.csv"
SHARDS_DIR = "shards"
# Files other modules compute from an entry's embeddings and keep beside them (clip.neighbours:
# neighbours-k{K}.npz and its resumable neighbours-k{K}.parts/), removed when the entry is rebuilt.
DERIVED_PATTERNS = ("neighbours-*",)
LOCK_FILE = ".lock"
FAILED_EXAMPLES = 5  # unreadable images listed in an EncodeResult (all are in the manifest)
_SHARD_NAME = re.compile(r"^shard-(\d{12})-(\d{12})\.npz$")


class ImageEncoder(Protocol):
    """What :func:`encode_split` needs from a model (a :class:`clipdebias.clip.backbone.Backbone` is one)."""

    cache_identity: dict[str, str]

    @property
    def embed_dim(self) -> int: ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class CacheEntry:
    """A finished cache entry (see the module docstring for its files)."""

    path: Path
    meta: dict

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def num_images(self) -> int:
        return int(self.meta["num_images"])

    @property
    def num_encoded(self) -> int:
        return int(self.meta["num_encoded"])

    @property
    def num_failed(self) -> int:
        return int(self.meta["num_failed"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])


@dataclass(frozen=True)
class EncodeResult:
    """What one :func:`encode_split` call did: ``encoded`` images now, ``reused`` from shards or a
    finished entry, ``failed`` unreadable images (``failed_examples``: the first few as
    ``(index, path, reason)``)."""

    entry: CacheEntry
    encoded: int
    reused: int
    failed: int
    elapsed_s: float
    was_complete: bool
    failed_examples: list[tuple[int, str, str]] = field(default_factory=list)
    decoder: str = "cpu"  # the Decoding that ran: cpu (Pillow) or gpu (the device path)


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def source_fingerprint(source: ImageSource) -> str:
    """A digest of the split's image list and labels (and pixels, for in-memory datasets)."""
    digest = hashlib.sha256(f"{source.name}\0{source.split}\0{len(source)}\0".encode())
    for index in range(len(source)):
        digest.update(source.path(index).encode("utf-8", "surrogateescape") + b"\n")
    digest.update(np.ascontiguousarray(source.labels, dtype=np.int64).tobytes())
    if isinstance(source, ArraySource):
        digest.update(memoryview(np.ascontiguousarray(source.images)).cast("B"))
    return digest.hexdigest()


def cache_key(
    source: ImageSource, data_root: str | Path | None, encoder_identity: dict[str, str], transform_id: str
) -> dict[str, str]:
    """Everything an entry's content depends on."""
    root = str(Path(data_root).expanduser().resolve()) if data_root is not None else ""
    return {
        "format": str(CACHE_FORMAT),
        **{f"encoder_{name}": value for name, value in sorted(encoder_identity.items())},
        "dataset": source.name,
        "data_root": root,
        "split": source.split,
        "images": source_fingerprint(source),
        "transform": transform_id,
    }


def entry_path(cache_dir: str | Path, key: dict[str, str]) -> Path:
    digest = _sha256(json.dumps(key, sort_keys=True).encode())[:16]
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", key.get("encoder_model", "model"))[:40]
    return Path(cache_dir).expanduser().resolve() / ENTRIES_DIR / f"{key['dataset']}-{key['split']}-{model}-{digest}"


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def open_entry(path: str | Path) -> CacheEntry:
    """A finished entry at ``path``; :class:`UserError` if it is missing or unfinished."""
    path = Path(path).expanduser()
    meta = _read_meta(path)
    if meta is None or not meta.get("complete") or not (path / INDEX_FILE).is_file():
        raise UserError(f"{path} is not a finished embedding cache entry; run `clipdebias encode` first")
    return CacheEntry(path, meta)


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    handle = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise UserError(
                f"another clipdebias process is writing the cache entry {path}; wait for it to finish"
            ) from err
        yield
    finally:
        os.close(handle)  # closing releases the lock; the kernel does so too if the process dies


class _Encodable:
    """Dataset positions to ``(index, pixels or None, why not)``, for a DataLoader; ``min_side``: a large
    JPEG may be decoded at a reduced size that keeps this many pixels on its shortest side."""

    def __init__(self, source: ImageSource, transform: Callable, min_side: int | None = None):
        self.source = source
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = self.source.load_at_least(index, self.min_side)
            return index, self.transform(image), ""
        except UnreadableImage as err:
            return index, None, err.reason


def _collate(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    failed = [(index, reason) for index, pixels, reason in items if pixels is None]
    pixels = torch.stack([p for _, p in good]) if good else None
    return [index for index, _ in good], pixels, failed


def _chunk_bounds(num_images: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, num_images)) for start in range(0, num_images, chunk_size)]


def _shard_path(path: Path, start: int, stop: int) -> Path:
    return path / SHARDS_DIR / f"shard-{start:012d}-{stop:012d}.npz"


def _finished_shards(path: Path, bounds: list[tuple[int, int]]) -> dict[tuple[int, int], Path]:
    """Shards on the current chunk grid that load; anything else in ``shards/`` is removed."""
    wanted = set(bounds)
    found: dict[tuple[int, int], Path] = {}
    folder = path / SHARDS_DIR
    if not folder.is_dir():
        return found
    for file in folder.iterdir():
        match = _SHARD_NAME.match(file.name)
        bound = (int(match[1]), int(match[2])) if match else None
        if bound in wanted and _shard_loads(file):
            found[bound] = file
        else:
            file.unlink(missing_ok=True)  # temporary files of a killed write, or a foreign grid
    return found


def _shard_loads(file: Path) -> bool:
    try:
        with np.load(file) as shard:
            return {"ids", "embeddings", "failed_ids", "failed_reasons"} <= set(shard.files)
    except (OSError, ValueError, EOFError):
        return False


def _write_shard(
    file: Path, ids: list[int], embeddings: list[torch.Tensor], failed: list[tuple[int, str]], dim: int
) -> None:
    """Write one chunk's shard; ``embeddings`` may still be on the model's device (copied here, once)."""
    buffer = io.BytesIO()
    vectors = torch.cat(embeddings).to("cpu", torch.float32).numpy() if embeddings else np.zeros((0, dim), np.float32)
    np.savez(
        buffer,
        ids=np.asarray(ids, dtype=np.int64),
        embeddings=vectors,
        failed_ids=np.asarray([i for i, _ in failed], dtype=np.int64),
        failed_reasons=np.asarray([r for _, r in failed], dtype=str),
    )
    atomic_write(file, lambda handle: handle.write(buffer.getbuffer()))


class _ChunkBatches:
    """The batches of dataset positions of ``chunks``, made one at a time (memory does not grow
    with the number of images)."""

    def __init__(self, chunks: list[tuple[int, int]], batch_size: int):
        self.chunks = chunks
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.chunks:
            for first in range(start, stop, self.batch_size):
                yield list(range(first, min(first + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.chunks)


@dataclass(frozen=True)
class Decoding:
    """How :func:`encode_split` decodes: Pillow in ``num_workers`` DataLoader processes (``min_side``: see
    :class:`_Encodable`), or ``device`` (a :class:`JpegBatches` that also holds the CPU path's settings)."""

    num_workers: int = 0
    min_side: int | None = None
    device: JpegBatches | None = None

    @property
    def name(self) -> str:
        return "gpu" if self.device is not None else "cpu"


def _batches(
    source: ImageSource, encoder: ImageEncoder, transform: Callable, chunks: _ChunkBatches, decoding: Decoding
) -> Iterable[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    if decoding.device is not None:
        return decoding.device(chunks)
    return DataLoader(
        _Encodable(source, transform, decoding.min_side),
        batch_sampler=chunks,
        num_workers=decoding.num_workers,
        collate_fn=_collate,
        pin_memory=str(getattr(encoder, "device", "cpu")).startswith("cuda"),
    )


def _encode_chunks(
    source: ImageSource,
    encoder: ImageEncoder,
    transform: Callable,
    path: Path,
    todo: list[tuple[int, int]],
    batch_size: int,
    decoding: Decoding,
    progress: Progress,
) -> int:
    """Encode the chunks in ``todo`` and write one shard each; returns how many images were encoded."""
    loader = _batches(source, encoder, transform, _ChunkBatches(todo, batch_size), decoding)
    pending = iter(todo)
    start, stop = next(pending)
    ids: list[int] = []
    vectors: list[torch.Tensor] = []
    failed: list[tuple[int, str]] = []
    encoded = 0
    for batch_ids, pixels, batch_failed in loader:
        if pixels is not None:
            # kept on the model's device until the shard is written: no wait for the GPU after each batch, so
            # that the next batch is read and decoded while the model still runs on this one
            vectors.append(encoder.encode_images(pixels))
        ids.extend(batch_ids)
        failed.extend(batch_failed)
        progress.advance(len(batch_ids) + len(batch_failed))
        if len(ids) + len(failed) == stop - start:
            _write_shard(_shard_path(path, start, stop), ids, vectors, failed, encoder.embed_dim)
            encoded += len(ids)
            ids, vectors, failed = [], [], []
            start, stop = next(pending, (stop, stop))
    return encoded


def _merge(source: ImageSource, path: Path, shards: list[Path], dim: int) -> tuple[int, list[tuple[int, str]]]:
    """Shards → ``index.faiss`` + ``manifest.csv`` (each atomic); returns (encoded, failed)."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    failed: list[tuple[int, str]] = []
    for file in shards:
        with np.load(file) as shard:
            embeddings = shard["embeddings"]
            if embeddings.shape[1:] != (dim,):
                raise UserError(
                    f"{file} holds {embeddings.shape[1:]}-d embeddings, expected {dim}; rerun with --rebuild"
                )
            if len(embeddings):
                index.add_with_ids(np.ascontiguousarray(embeddings), np.ascontiguousarray(shard["ids"]))
            failed.extend(zip(shard["failed_ids"].tolist(), shard["failed_reasons"].tolist(), strict=True))
    # Streamed through Python so that the write is atomic and a full disk is a one-line WriteError.
    atomic_write(path / INDEX_FILE, lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))
    errors = np.full(len(source), "", dtype=object)
    for index_id, reason in failed:
        errors[index_id] = reason
    labels = pd.array(np.where(source.labels >= 0, source.labels, 0), dtype="Int64")
    labels[source.labels < 0] = pd.NA
    manifest = pd.DataFrame(
        {
            "index": np.arange(len(source)),
            "path": [source.path(i) for i in range(len(source))],
            "label": labels,
            "error": errors,
        }
    )
    # File names that are not UTF-8 are written back as the bytes they are on disk.
    atomic_write(path / MANIFEST_FILE, lambda handle: manifest.to_csv(handle, index=False, errors="surrogateescape"))
    return int(index.ntotal), sorted(failed)


def _examples(source: ImageSource, failed: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    return [(i, source.path(i), reason) for i, reason in failed[:FAILED_EXAMPLES]]


@dataclass(frozen=True)
class _Plan:
    """What rank 0 found in the entry folder: a finished entry, or the chunks still to encode."""

    meta: dict
    complete: bool
    todo: list[tuple[int, int]] = field(default_factory=list)
    reused: int = 0


def _remove_derived(path: Path) -> None:
    """Remove what was computed from an entry's old embeddings (:data:`DERIVED_PATTERNS`)."""
    for derived in (found for pattern in DERIVED_PATTERNS for found in path.glob(pattern)):
        if derived.is_dir():
            shutil.rmtree(derived, ignore_errors=True)
        else:
            derived.unlink(missing_ok=True)


def _plan_entry(
    source: ImageSource, path: Path, key: dict[str, str], dim: int, chunk_size: int, rebuild: bool, decoder: str
) -> _Plan:
    """Start (or continue) the entry at ``path``: discard it if ``rebuild`` or its key differs,
    write ``meta.json`` marked unfinished, list the chunks without a finished shard."""
    meta = _read_meta(path)
    if rebuild or (meta is not None and meta.get("key") != key):
        for name in (META_FILE, INDEX_FILE, MANIFEST_FILE):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / SHARDS_DIR, ignore_errors=True)
        _remove_derived(path)
        meta = None
    if meta is not None and meta.get("complete") and (path / INDEX_FILE).is_file():
        shutil.rmtree(path / SHARDS_DIR, ignore_errors=True)  # left over if killed while cleaning up
        return _Plan(meta, complete=True)
    for stale in path.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    chunk = int(meta["chunk_size"]) if meta is not None else chunk_size
    meta = {
        "format": CACHE_FORMAT,
        "complete": False,
        "key": key,
        "chunk_size": chunk,
        "num_images": len(source),
        "dim": dim,
        "clipdebias": __version__,
        "started": (meta or {}).get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "decoders": sorted({*(meta or {}).get("decoders", []), decoder}),
    }
    atomic_write_json(path / META_FILE, meta)
    bounds = _chunk_bounds(len(source), chunk)
    done = _finished_shards(path, bounds)
    todo = [bound for bound in bounds if bound not in done]
    return _Plan(meta, complete=False, todo=todo, reused=sum(stop - start for start, stop in done))


def _finish_entry(source: ImageSource, path: Path, meta: dict, began: float) -> tuple[dict, int, list[tuple[int, str]]]:
    """Merge every shard into the finished entry; returns its meta, encoded count and failures."""
    shards = [_shard_path(path, start, stop) for start, stop in _chunk_bounds(len(source), int(meta["chunk_size"]))]
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} shard(s) of {path} are missing (first: {missing[0].name}); under torchrun every process "
            "writes its shards into the cache directory, which must be a file system all nodes share (--cache-dir)"
        )
    num_encoded, failed = _merge(source, path, shards, int(meta["dim"]))
    meta = {
        **meta,
        "complete": True,
        "num_encoded": num_encoded,
        "num_failed": len(failed),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "last_run_s": round(time.perf_counter() - began, 3),
    }
    atomic_write_json(path / META_FILE, meta)
    shutil.rmtree(path / SHARDS_DIR, ignore_errors=True)
    return meta, num_encoded, failed


def encode_split(
    source: ImageSource,
    encoder: ImageEncoder,
    transform: Callable,
    transform_id: str,
    cache_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rebuild: bool = False,
    progress: Progress | None = None,
    decoding: Decoding | None = None,
) -> EncodeResult:
    """Encode every image of ``source`` once into the cache entry for this key, resuming if needed.

    ``transform`` turns a PIL image into the encoder's input tensor and ``transform_id`` names it
    in the key (any transform works, e.g. a seeded augmentation with its own id). A finished
    entry is returned as is (nothing encoded); ``rebuild`` discards it first. ``chunk_size`` is
    only used when an entry is started: a resumed entry keeps its chunk grid.

    Under torchrun call it on every rank: rank 0 locks and prepares the entry, every rank encodes
    every ``world``-th missing chunk into its own shards, and rank 0 merges them all into the one
    entry (the cache directory must be shared by all nodes). The entry is the same as one
    process's, and a killed run resumes with any number of processes. Only rank 0 reports
    ``progress``, for its own chunks.

    ``decoding``: how images are decoded (default: Pillow, every pixel, in ``num_workers`` processes).
    """
    if batch_size < 1 or chunk_size < 1:
        raise UserError(f"--batch-size and --chunk-size must be at least 1 (got {batch_size}, {chunk_size})")
    if num_workers < 0:
        raise OptionError("num_workers", f"must be 0 or more (got {num_workers})")
    progress = (progress or NoProgress()) if distributed.is_main_process() else NoProgress()
    decoding = decoding or Decoding(num_workers=num_workers)
    began = time.perf_counter()
    key = cache_key(source, data_root, encoder.cache_identity, transform_id)
    path = entry_path(cache_dir, key)
    with contextlib.ExitStack() as held:

        def prepare() -> _Plan:
            prepare_dir(path, "cache entry")
            held.enter_context(_entry_lock(path))  # rank 0 holds the lock for the whole run
            return _plan_entry(source, path, key, encoder.embed_dim, chunk_size, rebuild, decoding.name)

        plan = distributed.on_main(prepare)
        if plan.complete:
            entry = CacheEntry(path, plan.meta)
            return EncodeResult(entry, 0, entry.num_encoded, entry.num_failed, time.perf_counter() - began, True)
        mine = plan.todo[distributed.rank() :: distributed.world_size()]
        progress.start(
            "encoding images", plan.reused + sum(stop - start for start, stop in mine), completed=plan.reused
        )
        encoded_here = (
            _encode_chunks(source, encoder, transform, path, mine, batch_size, decoding, progress) if mine else 0
        )
        encoded = _sum_over_ranks(encoded_here)  # also waits until every rank has written its shards
        meta, num_encoded, failed = distributed.on_main(lambda: _finish_entry(source, path, plan.meta, began))
    elapsed = time.perf_counter() - began
    return EncodeResult(
        CacheEntry(path, meta),
        encoded,
        num_encoded - encoded,
        len(failed),
        elapsed,
        False,
        _examples(source, failed),
        decoding.name,
    )


def _sum_over_ranks(count: int) -> int:
    return int(distributed.all_reduce_sum(torch.tensor([count], dtype=torch.long)).item())


# Reading entries -------------------------------------------------------------------------------


def read_manifest(entry: CacheEntry) -> pd.DataFrame:
    """``index, path, label, error`` for every image of the split (``label`` nullable Int64)."""
    return pd.read_csv(
        entry.manifest_path,
        dtype={"index": "int64", "path": str, "label": "Int64", "error": str},
        keep_default_na=False,
        na_values={"label": [""]},
        encoding_errors="surrogateescape",
    )


def open_index(entry: CacheEntry, gpu: bool | None = None, mmap: bool = False) -> faiss.Index:
    """The entry's FAISS index; on all GPUs when ``gpu`` (default: when FAISS sees a GPU).

    ``mmap`` maps the vectors from disk instead of reading them (CPU only).
    """
    use_gpu = faiss.get_num_gpus() > 0 if gpu is None else gpu
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap and not use_gpu else 0
    index = faiss.read_index(str(entry.index_path), flags) if flags else faiss.read_index(str(entry.index_path))
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def search(entry: CacheEntry, queries: np.ndarray, k: int, gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product k-nearest images of ``queries`` (``[Q, D]``): ``(scores [Q, k], dataset indices [Q, k])``."""
    index = open_index(entry, gpu=gpu)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class _IndexBacked:
    """Exposes a FAISS index's vector memory to numpy and keeps the index alive with the array."""

    def __init__(self, index: faiss.Index, view: np.ndarray):
        self.index = index
        self.__array_interface__ = view.__array_interface__


class EmbeddingStore:
    """The embeddings of a finished entry, memory-mapped from ``index.faiss`` (no copy in RAM).

    ``ids`` (int64 dataset indices, increasing), ``vectors`` (a read-only ``[N, D]`` float32 array
    mapped from the file), ``labels`` (int64, -1 = unknown) for the encoded images only.
    """

    def __init__(self, entry: CacheEntry):
        self.entry = entry
        self._index = open_index(entry, gpu=False, mmap=True)
        flat = faiss.downcast_index(self._index.index)
        self.ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        count, dim = int(flat.ntotal), int(flat.d)
        if count:
            view = np.asarray(faiss.rev_swig_ptr(flat.get_xb(), count * dim)).reshape(count, dim)
            self.vectors = np.asarray(_IndexBacked(self._index, view))
        else:
            self.vectors = np.zeros((0, dim), np.float32)
        self.vectors.flags.writeable = False
        labels = read_manifest(entry)["label"].to_numpy(dtype="int64", na_value=-1)
        self.labels = labels[self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def chunks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, embeddings)`` copies of ``chunk_size`` rows at a time."""
        for start in range(0, len(self), chunk_size):
            yield self.ids[start : start + chunk_size].copy(), np.array(self.vectors[start : start + chunk_size])


def load_embeddings(entry: CacheEntry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [N] int64, embeddings [N, D] float32, labels [N] int64)`` of the encoded images, in RAM."""
    store = EmbeddingStore(entry)
    return store.ids.copy(), np.array(store.vectors), store.labels.copy()


# Encoding through a backbone ------------------------------------------------------------------


def cached_embeddings(
    source: ImageSource,
    backbone: Backbone,
    cache_dir: Path,
    data_root: str | None,
    *,
    batch_size: int,
    num_workers: int | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rebuild: bool = False,
    progress: Progress | None = None,
    decode: str = defaults.DECODE,
) -> EncodeResult:
    """:func:`encode_split` with a backbone's own evaluation transform, decoded as ``decode`` says
    (``auto``, ``cpu`` or ``gpu``: :func:`eval_decoding`)."""
    return encode_split(
        source,
        backbone,
        backbone.transform,
        backbone.transform_id,
        cache_dir,
        data_root=data_root,
        batch_size=batch_size,
        num_workers=encode_workers(num_workers, backbone.device.type),
        chunk_size=chunk_size,
        rebuild=rebuild,
        progress=progress,
        decoding=eval_decoding(source, backbone, decode, num_workers),
    )


def eval_decoding(source: ImageSource, backbone: Backbone, decode: str, workers: int | None) -> Decoding:
    """How to decode ``source`` for ``backbone``'s evaluation transform: ``decode`` resolved on its
    device (:func:`resolve_decode`), large JPEGs at a reduced size on the CPU path, ``workers`` decoding
    processes (CPU path) or reading threads (device path; both default as the CLI says)."""
    min_side = min_decode_side(backbone.preprocess_cfg)
    path = resolve_decode(decode, backbone.device, backbone.preprocess_cfg)
    if path == "cpu" or not isinstance(source, FolderSource):  # in-memory images: nothing to decode
        return Decoding(encode_workers(workers, backbone.device.type), min_side)
    preprocess = DevicePreprocess(backbone.preprocess_cfg, backbone.device)
    return Decoding(0, min_side, JpegBatches(source, preprocess, backbone.transform, min_side, read_threads(workers)))
