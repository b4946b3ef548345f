"""kNN over the embedding cache (clipdebias.clip.neighbours) and the kNN refinement of probabilities
(clipdebias.pseudolabels.knn): against brute-force numpy, stored and reused, resumed after a kill."""

import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdebias.clip import neighbours as nb
from clipdebias.clip.cache import CacheEntry, EmbeddingStore, encode_split
from clipdebias.data.sources import ArraySource
from clipdebias.pseudolabels.knn import KnnRefinedRows
from clipdebias.pseudolabels.labels import debiased_pseudo_labels
from clipdebias.utils.errors import OptionError, UserError


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rows: int, dim: int = 16, clusters: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(clusters, dim)))
    return _unit(centres[rng.integers(0, clusters, rows)] + 0.4 * rng.normal(size=(rows, dim)) / np.sqrt(dim))


def _brute_force(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def _same_neighbours(found: nb.Neighbours, vectors: np.ndarray, k: int) -> None:
    indices, sims = _brute_force(vectors, k)
    assert found.indices.shape == found.similarities.shape == (len(vectors), k)
    assert found.indices.dtype == np.int64 and found.similarities.dtype == np.float32
    np.testing.assert_allclose(found.similarities, sims, atol=1e-5)  # most similar first
    assert (found.indices != np.arange(len(vectors))[:, None]).all()  # never itself
    # the same rows, up to the order of (near-)ties: each found row has the similarity its rank needs
    got = np.take_along_axis(vectors @ vectors.T, found.indices, axis=1)
    np.testing.assert_allclose(got, sims, atol=1e-5)
    assert (np.sort(found.indices, axis=1) == np.sort(indices, axis=1)).mean() > 0.99


@pytest.mark.parametrize("method", ["exact", "torch"])
def test_exact_methods_match_brute_force(method):
    vectors = _clustered(600)
    found = nb.nearest_neighbours(vectors, 7, method=method, device="cpu", block_rows=128)
    assert found.method == method and found.computed
    _same_neighbours(found, vectors, 7)


def test_hnsw_recall_and_sorted_rows_without_self():
    vectors = _clustered(3000, dim=32, clusters=40)
    truth, sims = _brute_force(vectors, 10)
    found = nb.nearest_neighbours(vectors, 10, method="hnsw", block_rows=1000)
    assert found.method == "hnsw"
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found.indices, truth, strict=True)])
    assert recall >= 0.95
    assert (found.indices != np.arange(len(vectors))[:, None]).all() and (found.indices >= 0).all()
    assert (np.diff(found.similarities, axis=1) <= 1e-6).all()
    got = np.take_along_axis(vectors @ vectors.T, found.indices, axis=1)
    np.testing.assert_allclose(found.similarities, got, atol=1e-5)  # the true similarities of the rows found


def test_rows_the_graph_search_misses_are_searched_exactly(monkeypatch):
    vectors = _clustered(200)
    original = nb.HNSWSearch.block

    def starved(self, start, stop):  # as if the graph had returned fewer than k + 1 rows
        self.index.search = lambda queries, k: (
            np.full((len(queries), k), -np.inf, np.float32),
            np.full((len(queries), k), -1),
        )
        return original(self, start, stop)

    monkeypatch.setattr(nb.HNSWSearch, "block", starved)
    _same_neighbours(nb.nearest_neighbours(vectors, 5, method="hnsw"), vectors, 5)


def test_duplicates_and_method_choice():
    base = _clustered(50)
    vectors = np.concatenate([base, base, base])  # every row has two exact copies
    found = nb.nearest_neighbours(vectors, 4, device="cpu")
    assert found.method == "exact"
    assert (found.indices != np.arange(150)[:, None]).all()
    np.testing.assert_allclose(found.similarities[:, :2], 1.0, atol=1e-5)
    assert {int(i) % 50 for i in found.indices[7, :2]} == {7}
    assert nb.choose_method(nb.EXACT_MAX_ROWS, "cpu") == "exact"
    assert nb.choose_method(nb.EXACT_MAX_ROWS + 1, "cpu") == "hnsw"
    assert nb.choose_method(10, "cuda") == "torch"


def test_k_zero_gives_empty_rows_and_writes_nothing(entry):
    found = nb.nearest_neighbours(_clustered(20), 0, device="cpu")
    assert found.indices.shape == found.similarities.shape == (20, 0) and found.method == "none"
    assert nb.entry_neighbours(entry, 0).indices.shape == (300, 0)
    assert not nb.neighbours_path(entry, 0).exists()


# --- stored beside a cache entry ------------------------------------------------------------------


