"""The debias core against hand-computed values, closed forms and the known bugs of other code."""

import math

import numpy as np
import pytest
import torch

from clipdebias.debias import (
    ClassPrior,
    adaptive_margin_loss,
    dataset_prior,
    debias_logits,
    select_pseudo_labels,
)


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def test_debias_logits_hand_computed_c3():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    prior = torch.tensor([0.5, 0.25, 0.25])
    out = debias_logits(logits, prior, tau=0.4)
    expected = [1.0 - 0.4 * math.log(0.5), 2.0 - 0.4 * math.log(0.25), 3.0 - 0.4 * math.log(0.25)]
    assert out.shape == (1, 3)
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)
    # Written out: 1.277259, 2.554518, 3.554518.
    assert out[0].tolist() == pytest.approx([1.277259, 2.554518, 3.554518], abs=1e-5)


def test_select_pseudo_labels_hand_computed_c3():
    logits = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    prior = torch.tensor([0.6, 0.3, 0.1])
    tau = 1.0
    targets, confidence, mask = select_pseudo_labels(logits, prior, tau, threshold=0.5)
    rows = [[1.0, 2.0, 3.0], [2.0, 0.0, 0.0], [0.0, 0.5, 0.0]]
    expected_probs = [_softmax([z - tau * math.log(q) for z, q in zip(row, [0.6, 0.3, 0.1])]) for row in rows]
    expected_targets = [max(range(3), key=p.__getitem__) for p in expected_probs]
    expected_conf = [max(p) for p in expected_probs]
    assert targets.dtype == torch.long
    assert targets.tolist() == expected_targets == [2, 0, 2]
    assert confidence.tolist() == pytest.approx(expected_conf, abs=1e-6)
    # Row 2 (0.0, 0.5, 0.0): plain argmax is class 1, the prior moves it to the rare class 2.
    assert torch.argmax(logits[2]).item() == 1
    assert mask.dtype == torch.float32
    assert mask.tolist() == [float(c >= 0.5) for c in expected_conf]


def test_threshold_is_inclusive():
    logits = torch.tensor([[0.0, 0.0]])
    _, confidence, mask = select_pseudo_labels(logits, torch.tensor([0.5, 0.5]), tau=0.4, threshold=0.5)
    assert confidence.item() == pytest.approx(0.5)
    assert mask.item() == 1.0


def test_uniform_prior_equals_plain_softmax():
    torch.manual_seed(0)
    logits = torch.randn(16, 7) * 3
    prior = ClassPrior(7).probs
    for tau in (0.0, 0.4, 1.0, 2.5):
        targets, confidence, _ = select_pseudo_labels(logits, prior, tau, threshold=0.9)
        plain = torch.softmax(logits, dim=-1)
        assert torch.equal(targets, plain.argmax(-1))
        assert torch.allclose(confidence, plain.max(-1).values, atol=1e-6)


def test_invariant_to_constant_shift_of_log_prior():
    torch.manual_seed(1)
    logits_w, logits_s = torch.randn(32, 5), torch.randn(32, 5)
    prior = torch.softmax(torch.randn(5), dim=0)
    scaled = prior * 0.01  # log prior shifted by log(0.01): not a distribution, same debiasing
    t1, c1, m1 = select_pseudo_labels(logits_w, prior, 0.7, 0.3)
    t2, c2, m2 = select_pseudo_labels(logits_w, scaled, 0.7, 0.3)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)
    assert torch.allclose(c1, c2, atol=1e-6)
    loss1 = adaptive_margin_loss(logits_s, t1, prior, 0.7, m1)
    loss2 = adaptive_margin_loss(logits_s, t1, scaled, 0.7, m1)
    assert loss1.item() == pytest.approx(loss2.item(), abs=1e-5)


