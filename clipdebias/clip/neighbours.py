"""The K nearest neighbours of every cached CLIP embedding among the other embeddings of its set.

Similarity is the cosine, i.e. the inner product of the L2-normalised vectors; a row is never its
own neighbour. The result is ``(indices [N, K] int64, similarities [N, K] float32)``: ``indices``
are row positions in the same order as the vectors (for a cache entry, the order of
:class:`~clipdebias.clip.cache.EmbeddingStore`, whose ``ids`` map rows to dataset indices), most
similar first.

How (``method``, chosen by :func:`choose_method` unless given):

- ``torch``: exact, a matmul of a block of queries against all rows and a top-k, on the GPU when
  one is used (faiss-gpu is not needed); the same code runs on CPU tensors (the tests use it);
- ``exact``: exact, FAISS's brute-force inner product (``faiss.knn``, blocked BLAS, no copy of the
  vectors into an index), for up to :data:`EXACT_MAX_ROWS` rows on a CPU;
- ``hnsw``: approximate, a FAISS ``IndexHNSWFlat`` graph (inner product; :data:`HNSW_M` links per
  node, ``efConstruction`` :data:`HNSW_EF_CONSTRUCTION`, ``efSearch`` :data:`HNSW_EF_SEARCH`), above
  that size on a CPU. A row for which the graph search finds fewer than K + 1 rows is searched
  exactly. docs/performance.md has the measured recall and times that chose it over an IVF index
  and these numbers (``benchmarks/knn_scale.py``).

Work is split into blocks of :data:`BLOCK_ROWS` query rows. For a cache entry
(:func:`entry_neighbours`) the result is stored beside the embeddings as ``neighbours-k{K}.npz``
and reused by the next call. While it is computed, every finished block is written atomically to
``neighbours-k{K}.parts/`` (with ``plan.json`` and, for ``hnsw``, the built graph ``hnsw.faiss``:
its parallel construction is not deterministic, so a resumed run must search the same graph), so a
run killed at any moment
(even ``kill -9``) resumes with the blocks it has not finished, on the same block grid and with the
same graph: the result equals an uninterrupted run's. The final file is
written by one atomic merge, then the parts are removed. docs/formats.md describes the files.

For a plain ``[N, D]`` array (``pseudolabel --embeddings FILE.npy``), :func:`array_neighbours`
normalises the rows and computes the same thing; it stores and reuses the result only when given
a folder (keyed by a hash of the array's content and K).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from clipdebias.clip.cache import CacheEntry, EmbeddingStore
from clipdebias.utils.atomic import atomic_write, atomic_write_json, write_error
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.progress import NoProgress, Progress

NEIGHBOURS_FORMAT = 1
METHODS = ("torch", "exact", "hnsw")
# Brute force up to this many rows on a CPU. Its time grows as N^2: 2.3 minutes at 100k rows of
# 512 dimensions on 2 shared cores, 8 at 200k, 5-6 hours at ImageNet's 1.28 M; the HNSW graph's grows
# as about N log N (docs/performance.md, benchmarks/knn_scale.py).
EXACT_MAX_ROWS = 100_000
# HNSW: links per node (2 M on the bottom layer), candidates kept while building and while searching.
# M 32 / ef 64: recall@10 0.927 and 8.8 min measured at ImageNet's 1.28 M clustered synthetic rows on 2
# cores (ef 48: 0.899, 8.7 min; 0.956 on 200k rows); M 16 needed ef 128 for 0.94 (docs/performance.md).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
# Query rows per block: the most work a killed run redoes, and one progress step.
BLOCK_ROWS = 16384
# torch: at most this many similarities in memory at once (2^28 float32 = 1 GiB).
TORCH_SCORES = 1 << 28

_BLOCK_NAME = re.compile(r"^block-(\d{12})-(\d{12})\.npz$")
PLAN_FILE = "plan.json"
HNSW_FILE = "hnsw.faiss"


@dataclass(frozen=True)
class Neighbours:
    """``indices`` ``[N, K]`` int64 rows and their cosine ``similarities`` ``[N, K]`` float32, most
    similar first; ``method`` that found them (``torch``, ``exact``, ``hnsw``; ``none`` for K = 0);
    ``computed``: False when read from a stored file."""

    indices: np.ndarray
    similarities: np.ndarray
    method: str
    computed: bool = True

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def check_k(k: int, rows: int) -> None:
    """:class:`OptionError` (field ``knn``) unless ``0 <= k < rows``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise OptionError("knn", f"must be a whole number (got {k!r})")
    if k < 0:
        raise OptionError("knn", f"must be 0 (off) or more (got {k})")
    if k >= rows:
        raise OptionError("knn", f"must be less than the number of images ({rows}); got {k}")


