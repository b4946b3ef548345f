"""Memory bounded by design (docs/reliability.md, "Memory"): the peak memory of ``encode`` and
``pseudolabel`` grows with the number of images N by the embeddings / logits themselves plus a
few hundred bytes per image (file names, the CSV table), never by another N x D or N x C matrix.

Each measurement runs in a child process (forked from the test process for ``pseudolabel``, whose job
needs the test's monkeypatching; a freshly spawned interpreter for ``encode``, whose peak otherwise
depended on the heap the earlier tests left in the test process), which resets its peak resident
memory (``/proc/self/clear_refs``) just before the job and reads it (``VmHWM``) just after, so the
number is the job's own peak growth, without the imports and the test process before it. The job
runs at N and at 4N images on synthetic data; the growth between the two must stay within
``bytes of the matrix at 3N + ROW_BYTES x 3N + SLACK``. A memory-mapped file counts as resident
once it is read (its pages are in the process's memory, though the kernel may drop them), so
reading the logits or the FAISS index is "the matrix itself".
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clipdebias.data.sources import ImageSource

MB = 1 << 20
# What one more image may cost beyond its row of the matrix (its embedding, its logits): its file
# name, its CSV / manifest row, FAISS's id maps. Measured: about 90 B (pseudolabel) and 160 B
# (encode); 512 B leaves room for longer file names. Another copy of a 1000-class logit row is
# 4000 B, of a 512-d embedding 2048 B: either would break the bound.
ROW_BYTES = 512
# Allocator and page granularity (the measured growth varies by less than 1 MB between runs).
SLACK = 32 * MB
CHUNK_ROWS = 2048  # pseudolabel --chunk-rows: the constant part stays small next to N x C
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
# Each size is measured this many times and the least growth kept: interference (the kernel
# reclaiming cold pages of the big test process, which the child then faults back in) only ever
# adds to a reading, so the least one is the job's own.
ATTEMPTS = 2


def _allowed(added_rows: int, matrix_row_bytes: int) -> int:
    """The most the peak may grow for ``added_rows`` more images whose matrix rows take ``matrix_row_bytes``."""
    return added_rows * (matrix_row_bytes + ROW_BYTES) + SLACK


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)[1]) * 1024


def peak_growth(job: Callable[[], None]) -> int:
    """How far ``job()`` raises the resident memory of a fresh child process above where it started."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            torch.set_num_threads(1)  # no OpenMP thread pool in a forked child
            gc.collect()
            libc = ctypes.CDLL("libc.so.6")
            libc.malloc_trim(0)  # free memory inherited from the parent goes back to the system
            libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # large blocks are mapped and unmapped: no drift
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident size
            start = _status("VmRSS")
            job()
            os.write(write_end, str(_status("VmHWM") - start).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - reported on stderr, the parent sees no number
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and answer, "the measured job failed"
    return int(answer)


class SyntheticImages(ImageSource):
    """``count`` images that exist only as their index: a file name made on demand and, loaded, a
    tiny array; no per-image storage but the labels, as in a real dataset."""

    def __init__(self, count: int, classes: list[str]):
        super().__init__("synthetic", "train", classes, np.arange(count, dtype=np.int64) % len(classes))

    def path(self, index: int) -> str:
        return f"/data/synthetic/train/class_{index % len(self.classes):04d}/image_{index:09d}.JPEG"

    def load(self, index: int) -> np.ndarray:
        return np.array([index % 251, index % 241, index % 239, 1.0], dtype=np.float32)


# --- pseudolabel ------------------------------------------------------------------------------------


def _logits_file(path: Path, rows: int, classes: int) -> Path:
    """``[rows, classes]`` float32 logits with a class bias, written in slices (never whole in memory)."""
    logits = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, classes))
    bias = np.linspace(0.0, 2.0, classes, dtype=np.float32)
    for start in range(0, rows, 8192):
        stop = min(start + 8192, rows)
        noise = np.random.default_rng(start).standard_normal((stop - start, classes), dtype=np.float32)
        logits[start:stop] = 3.0 * noise + bias
    logits.flush()
    del logits
    return path