def test_adaptive_margin_loss_hand_computed_and_masked_rows_in_denominator():
    logits_s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    targets = torch.tensor([0, 2, 1])
    prior = torch.tensor([0.5, 0.3, 0.2])
    mask = torch.tensor([1.0, 1.0, 0.0])
    tau = 0.4

    def ce(row, target):
        adjusted = [z + tau * math.log(q) for z, q in zip(row, [0.5, 0.3, 0.2])]
        return -math.log(_softmax(adjusted)[target])

    expected = (ce([2.0, 1.0, 0.0], 0) + ce([0.0, 0.0, 1.0], 2) + 0.0) / 3  # 3 rows, one masked
    loss = adaptive_margin_loss(logits_s, targets, prior, tau, mask)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_margin_loss_with_tau_zero_is_masked_cross_entropy_and_has_gradient():
    logits_s = torch.randn(8, 4, requires_grad=True)
    targets = torch.randint(0, 4, (8,))
    mask = torch.ones(8)
    loss = adaptive_margin_loss(logits_s, targets, torch.tensor([0.7, 0.1, 0.1, 0.1]), 0.0, mask)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits_s, targets).item(), abs=1e-6)
    loss.backward()
    assert logits_s.grad is not None and logits_s.grad.abs().sum() > 0


def test_prior_starts_uniform_float32():
    prior = ClassPrior(4, momentum=0.9)
    assert prior.probs.dtype == torch.float32
    assert prior.probs.shape == (4,)
    assert prior.probs.tolist() == pytest.approx([0.25] * 4)
    assert torch.allclose(prior.log_probs, torch.log(torch.full((4,), 0.25)))


@pytest.mark.parametrize("n", [1, 5, 40])
def test_ema_matches_closed_form_after_n_updates(n):
    m = 0.9
    prior = ClassPrior(3, momentum=m)
    batch = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])  # batch mean (0.6, 0.3, 0.1)
    for _ in range(n):
        prior.update(batch)
    q0 = torch.full((3,), 1 / 3)
    expected = m**n * q0 + (1 - m**n) * torch.tensor([0.6, 0.3, 0.1])
    assert torch.allclose(prior.probs, expected, atol=1e-6)
    assert prior.probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_masked_update_uses_selected_rows_only_and_keeps_shape():
    prior = ClassPrior(3, momentum=0.5)
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    prior.update(probs, mask)
    assert prior.probs.shape == (3,)  # the reference code's masked update turns q into [B, C]
    expected = 0.5 * torch.full((3,), 1 / 3) + 0.5 * torch.tensor([0.5, 0.0, 0.5])
    assert torch.allclose(prior.probs, expected, atol=1e-6)


def test_masked_update_with_nothing_selected_leaves_prior_unchanged():
    prior = ClassPrior(3, momentum=0.5)
    prior.update(torch.tensor([[0.9, 0.05, 0.05]]))
    before = prior.probs.clone()
    prior.update(torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), torch.zeros(2))
    assert torch.equal(prior.probs, before)
    prior.update(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([True]))  # bool masks work too
    assert prior.probs[2] > before[2]


def _usb_style_update(prior: torch.Tensor, probs: torch.Tensor, m: float) -> torch.Tensor:
    """USB's debiaspl: averaging over *all* elements, so the 'mean' is the scalar 1/C."""
    return m * prior + (1 - m) * probs.mean()


def test_prior_moves_towards_imbalanced_batches_unlike_usb():
    m = 0.9
    skewed = torch.tensor([[0.8, 0.1, 0.1]]).repeat(64, 1)
    prior = ClassPrior(3, momentum=m)
    usb = torch.full((3,), 1 / 3)
    for _ in range(50):
        prior.update(skewed)
        usb = _usb_style_update(usb, skewed, m)
    # USB's prior never moves: it stays uniform and DebiasPL silently equals FixMatch.
    assert torch.allclose(usb, torch.full((3,), 1 / 3))
    # Ours converges to the batch mean.
    assert prior.probs[0].item() > 0.75
    assert prior.probs.argmax().item() == 0
    # And the debiased pseudo-labels then favour the rare classes.
    logits = torch.tensor([[1.0, 0.5, 0.0]])
    plain_target = logits.argmax(-1).item()
    debiased_target, _, _ = select_pseudo_labels(logits, prior.probs, tau=1.0, threshold=0.0)
    assert plain_target == 0 and debiased_target.item() == 1