def choose_method(rows: int, device: str | torch.device | None = None) -> str:
    """``torch`` on a GPU, else ``exact`` up to :data:`EXACT_MAX_ROWS` rows, else ``hnsw``."""
    if device is not None and torch.device(device).type != "cpu":
        return "torch"
    return "exact" if rows <= EXACT_MAX_ROWS else "hnsw"


def _check_vectors(vectors: np.ndarray, name: str) -> None:
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise OptionError(name, f"must be a non-empty [N, D] matrix (got shape {tuple(vectors.shape)})")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise OptionError(name, f"must hold floating-point numbers (got {vectors.dtype})")


def _finite_rows(vectors: np.ndarray, name: str, chunk: int = 65536) -> None:
    for start in range(0, len(vectors), chunk):
        part = np.asarray(vectors[start : start + chunk])
        bad = ~np.isfinite(part).all(axis=1)
        if bad.any():
            raise OptionError(name, f"row {start + int(np.flatnonzero(bad)[0])} holds NaN or infinite values")


# --- searching one block of query rows ------------------------------------------------------------


def drop_self(rows: np.ndarray, found: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` results of each row other than the row itself (``found`` holds ``k + 1``)."""
    own = found == rows[:, None]
    order = np.argsort(own, axis=1, kind="stable")[:, :k]  # the others first, in their order
    return np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1)


class Searcher(ABC):
    """Finds the neighbours of ``vectors[start:stop]``; built once per run."""

    method: str

    @abstractmethod
    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices [stop - start, k], similarities [stop - start, k])`` of those rows, without themselves."""


class ExactSearch(Searcher):
    method = "exact"

    def __init__(self, vectors: np.ndarray, k: int):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.k = k

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        scores, found = faiss.knn(self.vectors[start:stop], self.vectors, self.k + 1, faiss.METRIC_INNER_PRODUCT)
        return drop_self(np.arange(start, stop), found, scores, self.k)


class HNSWSearch(Searcher):
    method = "hnsw"

    def __init__(self, vectors: np.ndarray, k: int, index: faiss.IndexHNSWFlat, ef_search: int = HNSW_EF_SEARCH):
        self.vectors = vectors
        self.k = k
        self.index = index
        self.index.hnsw.efSearch = max(ef_search, k + 1)

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(self.vectors[start:stop], dtype=np.float32)
        scores, found = self.index.search(queries, self.k + 1)
        indices, sims = drop_self(np.arange(start, stop), found, scores, self.k)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):  # the graph search found fewer than k + 1 rows: search these rows exactly
            exact = ExactSearch(self.vectors, self.k)
            for row in short:
                found_row, score_row = exact.block(start + row, start + row + 1)
                indices[row], sims[row] = found_row[0], score_row[0]
        return indices, sims


def build_hnsw(
    vectors: np.ndarray, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION
) -> faiss.IndexHNSWFlat:
    """An inner-product HNSW graph over ``vectors`` (which it copies), added 65,536 rows at a time."""
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    for start in range(0, len(vectors), 65536):
        index.add(np.ascontiguousarray(vectors[start : start + 65536], dtype=np.float32))
    return index


class TorchSearch(Searcher):
    method = "torch"

    def __init__(self, vectors: np.ndarray, k: int, device: torch.device):
        self.k = k
        rows, dim = vectors.shape
        self.all = torch.empty((rows, dim), dtype=torch.float32, device=device)
        for start in range(0, rows, 65536):
            part = np.array(vectors[start : start + 65536], dtype=np.float32)  # a writable copy for torch
            self.all[start : start + len(part)] = torch.from_numpy(part).to(device)
        self.step = max(1, TORCH_SCORES // rows)

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        indices = np.empty((stop - start, self.k), np.int64)
        sims = np.empty((stop - start, self.k), np.float32)
        for first in range(start, stop, self.step):
            last = min(first + self.step, stop)
            scores = self.all[first:last] @ self.all.T
            rows = torch.arange(last - first, device=scores.device)
            scores[rows, rows + first] = -math.inf  # never its own neighbour
            best, found = scores.topk(self.k, dim=1)
            indices[first - start : last - start] = found.cpu().numpy()
            sims[first - start : last - start] = best.cpu().numpy()
        return indices, sims


# --- blocks on disk ----------------------------------------------------------------------------------


def _block_bounds(rows: int, block_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_rows, rows)) for start in range(0, rows, block_rows)]


def _block_path(parts: Path, start: int, stop: int) -> Path:
    return parts / f"block-{start:012d}-{stop:012d}.npz"


def _npz_bytes(**arrays: np.ndarray) -> Callable:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return lambda handle: handle.write(buffer.getbuffer())


def _read_block(file: Path, rows: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(file) as block:
            indices, sims = block["indices"], block["similarities"]
    except (OSError, ValueError, EOFError, KeyError):
        return None
    return (indices, sims) if indices.shape == sims.shape == (rows, k) else None


def _finished_blocks(parts: Path, bounds: list[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    """Blocks of the current grid that load; anything else in ``parts`` but the plan and graph is removed."""
    wanted = set(bounds)
    done: set[tuple[int, int]] = set()
    for file in parts.iterdir():
        if file.name in (PLAN_FILE, HNSW_FILE):
            continue
        match = _BLOCK_NAME.match(file.name)
        bound = (int(match[1]), int(match[2])) if match else None
        if bound in wanted and _read_block(file, bound[1] - bound[0], k) is not None:
            done.add(bound)
        else:
            file.unlink(missing_ok=True)  # temporary files of a killed write, or another grid
    return done


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise UserError(f"another clipdebias process is computing {path.parent}'s neighbours; wait for it") from err
        yield
    finally:
        os.close(handle)


def _plan(parts: Path, plan: dict) -> dict:
    """Keep ``parts`` if it was started with the same plan, else start it afresh; returns the plan."""
    try:
        old = json.loads((parts / PLAN_FILE).read_text())
    except (OSError, ValueError):
        old = None
    if old != plan:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
        atomic_write_json(parts / PLAN_FILE, plan)
    return plan


def _hnsw(parts: Path, vectors: np.ndarray) -> faiss.IndexHNSWFlat:
    """The HNSW graph of this computation: built once and kept in ``parts`` for a resumed run."""
    file = parts / HNSW_FILE
    try:
        index = faiss.read_index(str(file))
        if isinstance(index, faiss.IndexHNSWFlat) and (index.ntotal, index.d) == vectors.shape:
            return index
    except (OSError, RuntimeError):
        pass  # not written yet (a kill leaves at most a temporary file)
    index = build_hnsw(vectors)
    atomic_write(file, lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))
    return index


def _searcher(vectors: np.ndarray, k: int, method: str, device: torch.device, parts: Path | None) -> Searcher:
    if method == "torch":
        return TorchSearch(vectors, k, device)
    if method == "exact":
        return ExactSearch(vectors, k)
    return HNSWSearch(vectors, k, _hnsw(parts, vectors) if parts is not None else build_hnsw(vectors))


def _run_blocks(
    vectors: np.ndarray,
    k: int,
    method: str,
    device: torch.device,
    parts: Path | None,
    block_rows: int,
    progress: Progress,
) -> tuple[np.ndarray, np.ndarray]:
    """Search every block not already in ``parts`` (writing each one there), then gather all blocks."""
    rows = len(vectors)
    bounds = _block_bounds(rows, block_rows)
    done = _finished_blocks(parts, bounds, k) if parts is not None else set()
    indices = np.empty((rows, k), np.int64)
    sims = np.empty((rows, k), np.float32)
    todo = [bound for bound in bounds if bound not in done]
    progress.start(f"nearest neighbours (K={k}, {method})", rows, completed=rows - sum(b - a for a, b in todo))
    if todo:
        searcher = _searcher(vectors, k, method, device, parts)
        for start, stop in todo:
            found, scores = searcher.block(start, stop)
            if parts is not None:
                atomic_write(_block_path(parts, start, stop), _npz_bytes(indices=found, similarities=scores))
            indices[start:stop], sims[start:stop] = found, scores
            progress.advance(stop - start)
    for start, stop in bounds:
        if (start, stop) in done:
            indices[start:stop], sims[start:stop] = _read_block(_block_path(parts, start, stop), stop - start, k)
    return indices, sims


# --- the public functions ------------------------------------------------------------------------


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads set to ``threads`` (``--threads``) inside the block, restored after;
    ``None`` leaves FAISS's own default."""
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _none(rows: int) -> Neighbours:
    """``K = 0``: no neighbours (nothing searched or stored)."""
    return Neighbours(np.zeros((rows, 0), np.int64), np.zeros((rows, 0), np.float32), "none")


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device("cuda" if device is None and torch.cuda.is_available() else (device or "cpu"))


def nearest_neighbours(
    vectors: np.ndarray,
    k: int,
    *,
    method: str | None = None,
    device: str | torch.device | None = None,
    block_rows: int = BLOCK_ROWS,
    progress: Progress | None = None,
) -> Neighbours:
    """The ``k`` nearest other rows of every row of the L2-normalised ``[N, D]`` float32 ``vectors``
    (not stored; see :func:`entry_neighbours` and :func:`array_neighbours`). ``device``: where the
    ``torch`` method runs (default: CUDA when available); ``method``: see the module docstring."""
    _check_vectors(vectors, "embeddings")
    check_k(k, len(vectors))
    if k == 0:
        return _none(len(vectors))
    where = _device(device)
    method = method or choose_method(len(vectors), where)
    if method not in METHODS:
        raise ValueError(f"unknown neighbour method {method!r}; choose one of {METHODS}")
    indices, sims = _run_blocks(vectors, k, method, where, None, block_rows, progress or NoProgress())
    return Neighbours(indices, sims, method)


def _stored(file: Path, rows: int, k: int, stamp: str) -> Neighbours | None:
    try:
        with np.load(file) as stored:
            meta = json.loads(str(stored["meta"]))
            indices, sims = stored["indices"], stored["similarities"]
    except (OSError, ValueError, EOFError, KeyError):
        return None
    if meta.get("format") != NEIGHBOURS_FORMAT or meta.get("source") != stamp:
        return None
    if indices.shape != (rows, k) or sims.shape != (rows, k):
        return None
    return Neighbours(indices, sims, str(meta.get("method")), computed=False)


def _stored_neighbours(
    vectors: np.ndarray,
    k: int,
    file: Path,
    stamp: str,
    method: str | None,
    device: torch.device,
    block_rows: int,
    rebuild: bool,
    progress: Progress,
) -> Neighbours:
    """``file`` if it holds this computation, else compute it there (resumably, in ``FILE.parts/``)."""
    rows = len(vectors)
    method = method or choose_method(rows, device)
    if method not in METHODS:
        raise ValueError(f"unknown neighbour method {method!r}; choose one of {METHODS}")
    found = None if rebuild else _stored(file, rows, k, stamp)  # reading needs no lock: the file is atomic
    if found is not None:
        return found
    with _lock(file.with_name(f".{file.stem}.lock")):
        found = None if rebuild else _stored(file, rows, k, stamp)  # finished by another process meanwhile?
        if found is not None:
            return found
        began = time.perf_counter()
        parts = file.with_name(f"{file.stem}.parts")
        plan = {"format": NEIGHBOURS_FORMAT, "source": stamp, "k": k, "rows": rows, "method": method}
        plan |= {"block_rows": block_rows}
        if method == "hnsw":
            plan |= {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
        _plan(parts, plan)
        indices, sims = _run_blocks(vectors, k, method, device, parts, block_rows, progress)
        meta = {**plan, "seconds": round(time.perf_counter() - began, 3)}
        meta.pop("block_rows")
        atomic_write(file, _npz_bytes(indices=indices, similarities=sims, meta=np.array(json.dumps(meta))))
        shutil.rmtree(parts, ignore_errors=True)
        return Neighbours(indices, sims, method)


def neighbours_path(entry: CacheEntry, k: int) -> Path:
    """Where :func:`entry_neighbours` keeps an entry's ``k`` neighbours."""
    return entry.path / f"neighbours-k{k}.npz"


def _entry_stamp(entry: CacheEntry) -> str:
    """Names the entry's content: changes when it is rebuilt (``finished`` is the time of its merge)."""
    parts = [entry.meta.get("key"), entry.meta.get("finished"), entry.meta.get("num_encoded")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entry_neighbours(
    entry: CacheEntry,
    k: int,
    *,
    store: EmbeddingStore | None = None,
    method: str | None = None,
    device: str | torch.device | None = None,
    block_rows: int = BLOCK_ROWS,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> Neighbours:
    """The ``k`` nearest neighbours of every embedding of a finished cache entry, computed once and
    stored as ``ENTRY/neighbours-k{k}.npz`` (see the module docstring); ``indices`` are rows of
    ``EmbeddingStore(entry)``. ``rebuild`` recomputes a stored result."""
    store = store or EmbeddingStore(entry)
    check_k(k, len(store))
    if k == 0:
        return _none(len(store))
    return _stored_neighbours(
        store.vectors,
        k,
        neighbours_path(entry, k),
        _entry_stamp(entry),
        method,
        _device(device),
        block_rows,
        rebuild,
        progress or NoProgress(),
    )


def normalised_rows(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """``embeddings`` as L2-normalised float32 rows, in RAM; :class:`OptionError` for NaN, infinite
    or all-zero rows."""
    _check_vectors(embeddings, name)
    _finite_rows(embeddings, name)
    vectors = np.array(embeddings, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise OptionError(name, f"row {int(zero[0])} is all zeros and has no direction")
    vectors /= norms
    return vectors


def array_neighbours(
    embeddings: np.ndarray,
    k: int,
    *,
    rows: int | None = None,
    store_dir: str | Path | None = None,
    method: str | None = None,
    device: str | torch.device | None = None,
    block_rows: int = BLOCK_ROWS,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> Neighbours:
    """The ``k`` nearest neighbours of the rows of a plain ``[N, D]`` array (normalised first).

    ``rows``: the number of rows the embeddings must have (the logits' rows), checked first.
    With ``store_dir`` the result is stored there as ``knn-<content hash>-k{k}.npz`` (resumable, like
    an entry's) and reused while the array is the same; without it nothing is written.
    """
    _check_vectors(embeddings, "embeddings")
    if rows is not None and len(embeddings) != rows:
        raise OptionError(
            "embeddings", f"have {len(embeddings)} rows but the logits have {rows}; give one embedding per logit row"
        )
    check_k(k, len(embeddings))
    vectors = normalised_rows(embeddings)
    if k == 0:
        return _none(len(vectors))
    where = _device(device)
    if store_dir is None:
        return nearest_neighbours(vectors, k, method=method, device=where, block_rows=block_rows, progress=progress)
    digest = hashlib.sha256(f"{vectors.shape}".encode())
    for start in range(0, len(vectors), 65536):
        digest.update(memoryview(vectors[start : start + 65536]).cast("B"))
    stamp = digest.hexdigest()
    file = Path(store_dir).expanduser() / f"knn-{stamp[:16]}-k{k}.npz"
    return _stored_neighbours(vectors, k, file, stamp, method, where, block_rows, rebuild, progress or NoProgress())
