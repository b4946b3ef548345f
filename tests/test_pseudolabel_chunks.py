"""The streaming passes' chunk reading (clipdebias.pseudolabels.rows): reused buffers that give the
same numbers as fresh tensors, sources that are never written, and the paper mode's two passes equal,
bit for bit, to the debias core's functions applied chunk by chunk."""

import numpy as np
import torch

from clipdebias.debias import dataset_prior, select_pseudo_labels
from clipdebias.pseudolabels.labels import debiased_pseudo_labels
from clipdebias.pseudolabels.rows import ChunkBuffers, ZeroShotLogits, is_finite, read_rows


def _logits(rows: int = 500, classes: int = 9, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (rows, classes)) + np.linspace(0.0, 2.0, classes)
    return logits.astype(np.float32)


def test_paper_mode_gives_the_debias_cores_numbers_bit_for_bit():
    logits = _logits()
    result = debiased_pseudo_labels(logits, tau=0.6, threshold=0.4, chunk_rows=64, top_k=3)
    prior = dataset_prior(logits, chunk_size=64)
    np.testing.assert_array_equal(result.prior, prior.numpy())
    for start in range(0, len(logits), 64):
        chunk = torch.from_numpy(logits[start : start + 64])
        part = slice(start, start + len(chunk))
        targets, confidence, mask = select_pseudo_labels(chunk, prior, 0.6, 0.4)
        raw_confidence, raw_label = torch.softmax(chunk, dim=-1).max(dim=-1)
        np.testing.assert_array_equal(result.label[part], targets.numpy())
        np.testing.assert_array_equal(result.confidence[part], confidence.numpy())
        np.testing.assert_array_equal(result.selected[part], mask.numpy() > 0)
        np.testing.assert_array_equal(result.raw_label[part], raw_label.numpy())
        np.testing.assert_array_equal(result.raw_confidence[part], raw_confidence.numpy())
        np.testing.assert_array_equal(result.ranked_label[:, 0], result.label)


def test_the_passes_never_write_into_a_tensor_or_array_source():
    logits = _logits(seed=1)
    tensor, array = torch.from_numpy(logits.copy()), logits.copy()
    for mode in ("paper", "balance"):
        debiased_pseudo_labels(tensor, chunk_rows=50, mode=mode)
        debiased_pseudo_labels(array, chunk_rows=50, mode=mode)
    np.testing.assert_array_equal(tensor.numpy(), logits)
    np.testing.assert_array_equal(array, logits)


def test_zero_shot_logits_read_into_a_buffer_equal_a_fresh_chunk_and_strided_rows_too():
    embeddings = np.random.default_rng(2).normal(size=(100, 16)).astype(np.float32)
    logits = ZeroShotLogits(embeddings, torch.randn(7, 16), scale=50.0)
    out = torch.full((32, 7), np.nan)
    for part in (slice(0, 32), slice(96, 128), slice(3, 100, 4)):
        chunk = read_rows(logits, part, out)
        assert chunk.data_ptr() == out.data_ptr()
        torch.testing.assert_close(chunk, logits[part], rtol=0, atol=0)


def test_float64_and_memory_mapped_sources_are_cast_as_a_fresh_chunk_would_be(tmp_path):
    wide = np.random.default_rng(3).normal(size=(40, 5))
    np.save(tmp_path / "l.npy", wide)
    buffers = ChunkBuffers(wide, 16)
    for source in (wide, np.load(tmp_path / "l.npy", mmap_mode="r"), torch.from_numpy(wide)):
        chunk = buffers.read(source, slice(32, 48))
        assert chunk.shape == (8, 5) and chunk.dtype == torch.float32
        np.testing.assert_array_equal(chunk.numpy(), wide[32:48].astype(np.float32))
    probs = buffers.softmax(buffers.read(wide, slice(0, 16)))
    np.testing.assert_array_equal(probs.numpy(), torch.softmax(torch.from_numpy(wide[:16]).float(), -1).numpy())


def test_is_finite_finds_nan_and_both_infinities():
    chunk = torch.zeros(4, 3)
    assert is_finite(chunk)
    for bad in (np.nan, np.inf, -np.inf):
        chunk[2, 1] = bad
        assert not is_finite(chunk)