def test_state_dict_round_trip():
    prior = ClassPrior(5, momentum=0.95)
    prior.update(torch.softmax(torch.randn(10, 5), dim=-1))
    state = prior.state_dict()
    restored = ClassPrior(5, momentum=0.5)
    restored.load_state_dict(state)
    assert torch.equal(restored.probs, prior.probs)
    assert restored.momentum == 0.95
    batch = torch.softmax(torch.randn(10, 5), dim=-1)
    prior.update(batch)
    restored.update(batch)
    assert torch.equal(restored.probs, prior.probs)
    state["probs"][0] = 123.0  # the state is a copy, not a view of the live prior
    assert prior.probs[0] != 123.0
    with pytest.raises(ValueError):
        ClassPrior(4).load_state_dict(state)


def test_state_dict_survives_torch_save(tmp_path):
    prior = ClassPrior(3, momentum=0.9)
    prior.update(torch.tensor([[0.9, 0.05, 0.05]]))
    torch.save({"prior": prior.state_dict()}, tmp_path / "ckpt.pt")
    restored = ClassPrior(3)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt")["prior"])
    assert torch.equal(restored.probs, prior.probs)


def test_update_accepts_low_precision_and_stays_float32_summing_to_one():
    prior = ClassPrior(10, momentum=0.99)
    for _ in range(200):
        prior.update(torch.softmax(torch.randn(32, 10) * 4, dim=-1).to(torch.bfloat16))
        assert prior.probs.dtype == torch.float32
        assert prior.probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert prior.to("cpu") is prior


def test_prior_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ClassPrior(0)
    with pytest.raises(ValueError):
        ClassPrior(3, momentum=1.0)
    with pytest.raises(ValueError):
        ClassPrior(3).update(torch.ones(2, 4) / 4)
    with pytest.raises(ValueError):
        ClassPrior(3).update(torch.ones(2, 3) / 3, torch.ones(3))


def test_dataset_prior_is_mean_softmax_chunked_and_from_numpy():
    torch.manual_seed(2)
    logits = torch.randn(1003, 6) * 2
    expected = torch.softmax(logits.double(), dim=-1).mean(0)
    for chunk in (1, 7, 1000, 65536):
        got = dataset_prior(logits, chunk_size=chunk)
        assert got.dtype == torch.float32 and got.shape == (6,)
        assert torch.allclose(got.double(), expected, atol=1e-6)
    from_numpy = dataset_prior(logits.numpy(), chunk_size=100)
    assert torch.allclose(from_numpy.double(), expected, atol=1e-6)
    assert from_numpy.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_dataset_prior_reads_a_memmap(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((500, 4)).astype(np.float32)
    path = tmp_path / "logits.npy"
    np.save(path, data)
    mapped = np.load(path, mmap_mode="r")
    expected = torch.softmax(torch.from_numpy(data).double(), dim=-1).mean(0)
    assert torch.allclose(dataset_prior(mapped, chunk_size=64).double(), expected, atol=1e-6)


def test_offline_debiasing_flattens_pseudo_label_counts():
    """Step 4: with the dataset prior, a teacher biased toward class 0 is pulled back."""
    torch.manual_seed(3)
    true = torch.arange(300) % 3
    logits = torch.nn.functional.one_hot(true, 3).float() * 2.0 + torch.randn(300, 3) * 0.8
    logits[:, 0] += 1.5  # a systematic bias toward class 0
    raw_counts = torch.bincount(logits.argmax(-1), minlength=3)
    prior = dataset_prior(logits)
    targets, _, _ = select_pseudo_labels(logits, prior, tau=1.0, threshold=0.0)
    debiased_counts = torch.bincount(targets, minlength=3)
    assert raw_counts.max() / raw_counts.min() > debiased_counts.max() / debiased_counts.min()
    assert (targets == true).float().mean() > (logits.argmax(-1) == true).float().mean()


def test_dataset_prior_rejects_empty():
    with pytest.raises(ValueError):
        dataset_prior(torch.zeros(0, 3))