class _Encoder:
    """A deterministic fake CLIP image tower: a fixed projection of the pixels, normalised."""

    cache_identity = {"model": "fake-knn"}
    embed_dim = 16

    def __init__(self):
        self.projection = torch.from_numpy(np.random.default_rng(3).normal(size=(48, 16)).astype(np.float32))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(pixels.flatten(1) @ self.projection, dim=-1)


def _transform(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


@pytest.fixture(scope="module")
def entry(tmp_path_factory) -> CacheEntry:
    rng = np.random.default_rng(1)
    centres = rng.integers(0, 256, size=(6, 4, 4, 3))
    labels = rng.integers(0, 6, size=300)
    images = np.clip(centres[labels] + rng.normal(0, 30, size=(300, 4, 4, 3)), 0, 255).astype(np.uint8)
    source = ArraySource("toy", "train", [str(c) for c in range(6)], images, labels)
    cache = tmp_path_factory.mktemp("knn-cache")
    return encode_split(source, _Encoder(), _transform, "raw-4px", cache, batch_size=64, chunk_size=128).entry


def _copy_entry(entry: CacheEntry, to: Path) -> CacheEntry:
    to.mkdir()
    for name in ("index.faiss", "manifest.csv", "meta.json"):
        (to / name).write_bytes((entry.path / name).read_bytes())
    return CacheEntry(to, dict(entry.meta))


def _count_blocks(monkeypatch, cls, fail_after: int | None = None) -> tuple[list[int], dict]:
    """Record the first row of each block ``cls`` searches; raise once ``state["fail_after"]`` are done."""
    calls: list[int] = []
    state = {"fail_after": fail_after}
    original = cls.block

    def block(self, start, stop):
        if state["fail_after"] is not None and len(calls) >= state["fail_after"]:
            raise KeyboardInterrupt("killed")
        calls.append(start)
        return original(self, start, stop)

    monkeypatch.setattr(cls, "block", block)
    return calls, state


def test_entry_neighbours_are_stored_then_reused(entry, tmp_path, monkeypatch):
    entry = _copy_entry(entry, tmp_path / "entry")
    store = EmbeddingStore(entry)
    calls, _ = _count_blocks(monkeypatch, nb.ExactSearch)
    first = nb.entry_neighbours(entry, 5, device="cpu", block_rows=64)
    assert first.computed and len(calls) == 5
    _same_neighbours(first, np.array(store.vectors), 5)
    file = nb.neighbours_path(entry, 5)
    assert file.name == "neighbours-k5.npz" and file.is_file()
    assert not file.with_name("neighbours-k5.parts").exists()
    with np.load(file) as stored:
        assert set(stored.files) == {"indices", "similarities", "meta"}
    second = nb.entry_neighbours(entry, 5, device="cpu", block_rows=64)
    assert not second.computed and len(calls) == 5  # read back, nothing searched
    np.testing.assert_array_equal(second.indices, first.indices)
    np.testing.assert_array_equal(second.similarities, first.similarities)
    # another K is another file; a rebuilt entry (new merge time) is recomputed
    nb.entry_neighbours(entry, 3, device="cpu", block_rows=64)
    assert len(calls) == 10 and nb.neighbours_path(entry, 3).is_file()
    rebuilt = CacheEntry(entry.path, {**entry.meta, "finished": "later"})
    assert nb.entry_neighbours(rebuilt, 5, device="cpu", block_rows=64).computed and len(calls) == 15
    assert nb.entry_neighbours(entry, 5, device="cpu", block_rows=64, rebuild=True).computed


@pytest.mark.parametrize("method", ["exact", "hnsw", "torch"])
def test_interrupted_computation_resumes_to_the_uninterrupted_result(entry, tmp_path, monkeypatch, method):
    cls = {"exact": nb.ExactSearch, "hnsw": nb.HNSWSearch, "torch": nb.TorchSearch}[method]
    whole = _copy_entry(entry, tmp_path / "whole")
    expected = nb.entry_neighbours(whole, 6, method=method, device="cpu", block_rows=64)
    broken = _copy_entry(entry, tmp_path / "broken")
    built: list[int] = []
    build = nb.build_hnsw
    monkeypatch.setattr(nb, "build_hnsw", lambda *a, **kw: built.append(1) or build(*a, **kw))
    calls, state = _count_blocks(monkeypatch, cls, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        nb.entry_neighbours(broken, 6, method=method, device="cpu", block_rows=64)
    parts = broken.path / "neighbours-k6.parts"
    assert sorted(p.name for p in parts.glob("block-*")) == [
        "block-000000000000-000000000064.npz",
        "block-000000000064-000000000128.npz",
    ]
    assert not nb.neighbours_path(broken, 6).exists()
    (parts / ".block-000000000128-000000000192.npz.abcd1234.tmp").write_bytes(b"half a block")  # a kill -9
    calls.clear()
    state["fail_after"] = None
    resumed = nb.entry_neighbours(broken, 6, method=method, device="cpu", block_rows=64)
    assert calls == [128, 192, 256]  # only the blocks not finished before
    np.testing.assert_array_equal(resumed.indices, expected.indices)
    np.testing.assert_array_equal(resumed.similarities, expected.similarities)
    assert not parts.exists()
    assert len(built) == (1 if method == "hnsw" else 0)  # the graph was kept, not built again


def test_array_neighbours_normalise_and_store_only_when_asked(tmp_path):
    raw = _clustered(200) * np.random.default_rng(2).uniform(0.5, 3.0, size=(200, 1)).astype(np.float32)
    plain = nb.array_neighbours(raw, 4, rows=200, device="cpu")
    _same_neighbours(plain, _unit(raw), 4)
    assert list(tmp_path.iterdir()) == []
    stored = nb.array_neighbours(raw, 4, store_dir=tmp_path / "knn", device="cpu")
    assert stored.computed and len(list((tmp_path / "knn").glob("knn-*-k4.npz"))) == 1
    again = nb.array_neighbours(raw.astype(np.float64), 4, store_dir=tmp_path / "knn", device="cpu")
    assert not again.computed
    np.testing.assert_array_equal(again.indices, stored.indices)
    changed = raw.copy()
    changed[0] += 1.0
    assert nb.array_neighbours(changed, 4, store_dir=tmp_path / "knn", device="cpu").computed


@pytest.mark.parametrize(
    ("call", "field", "words"),
    [
        (lambda x: nb.nearest_neighbours(x, -1), "knn", "0 (off) or more"),
        (lambda x: nb.nearest_neighbours(x, 30), "knn", "less than the number of images (30)"),
        (lambda x: nb.array_neighbours(x, 3, rows=31), "embeddings", "have 30 rows but the logits have 31"),
        (lambda x: nb.array_neighbours(np.where(np.arange(30)[:, None] == 4, np.nan, x), 3), "embeddings", "row 4"),
        (lambda x: nb.array_neighbours(np.where(np.arange(30)[:, None] == 2, 0, x), 3), "embeddings", "row 2 is all"),
        (lambda x: nb.array_neighbours(x[0], 3), "embeddings", "[N, D]"),
    ],
)
def test_bad_neighbour_input_is_an_option_error(call, field, words):
    with pytest.raises(OptionError) as err:
        call(_clustered(30))
    assert err.value.option == field and words in err.value.problem


# --- the refinement ----------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _refined_numpy(logits: np.ndarray, indices: np.ndarray, alpha: float, steps: int) -> np.ndarray:
    p = _softmax(logits.astype(np.float64))
    current = p
    for _ in range(steps):
        current = (1 - alpha) * p + alpha * current[indices].mean(axis=1)
    return current


@pytest.mark.parametrize(("alpha", "steps"), [(0.0, 1), (0.5, 1), (1.0, 1), (0.7, 3)])
def test_refinement_matches_numpy(alpha, steps):
    rng = np.random.default_rng(4)
    logits = (rng.normal(size=(53, 6)) * 3).astype(np.float32)
    indices = nb.nearest_neighbours(_clustered(53), 4, device="cpu").indices
    rows = KnnRefinedRows(logits, indices, alpha, steps, chunk_rows=10)
    assert rows.shape == (53, 6) and rows.ndim == 2
    expected = _refined_numpy(logits, indices, alpha, steps)
    got = torch.cat([rows[start : start + 7] for start in range(0, 53, 7)])
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    np.testing.assert_allclose(torch.softmax(got, dim=-1).numpy(), expected, atol=2e-3)  # float16 buffer
    np.testing.assert_allclose(torch.exp(got).sum(-1).numpy(), 1.0, atol=5e-4)  # log p' itself, not shifted


@pytest.mark.parametrize("mode", ["paper", "balance"])
def test_refined_rows_feed_the_corrections(mode):
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(80, 5)) * 2 + np.linspace(0, 2, 5)).astype(np.float32)
    indices = nb.nearest_neighbours(_clustered(80), 5, device="cpu").indices
    refined = _refined_numpy(logits, indices, 0.5, 1)
    want = debiased_pseudo_labels(np.log(refined).astype(np.float32), mode=mode, chunk_rows=16)
    got = debiased_pseudo_labels(KnnRefinedRows(logits, indices, 0.5, 1, chunk_rows=16), mode=mode, chunk_rows=16)
    assert (got.label == want.label).mean() >= 0.97  # float16 buffer: a near-tie may flip
    np.testing.assert_allclose(got.prior, want.prior, atol=2e-3)