def _pseudolabel_growth(tmp_path: Path, rows: int, monkeypatch) -> int:
    from clipdebias.clip.prompts import load_classnames
    from clipdebias.commands import pseudolabel as command
    from clipdebias.commands.pseudolabel import PseudoLabelConfig, run_pseudolabel

    classes, _ = load_classnames("imagenet", [""] * 1000)
    monkeypatch.setattr(command, "open_dataset", lambda name, split, root: SyntheticImages(rows, classes))
    growths = []
    for attempt in range(ATTEMPTS):
        logits = _logits_file(tmp_path / f"logits-{rows}-{attempt}.npy", rows, len(classes))
        config = PseudoLabelConfig(
            dataset="imagenet", data_root=str(tmp_path), out=str(tmp_path / f"labels-{rows}-{attempt}.csv"),
            logits=str(logits), reference_dir=str(tmp_path / f"reference-{rows}-{attempt}"), chunk_rows=CHUNK_ROWS,
        )  # fmt: skip
        growths.append(peak_growth(lambda config=config: run_pseudolabel(config)))
        logits.unlink()  # the page cache of a deleted file goes too
    return min(growths)


def test_pseudolabel_memory_grows_by_the_logits_and_a_few_bytes_per_row(tmp_path, monkeypatch):
    import pandas  # noqa: F401 - imported before the measured jobs, like torch

    rows = 16384
    small = _pseudolabel_growth(tmp_path, rows, monkeypatch)
    large = _pseudolabel_growth(tmp_path, 4 * rows, monkeypatch)
    print(
        f"pseudolabel peak growth: {small / MB:.1f} MB at {rows} rows, {large / MB:.1f} MB at {4 * rows} rows; "
        f"per added row {(large - small) / (3 * rows):.0f} B, logits {1000 * 4} B"
    )
    assert large - small <= _allowed(3 * rows, 1000 * 4), f"{(large - small) / MB:.1f} MB for {3 * rows} more rows"


# --- encode -----------------------------------------------------------------------------------------


class SyntheticEncoder:
    """A fixed random projection of :class:`SyntheticImages`' arrays to ``dim``-d unit vectors."""

    cache_identity = {"model": "synthetic-projection"}

    def __init__(self, dim: int):
        self.projection = torch.randn(4, dim, generator=torch.Generator().manual_seed(0))

    @property
    def embed_dim(self) -> int:
        return int(self.projection.shape[1])

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(pixels @ self.projection, dim=-1)


def _encode_job(rows: int, dim: int, cache: Path) -> None:
    """``encode_split`` of ``rows`` synthetic images into a fresh cache (run in a spawned process)."""
    from clipdebias.clip.cache import encode_split

    source, encoder = SyntheticImages(rows, [f"class {c}" for c in range(10)]), SyntheticEncoder(dim)
    encode_split(source, encoder, torch.from_numpy, "as-is", cache, batch_size=512)


def _measured_in_a_fresh_process(queue, job: Callable[..., None], args: tuple) -> None:
    """The body of :func:`fresh_peak_growth`'s child: the same measurement as :func:`peak_growth`."""
    try:
        torch.set_num_threads(1)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        start = _status("VmRSS")
        job(*args)
        queue.put(_status("VmHWM") - start)
    except BaseException:  # noqa: BLE001 - reported on stderr, the parent sees no number
        traceback.print_exc()
        queue.put(None)


def fresh_peak_growth(job: Callable[..., None], *args: object) -> int:
    """How far ``job(*args)`` raises the resident memory of a newly started interpreter (spawned, not
    forked): nothing of the test process's heap, whose state depends on the tests before, is inherited."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measured_in_a_fresh_process, args=(queue, job, args))
    child.start()
    answer = queue.get()
    child.join()
    assert child.exitcode == 0 and answer is not None, "the measured job failed"
    return int(answer)


def _encode_growth(tmp_path: Path, rows: int, dim: int) -> int:
    growths = []
    for attempt in range(ATTEMPTS):
        cache = tmp_path / f"cache-{rows}-{attempt}"  # a fresh cache: every attempt encodes everything
        growths.append(fresh_peak_growth(_encode_job, rows, dim, cache))
        assert (next((cache / "embeddings").iterdir()) / "index.faiss").stat().st_size > rows * dim * 4
    return min(growths)


def test_encode_memory_grows_by_the_embeddings_and_a_few_bytes_per_image(tmp_path):
    import faiss  # noqa: F401 - imported before the measured jobs, like torch
    import pandas  # noqa: F401

    rows, dim = 16384, 512
    small = _encode_growth(tmp_path, rows, dim)
    large = _encode_growth(tmp_path, 4 * rows, dim)
    print(
        f"encode peak growth: {small / MB:.1f} MB at {rows} images, {large / MB:.1f} MB at {4 * rows} images; "
        f"per added image {(large - small) / (3 * rows):.0f} B, embedding {dim * 4} B"
    )
    assert large - small <= _allowed(3 * rows, dim * 4), f"{(large - small) / MB:.1f} MB for {3 * rows} more images"
