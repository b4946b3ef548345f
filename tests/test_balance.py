"""The balanced correction: offsets whose corrected marginal is the target prior."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import make_image_folder

from clipdebias.cli import main
from clipdebias.pseudolabels import balance
from clipdebias.pseudolabels.balance import (
    StartingPoint,
    balance_offsets,
    check_target_prior,
    corrected_pass,
    plain_and_corrected_pass,
    read_subsample,
    subsample_offsets,
)
from clipdebias.pseudolabels.labels import debiased_pseudo_labels
from clipdebias.utils.errors import OptionError, UserError


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
    result, _ = balance_offsets(logits, tolerance=1e-7, chunk_rows=128)
    assert result.converged
    np.testing.assert_allclose(_numpy_marginal(logits, result.offsets), np.full(5, 0.2), atol=1e-6)
    np.testing.assert_allclose(result.marginal, np.full(5, 0.2), atol=1e-6)


def test_balanced_marginal_follows_a_given_target_prior():
    logits, _ = _biased_logits(seed=1)
    target = np.array([4.0, 1.0, 1.0, 1.0, 3.0])  # counts are normalised
    result, _ = balance_offsets(logits, target, tolerance=1e-7)
    np.testing.assert_allclose(_numpy_marginal(logits, result.offsets), target / target.sum(), atol=1e-6)


def test_balanced_labels_match_a_numpy_reference_and_recover_accuracy_from_a_biased_teacher():
    logits, truth = _biased_logits(rows=2000, seed=2)
    result, _ = balance_offsets(logits, tolerance=1e-7)
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
    one, _ = balance_offsets(logits, tolerance=1e-8, chunk_rows=600)
    other, _ = balance_offsets(logits + 7.0, tolerance=1e-8, chunk_rows=64)
    np.testing.assert_allclose(one.offsets, other.offsets, atol=1e-4)
    assert abs(one.offsets.mean()) < 1e-9


def test_already_balanced_logits_stop_after_one_pass_with_zero_offsets():
    logits = np.tile(np.eye(4, dtype=np.float32) * 3.0, (25, 1))
    result, _ = balance_offsets(logits)
    assert result.converged and result.iterations == 1
    np.testing.assert_allclose(result.offsets, 0.0)


def test_confident_teachers_converge_in_a_few_passes_where_the_plain_fixed_point_needs_many():
    rng = np.random.default_rng(9)
    truth = rng.integers(0, 10, 3000)
    logits = rng.normal(0.0, 1.0, (3000, 10)).astype(np.float32)
    logits[np.arange(3000), truth] += 8.0  # near one-hot posteriors
    logits += np.linspace(0.0, 5.0, 10, dtype=np.float32)
    plain, plain_passes = np.zeros(10), 1
    while np.max(np.expm1(np.abs(gap := np.log(_numpy_marginal(logits, plain) / 0.1)))) > 1e-4:
        plain, plain_passes = plain + gap, plain_passes + 1
    result, _ = balance_offsets(logits)
    assert result.converged and result.iterations * 3 <= plain_passes


def test_an_iteration_cap_reports_that_the_tolerance_was_not_reached():
    logits, _ = _biased_logits(seed=4)
    result, _ = balance_offsets(logits, tolerance=1e-12, max_iterations=2)
    assert result.iterations == 2 and not result.converged


def test_torch_rows_are_read_like_numpy_rows_and_a_pass_labels_every_row():
    logits, _ = _biased_logits(seed=5)
    offsets = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    one, other = corrected_pass(torch.from_numpy(logits), offsets, 100, 2), corrected_pass(logits, offsets, 77, 2)
    np.testing.assert_allclose(one.first.numpy(), other.first.numpy(), rtol=1e-6)
    np.testing.assert_allclose(one.second.numpy(), other.second.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(one.label, other.label)
    np.testing.assert_array_equal(one.ranked_label, other.ranked_label)
    probs = torch.softmax(torch.from_numpy(logits) - offsets.float(), dim=-1)
    np.testing.assert_allclose(one.first.numpy(), probs.double().mean(dim=0).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(one.label, probs.argmax(dim=-1).numpy())


@pytest.mark.parametrize(
    ("values", "words"),
    [([0.5, 0.5], "has 2 values; there are 3 classes"), ([1.0, -1.0, 1.0], "class 1 has -1"),
     ([0.0, 0.0, 0.0], "must be > 0"), ([1.0, np.nan, 1.0], "not a finite number")],
)  # fmt: skip
def test_a_target_prior_of_the_wrong_length_or_with_non_positive_values_is_refused(values, words):
    with pytest.raises(OptionError) as info:
        check_target_prior(np.array(values), 3)
    assert info.value.option == "target_prior" and words in info.value.problem


# --- the balanced mode of debiased_pseudo_labels and of `clipdebias pseudolabel --debias` ----------------


def test_balance_mode_labels_are_argmax_of_the_logits_less_the_offsets_and_raw_labels_stay_exact():
    logits, _ = _biased_logits(rows=900, seed=6)
    result = debiased_pseudo_labels(logits, threshold=0.5, chunk_rows=100, mode="balance")
    assert result.mode == "balance" and result.balance is not None and result.balance.converged
    probs = torch.softmax(torch.from_numpy(logits) - torch.from_numpy(result.balance.offsets).float(), dim=-1)
    np.testing.assert_array_equal(result.label, probs.argmax(dim=-1).numpy())
    np.testing.assert_allclose(result.confidence, probs.max(dim=-1).values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(result.selected, result.confidence >= 0.5)
    np.testing.assert_array_equal(result.raw_label, logits.argmax(axis=1))  # from the float32 logits
    np.testing.assert_allclose(result.prior, debiased_pseudo_labels(logits).prior, rtol=1e-6)
    counts = np.bincount(result.label, minlength=5)
    assert counts.max() / counts.min() < np.bincount(result.raw_label, minlength=5).max() / 1


def test_none_mode_is_the_paper_mode_with_tau_0_bit_for_bit():
    logits, _ = _biased_logits(seed=7)
    none, plain = debiased_pseudo_labels(logits, mode="none"), debiased_pseudo_labels(logits, tau=0.0)
    np.testing.assert_array_equal(none.label, plain.label)
    np.testing.assert_array_equal(none.confidence, plain.confidence)
    assert none.tau == 0.0 and none.correction == "no correction"


def test_balance_passes_are_reported_as_progress_stages(monkeypatch):
    monkeypatch.setattr(balance, "SUBSAMPLE_VALUES", 500)  # a subsample of 100 of the 600 rows
    logits, _ = _biased_logits(seed=8)
    progress = RecordingProgress()
    result = debiased_pseudo_labels(logits, chunk_rows=200, mode="balance", progress=progress)
    stages = progress.stages
    assert stages[:2] == ["balancing a subsample of the rows", "class prior, plain labels and balancing (pass 1)"]
    assert stages[2:] == [f"balancing (pass {n})" for n in range(2, len(stages))] and len(stages) > 2
    assert result.balance.iterations == len(stages) - 1 and result.balance.subsample_rows == 100


class RecordingProgress:
    def __init__(self):
        self.stages = []

    def start(self, label, total, completed=0):
        self.stages.append(label)

    def advance(self, count):
        pass

    def note(self, text, warning=False):
        pass


@pytest.fixture
def teacher(tmp_path):
    """An image folder of 3 classes x 6 images and a teacher's logits biased hard to class 0."""
    folder = make_image_folder(tmp_path / "data", per_class=6, val_per_class=1)
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 6)
    logits = rng.normal(0.0, 0.5, (18, 3)).astype(np.float32)
    logits[np.arange(18), truth] += 2.0
    logits[:, 0] += 2.5
    np.save(tmp_path / "teacher.npy", logits)
    return folder, tmp_path / "teacher.npy", logits