def test_bad_refinement_options_are_option_errors():
    logits = np.zeros((10, 3), np.float32)
    indices = np.zeros((10, 2), np.int64) + 1
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(OptionError) as err:
            KnnRefinedRows(logits, indices, alpha)
        assert err.value.option == "knn_alpha"
    with pytest.raises(OptionError) as err:
        KnnRefinedRows(logits, indices, 0.5, 0)
    assert err.value.option == "knn_steps"
    with pytest.raises(OptionError) as err:
        KnnRefinedRows(logits, indices[:9], 0.5)
    assert err.value.option == "embeddings"


def test_a_second_process_computing_the_same_file_is_refused_but_a_finished_file_is_read(entry, tmp_path):
    entry = _copy_entry(entry, tmp_path / "entry")
    lock = entry.path / ".neighbours-k4.lock"
    handle = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another clipdebias process"):
            nb.entry_neighbours(entry, 4, device="cpu")
        fcntl.flock(handle, fcntl.LOCK_UN)
        nb.entry_neighbours(entry, 4, device="cpu")
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert not nb.entry_neighbours(entry, 4, device="cpu").computed  # reading needs no lock
    finally:
        os.close(handle)


# --- pseudolabel --knn: the command end to end ---------------------------------------------------------


def _teacher_files(tmp_path: Path, per_class: int = 8) -> tuple[Path, np.ndarray, np.ndarray]:
    """A folder of 3 classes, a teacher biased towards class 0 and embeddings clustered by class."""
    from fakes import make_image_folder

    folder = make_image_folder(tmp_path / "data", per_class=per_class, val_per_class=1)
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(3), per_class)
    logits = (rng.normal(0, 1, (len(truth), 3)) + 1.5 * np.eye(3)[truth]).astype(np.float32)
    logits[:, 0] += 1.2
    embeddings = (4 * np.eye(3)[truth] + rng.normal(0, 1, (len(truth), 3))).astype(np.float32)
    np.save(tmp_path / "teacher.npy", logits)
    np.save(tmp_path / "emb.npy", embeddings)
    return folder, logits, embeddings


