"""The balanced correction: offsets whose corrected marginal is the target prior."""

import numpy as np
import pytest
import torch

from clipdebias.pseudolabels.balance import balance_offsets, check_target_prior, corrected_marginal
from clipdebias.utils.errors import OptionError


def _biased_logits(rows: int = 600, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, rows)
    logits = rng.normal(0.0, 1.0, (rows, classes))
    logits[np.arange(rows), truth] += 2.0
    logits += np.linspace(0.0, 3.0, classes)  # a teacher that leans hard to the last classes
    return logits.astype(np.float32), truth


def _numpy_marginal(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - offsets
    shifted -= shifted.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return (probs / probs.sum(axis=1, keepdims=True)).mean(axis=0)


def test_balanced_marginal_equals_the_uniform_target_to_1e_6():
    logits, _ = _biased_logits()
    result = balance_offsets(logits, tolerance=1e-7, chunk_rows=128)
    assert result.converged
    np.testing.assert_allclose(_numpy_marginal(logits, result.offsets), np.full(5, 0.2), atol=1e-6)
    np.testing.assert_allclose(result.marginal, np.full(5, 0.2), atol=1e-6)


def test_balanced_marginal_follows_a_given_target_prior():
    logits, _ = _biased_logits(seed=1)
    target = np.array([4.0, 1.0, 1.0, 1.0, 3.0])  # counts are normalised
    result = balance_offsets(logits, target, tolerance=1e-7)
    np.testing.assert_allclose(_numpy_marginal(logits, result.offsets), target / target.sum(), atol=1e-6)


def test_balanced_labels_match_a_numpy_reference_and_recover_accuracy_from_a_biased_teacher():
    logits, truth = _biased_logits(rows=2000, seed=2)
    result = balance_offsets(logits, tolerance=1e-7)
    # numpy reference: the same fixed point written out in float64
    offsets = np.zeros(5)
    for _ in range(200):
        offsets += np.log(_numpy_marginal(logits, offsets) / 0.2)
    np.testing.assert_array_equal(
        (logits - result.offsets).argmax(axis=1), (logits - offsets.astype(np.float32)).argmax(axis=1)
    )
    raw = (logits.argmax(axis=1) == truth).mean()
    balanced = ((logits - result.offsets).argmax(axis=1) == truth).mean()
    assert balanced > raw + 0.1


def test_offsets_do_not_depend_on_a_constant_added_to_every_logit_nor_on_the_chunking():
    logits, _ = _biased_logits(seed=3)
    one = balance_offsets(logits, tolerance=1e-8, chunk_rows=600)
    other = balance_offsets(logits + 7.0, tolerance=1e-8, chunk_rows=64)
    np.testing.assert_allclose(one.offsets, other.offsets, atol=1e-4)
    assert abs(one.offsets.mean()) < 1e-9


def test_already_balanced_logits_stop_after_one_pass_with_zero_offsets():
    logits = np.tile(np.eye(4, dtype=np.float32) * 3.0, (25, 1))
    result = balance_offsets(logits)
    assert result.converged and result.iterations == 1
    np.testing.assert_allclose(result.offsets, 0.0)


def test_an_iteration_cap_reports_that_the_tolerance_was_not_reached():
    logits, _ = _biased_logits(seed=4)
    result = balance_offsets(logits, tolerance=1e-12, max_iterations=2)
    assert result.iterations == 2 and not result.converged


def test_torch_rows_are_read_like_numpy_rows():
    logits, _ = _biased_logits(seed=5)
    offsets = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    np.testing.assert_allclose(
        corrected_marginal(torch.from_numpy(logits), offsets, 100).numpy(),
        corrected_marginal(logits, offsets, 77).numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("values", "words"),
    [([0.5, 0.5], "has 2 values; there are 3 classes"), ([1.0, -1.0, 1.0], "class 1 has -1"),
     ([0.0, 0.0, 0.0], "must be > 0"), ([1.0, np.nan, 1.0], "not a finite number")],
)  # fmt: skip
def test_a_target_prior_of_the_wrong_length_or_with_non_positive_values_is_refused(values, words):
    with pytest.raises(OptionError) as info:
        check_target_prior(np.array(values), 3)
    assert info.value.option == "target_prior" and words in info.value.problem