def _pseudolabel(folder, logits, out, *extra):
    return main(
        ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(folder), "--logits", str(logits),
         "--out", str(out), "--no-report", *extra]
    )  # fmt: skip


def test_cli_debias_balance_writes_balanced_labels_and_records_the_fixed_point(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    folder, logits_file, logits = teacher
    assert _pseudolabel(folder, logits_file, tmp_path / "paper.csv") == 0
    assert _pseudolabel(folder, logits_file, tmp_path / "balance.csv", "--debias", "balance") == 0
    out = capsys.readouterr().out
    assert "balanced (uniform prior)" in out and "converged" in out
    paper, balance = pd.read_csv(tmp_path / "paper.csv"), pd.read_csv(tmp_path / "balance.csv")
    assert paper["raw_pseudo_label"].tolist() == balance["raw_pseudo_label"].tolist()
    sidecar = json.loads((tmp_path / "balance.json").read_text())
    assert sidecar["debias"] == "balance" and sidecar["balance"]["converged"]
    np.testing.assert_allclose(sidecar["balance"]["marginal"], [1 / 3] * 3, rtol=1e-3)
    assert sidecar["balance"]["target_prior"] is None
    assert json.loads((tmp_path / "paper.json").read_text())["debias"] == "paper"
    counts = np.bincount(balance["pseudo_label"], minlength=3)
    assert counts.min() >= 4 and np.bincount(paper["raw_pseudo_label"], minlength=3)[0] >= 12


def test_cli_target_prior_file_sets_the_marginal(teacher, tmp_path):
    folder, logits_file, _ = teacher
    (tmp_path / "prior.txt").write_text("# one count per class\n2\n1\n1\n")
    args = ["--debias", "balance", "--target-prior", str(tmp_path / "prior.txt")]
    assert _pseudolabel(folder, logits_file, tmp_path / "b.csv", *args) == 0
    sidecar = json.loads((tmp_path / "b.json").read_text())
    np.testing.assert_allclose(sidecar["balance"]["target_prior"], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(sidecar["balance"]["marginal"], [0.5, 0.25, 0.25], rtol=1e-3)


def test_cli_debias_none_equals_tau_0(teacher, tmp_path):
    folder, logits_file, _ = teacher
    assert _pseudolabel(folder, logits_file, tmp_path / "none.csv", "--debias", "none") == 0
    assert _pseudolabel(folder, logits_file, tmp_path / "zero.csv", "--tau", "0") == 0
    assert (tmp_path / "none.csv").read_bytes() == (tmp_path / "zero.csv").read_bytes()


@pytest.mark.parametrize(
    ("extra", "prior", "message"),
    [
        (["--debias", "balance", "--tau", "0.4"], None, "error: --tau applies to --debias paper only"),
        (["--debias", "none", "--tau", "0.4"], None, "error: --tau applies to --debias paper only"),
        (["--target-prior", "{prior}"], "1\n1\n1\n", "error: --target-prior applies to --debias balance only"),
        (["--debias", "balance", "--target-prior", "{prior}"], "1\n1\n", "has 2 values; there are 3 classes"),
        (["--debias", "balance", "--target-prior", "{prior}"], "1\n-1\n1\n", "class 1 has -1"),
        (["--debias", "balance", "--target-prior", "{prior}"], "0\n0\n0\n", "must be > 0 for every class"),
        (["--debias", "balance", "--target-prior", "{prior}"], "a\nb\nc\n", "not one number per line"),
        (["--debias", "balance", "--target-prior", "{missing}"], None, "no such file"),
        (["--debias", "sideways"], None, "error: unknown --debias 'sideways'; choose one of: paper, balance, none"),
    ],
)
def test_bad_debias_options_are_one_line_errors_and_write_nothing(teacher, tmp_path, capsys, extra, prior, message):
    folder, logits_file, _ = teacher
    if prior is not None:
        (tmp_path / "prior.txt").write_text(prior)
    extra = [x.format(prior=tmp_path / "prior.txt", missing=tmp_path / "missing.txt") for x in extra]
    assert _pseudolabel(folder, logits_file, tmp_path / "x.csv", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.json").exists()


def test_balance_mode_ranks_the_balanced_probabilities():
    logits, _ = _biased_logits(seed=10)
    result = debiased_pseudo_labels(logits, top_k=3, mode="balance")
    np.testing.assert_array_equal(result.ranked_label[:, 0], result.label)
    np.testing.assert_allclose(result.ranked_prob[:, 0], result.confidence)
    assert (np.diff(result.ranked_prob, axis=1) <= 0).all()


# --- the start from a subsample held in memory, polished by passes over all the rows -------------------


def test_a_subsample_estimate_polished_by_full_passes_reaches_the_tolerance_on_all_the_rows():
    logits, _ = _biased_logits(rows=6000, seed=11)
    estimate, sampled = subsample_offsets(logits, max_values=5000)  # 1000 of the 6000 rows, 1 in 6
    assert sampled == 1000 and estimate.converged  # on the subsample itself
    start = torch.from_numpy(estimate.offsets)
    assert np.abs(_numpy_marginal(logits, estimate.offsets) / 0.2 - 1).max() > 1e-2  # not on all the rows
    _, first = plain_and_corrected_pass(logits, start, 1000)
    result, final = balance_offsets(logits, chunk_rows=1000, start=StartingPoint(start, first))
    assert result.converged
    np.testing.assert_allclose(_numpy_marginal(logits, result.offsets), np.full(5, 0.2), rtol=1e-4)
    np.testing.assert_array_equal(final.label, (logits - result.offsets.astype(np.float32)).argmax(axis=1))
    from_zero, _ = balance_offsets(logits, chunk_rows=1000)
    np.testing.assert_allclose(result.offsets, from_zero.offsets, atol=1e-3)
    # 5 heavily overlapping classes: the per-class Newton steps gain a factor of about 3 a pass here, so
    # the start saves 2 of the 8 passes; at ImageNet's shape (docs/performance.md) it saves 1 of 4
    assert result.iterations <= from_zero.iterations - 2


def test_the_fused_first_pass_equals_a_plain_pass_and_a_corrected_pass():
    logits, _ = _biased_logits(seed=12)
    offsets = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    plain, corrected = plain_and_corrected_pass(logits, offsets, 70, top_k=2)
    at_zero, at_offsets = (
        corrected_pass(logits, torch.zeros(5, dtype=torch.float64), 70),
        corrected_pass(logits, offsets, 70, top_k=2),
    )
    assert torch.equal(plain.first, at_zero.first) and torch.equal(corrected.first, at_offsets.first)
    assert torch.equal(corrected.second, at_offsets.second)
    np.testing.assert_array_equal(plain.label, at_zero.label)
    np.testing.assert_array_equal(plain.confidence, at_zero.confidence)
    np.testing.assert_array_equal(corrected.ranked_label, at_offsets.ranked_label)
    np.testing.assert_array_equal(corrected.confidence, at_offsets.confidence)


def test_a_start_counts_its_pass_and_a_capped_run_records_the_marginal_it_really_reached():
    logits, _ = _biased_logits(rows=3000, seed=13)
    estimate, _ = subsample_offsets(logits, max_values=500)
    start = torch.from_numpy(estimate.offsets)
    _, first = plain_and_corrected_pass(logits, start, 512)
    result, _ = balance_offsets(logits, chunk_rows=512, max_iterations=1, start=StartingPoint(start, first))
    assert result.iterations == 1 and not result.converged
    np.testing.assert_allclose(result.marginal, _numpy_marginal(logits, result.offsets), rtol=1e-5)


def test_the_subsample_is_every_sth_row_and_all_rows_when_they_fit():
    logits, _ = _biased_logits(rows=103, seed=14)
    logits[7] = [0.0, -1e6, 3.0, 2.0, 1.0]  # far below the row's top: clipped, still 0 after exp

    def stored(rows: np.ndarray) -> np.ndarray:  # less each row's largest value, in float16
        return np.maximum(rows - rows.max(axis=1, keepdims=True), -60_000.0).astype(np.float16)

    np.testing.assert_array_equal(read_subsample(logits, 8, max_values=5 * 30).numpy(), stored(logits[::4]))
    everything = read_subsample(logits, 8, max_values=5 * 103)
    np.testing.assert_array_equal(everything.numpy(), stored(logits))
    probs = torch.softmax(everything.float(), dim=-1).numpy()
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), dim=-1).numpy(), rtol=3e-3, atol=1e-7)
    bad = logits.copy()
    bad[40, 1] = np.inf  # row 40 is in the subsample (every 4th)
    with pytest.raises(UserError, match="NaN or infinite"):
        read_subsample(bad, 8, max_values=5 * 30)