def _run_pseudolabel(folder: Path, tmp_path: Path, out: str, *extra: str) -> int:
    from clipdebias.cli import main

    args = ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(folder), "--no-report"]
    return main([*args, "--logits", str(tmp_path / "teacher.npy"), "--out", str(tmp_path / out), *extra])


def test_pseudolabel_knn_refines_the_teachers_logits_then_corrects_and_reuses_the_neighbours(
    tmp_path, cache_root, capsys, monkeypatch
):
    import json

    import pandas as pd

    from clipdebias.pseudolabels.offline import KnnSettings, offline_pseudo_labels

    folder, logits, embeddings = _teacher_files(tmp_path)
    extra = ["--embeddings", str(tmp_path / "emb.npy"), "--knn", "3", "--knn-alpha", "0.6", "--knn-steps", "2"]
    assert _run_pseudolabel(folder, tmp_path, "a.csv", *extra, "--debias", "balance") == 0
    assert "neighbours found now (exact)" in capsys.readouterr().out
    table, sidecar = pd.read_csv(tmp_path / "a.csv"), json.loads((tmp_path / "a.json").read_text())
    found = nb.nearest_neighbours(_unit(embeddings), 3, method="exact")
    expected = offline_pseudo_labels(logits, found.indices, KnnSettings(3, 0.6, 2), mode="balance").pseudo
    assert table["pseudo_label"].tolist() == expected.label.tolist()
    # raw_* stay the teacher's own labels: neither refined nor corrected
    assert table["raw_pseudo_label"].tolist() == logits.argmax(1).tolist()
    plain = debiased_pseudo_labels(KnnRefinedRows(logits, found.indices, 0.6, 2), mode="none")
    assert not np.array_equal(plain.label, logits.argmax(1)), "the refinement changed some labels"
    assert sidecar["knn"] == {"k": 3, "alpha": 0.6, "steps": 2} and sidecar["debias"] == "balance"
    paper = debiased_pseudo_labels(logits)  # the paper's default on the teacher's own logits
    assert sidecar["paper_class_counts"] == np.bincount(paper.label, minlength=3).tolist()
    stored = list((cache_root / "neighbours").glob("knn-*-k3.npz"))
    assert len(stored) == 1
    before = stored[0].stat().st_mtime_ns

    def no_search(*args, **kwargs):
        raise AssertionError("the stored neighbours were searched again")

    monkeypatch.setattr(nb, "_run_blocks", no_search)
    assert _run_pseudolabel(folder, tmp_path, "b.csv", *extra, "--debias", "balance") == 0
    assert "neighbours read from the store" in capsys.readouterr().out
    assert stored[0].stat().st_mtime_ns == before
    assert pd.read_csv(tmp_path / "b.csv")["pseudo_label"].equals(table["pseudo_label"])


def test_pseudolabel_knn_over_the_clip_cache_is_stored_in_the_entry(tmp_path, tiny_clip, cache_root, monkeypatch):
    import json

    from fakes import make_image_folder

    from clipdebias.cli import main

    folder = make_image_folder(tmp_path / "data", per_class=5, val_per_class=1)
    args = ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(folder), "--model", tiny_clip]
    args += ["--pretrained", "none", "--templates", "simple", "--no-report", "--knn", "4", "--threads", "1"]
    threads = []
    monkeypatch.setattr(nb.faiss, "omp_set_num_threads", lambda n: threads.append(n))
    assert main([*args, "--out", str(tmp_path / "a.csv")]) == 0
    assert threads and threads[0] == 1, "--threads reaches faiss"
    stored = list(cache_root.rglob("neighbours-k4.npz"))
    assert len(stored) == 1
    before = stored[0].stat().st_mtime_ns
    assert main([*args, "--out", str(tmp_path / "b.csv"), "--debias", "none"]) == 0
    assert stored[0].stat().st_mtime_ns == before and len(list(cache_root.rglob("neighbours-k*.npz"))) == 1
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["knn"]["k"] == 4 and sidecar["debias"] == "none" and len(sidecar["paper_class_counts"]) == 3
    rebuild = ["encode", "--dataset", "imagefolder", "--data-root", str(folder), "--model", tiny_clip]
    assert main([*rebuild, "--pretrained", "none", "--threads", "1", "--rebuild"]) == 0
    assert not list(cache_root.rglob("neighbours-*")), "a rebuilt entry drops the neighbours of its old embeddings"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--knn", "-1", "--embeddings", "EMB"], "--knn must be 0 (off)"),
        (["--knn", "24", "--embeddings", "EMB"], "--knn must be less than the number of images (24)"),
        (["--knn", "3"], "--knn with --logits needs --embeddings"),
        (["--embeddings", "EMB"], "--embeddings is read by --knn only"),
        (["--knn", "3", "--embeddings", "SHORT"], "--embeddings have 20 rows but the logits have 24"),
        (["--knn", "3", "--embeddings", "NAN"], "--embeddings row 5 holds NaN"),
        (["--knn", "3", "--embeddings", "EMB", "--knn-alpha", "1.5"], "--knn-alpha must be in [0, 1]"),
        (["--knn", "3", "--embeddings", "EMB", "--knn-steps", "0"], "--knn-steps must be 1 or more"),
        (["--knn", "3", "--embeddings", "missing.npy"], "--embeddings missing.npy: no such file"),
        (["--knn-alpha", "0.3"], "--knn-alpha does not apply with --knn 0"),
        (["--knn", "0", "--knn-steps", "2"], "--knn-steps does not apply with --knn 0"),
    ],
)
def test_pseudolabel_bad_knn_input_is_one_line_and_writes_nothing(tmp_path, cache_root, capsys, extra, words):
    folder, _, embeddings = _teacher_files(tmp_path)
    np.save(tmp_path / "short.npy", embeddings[:20])
    broken = embeddings.copy()
    broken[5, 1] = np.nan
    np.save(tmp_path / "nan.npy", broken)
    files = {"EMB": "emb.npy", "SHORT": "short.npy", "NAN": "nan.npy"}
    extra = [str(tmp_path / files[item]) if item in files else item for item in extra]
    assert _run_pseudolabel(folder, tmp_path, "x.csv", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.json").exists()
    assert not (cache_root / "neighbours").exists() or not any((cache_root / "neighbours").iterdir())


def test_embeddings_without_logits_are_refused(tmp_path, tiny_clip, cache_root, capsys):
    from fakes import make_image_folder

    from clipdebias.cli import main

    folder = make_image_folder(tmp_path / "data", per_class=3, val_per_class=1)
    np.save(tmp_path / "emb.npy", np.ones((9, 4), np.float32))
    args = ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(folder), "--model", tiny_clip]
    args += ["--pretrained", "none", "--knn", "2", "--embeddings", str(tmp_path / "emb.npy")]
    assert main([*args, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --embeddings goes with --logits") and err.count("\n") == 1
