"""The training loop's pieces: fallback rule, EMA teacher, one FixMatch/DebiasPL step, schedule,
epoch plans, augmentations, metrics and students."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from clipdebias.data.augment import GrayAugment, gray_to_tensor
from clipdebias.data.batches import LabeledBatch, UnlabeledBatch
from clipdebias.data.streams import epoch_plan
from clipdebias.debias import BalancingPrior, ClassPrior, adaptive_margin_loss, select_pseudo_labels
from clipdebias.metrics import PseudoLabelCounter, eval_result, imbalance_ratio, per_class_accuracy
from clipdebias.pseudolabels.balance import balance_offsets
from clipdebias.training.models import SmallCNN, build_model, load_init_weights
from clipdebias.training.optim import cosine_factor, make_sgd
from clipdebias.training.step import (
    EMATeacher,
    TrainConfig,
    apply_fallback,
    fixmatch_step,
    make_prior,
    warmup_momentum,
)
from clipdebias.utils.errors import UserError


def test_apply_fallback_truth_table():
    # Rows: (student mask, fallback confidence, fallback label) -> (target, mask)
    student_targets = torch.tensor([1, 1, 1, 1, 1, 1])
    student_mask = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    fallback_targets = torch.tensor([2, 2, 2, 2, 2, -1])
    fallback_conf = torch.tensor([0.9, 0.1, 0.3, 0.29, 0.9, 0.9])
    targets, mask = apply_fallback(student_targets, student_mask, fallback_targets, fallback_conf, threshold=0.3)
    # confident student keeps its label whatever the fallback says (rows 0, 1);
    # unsure student takes the fallback at >= threshold (row 2: exactly 0.3; row 4), not below (row 3);
    # a row without a fallback label (-1) is unchanged (row 5).
    assert targets.tolist() == [1, 1, 2, 1, 2, 1]
    assert mask.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_ema_teacher_averages_parameters_and_batchnorm_buffers():
    torch.manual_seed(0)
    student = SmallCNN(3)
    teacher = EMATeacher(student, momentum=0.75)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student.train()
    student(torch.rand(8, 1, 8, 8))  # moves BatchNorm running statistics
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    teacher.update(student)
    after, now = teacher.state_dict(), student.state_dict()
    for key in ("features.0.weight", "features.1.running_mean", "features.1.running_var", "fc.bias"):
        assert torch.allclose(after[key], 0.75 * before[key] + 0.25 * now[key], atol=1e-6), key
    assert int(after["features.1.num_batches_tracked"]) == 1
    assert not teacher.module.training
    assert all(not p.requires_grad for p in teacher.module.parameters())


def _reference_ema_update(teacher_state, student_state, momentum):
    """The teacher update of clipdebias before --teacher-bn / --ema-warmup (the reference code's rule,
    written with ``lerp_``): every floating-point entry averaged, integer buffers copied."""
    for name, value in teacher_state.items():
        if value.dtype.is_floating_point:
            value.lerp_(student_state[name].to(value.dtype), 1.0 - momentum)
        else:
            value.copy_(student_state[name])


def _student_moves(student, generator):
    """One fake training step: new BatchNorm statistics and new weights."""
    student.train()
    student(torch.rand(8, 1, 8, 8, generator=generator))
    with torch.no_grad():
        for param in student.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def test_ema_bn_without_warmup_is_the_reference_teacher_bit_for_bit():
    torch.manual_seed(0)
    student = SmallCNN(3)
    teacher = EMATeacher(student, momentum=0.99, bn="ema", warmup=False)
    reference = {k: v.clone() for k, v in teacher.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        _student_moves(student, generator)
        teacher.update(student)
        _reference_ema_update(reference, student.state_dict(), 0.99)
    assert teacher.updates == 20
    assert all(torch.equal(teacher.state_dict()[k], reference[k]) for k in reference)
    # The defaults of EMATeacher and TrainConfig are that teacher.
    assert (EMATeacher(student, 0.99).bn, EMATeacher(student, 0.99).warmup) == ("ema", False)
    config = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1)
    assert (config.teacher_bn, config.ema_warmup) == ("ema", False)


def test_copied_bn_buffers_equal_the_students_and_weights_stay_averaged():
    torch.manual_seed(0)
    student = SmallCNN(3)
    teacher = EMATeacher(student, momentum=0.75, bn="copy")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _student_moves(student, torch.Generator().manual_seed(2))
    teacher.update(student)
    after, now = teacher.state_dict(), student.state_dict()
    buffers = {name for name, _ in student.named_buffers()}
    assert {"features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"} <= buffers
    for name in buffers:
        assert torch.equal(after[name], now[name]), name
    for name, _ in student.named_parameters():
        assert torch.allclose(after[name], 0.75 * before[name] + 0.25 * now[name], atol=1e-6), name
        assert not torch.equal(after[name], now[name]), name


def test_ema_warmup_momentum_closed_form():
    # min(m, (1 + t) / (10 + t)): 0.1 at the first update, m once (1 + t) / (10 + t) passes it.
    assert warmup_momentum(0.99, 0) == pytest.approx(0.1)
    assert warmup_momentum(0.99, 10) == pytest.approx(11 / 20)
    assert warmup_momentum(0.9, 80) == pytest.approx(81 / 90)
    assert warmup_momentum(0.9, 81) == 0.9 and warmup_momentum(0.9, 10_000) == 0.9
    # A student that stays at s: the teacher's distance to it shrinks by the product of the momenta,
    # prod_{t<T} (1 + t) / (10 + t) = 9! T! / (T + 9)! = 1 / C(T + 9, 9).
    torch.manual_seed(0)
    student = nn.Linear(4, 3).double()
    teacher = EMATeacher(student, momentum=0.999, warmup=True)
    start = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    for steps in range(1, 8):
        teacher.update(student)
        assert teacher.updates == steps
        for name, value in teacher.state_dict().items():
            target = student.state_dict()[name]
            assert torch.allclose(value - target, (start[name] - target) / math.comb(steps + 9, 9), atol=1e-12), name


def test_ema_teacher_refuses_an_unknown_bn_mode():
    with pytest.raises(ValueError, match="recompute"):
        EMATeacher(SmallCNN(3), 0.99, bn="recompute")


class _Fixed(nn.Module):
    """A model whose logits are its (flattened) input times a learnable scale."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.flatten(1) * self.scale


def _batches(weak_views, strong_views, labels=None):
    count = weak_views[0].shape[0]
    labeled = LabeledBatch(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0]), torch.tensor([0]))
    unlabeled = UnlabeledBatch(
        tuple(weak_views),
        tuple(strong_views),
        torch.arange(count),
        labels if labels is not None else -torch.ones(count, dtype=torch.long),
    )
    return labeled, unlabeled


def test_step_selects_with_the_prior_before_its_update_and_margins_with_the_updated_prior():
    weak = torch.tensor([[2.0, 1.4, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 4.0], [2.5, 0.0, 0.0]])
    strong = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.1, 0.0], [0.0, 0.3, 1.0], [0.5, 0.0, 0.0]])
    config = TrainConfig(
        num_classes=3, epochs=1, steps_per_epoch=1, tau=1.0, threshold=0.57, prior_momentum=0.5, lambda_u=2.0
    )
    model = _Fixed()
    prior = ClassPrior(3, momentum=0.5)
    prior.probs = torch.tensor([0.6, 0.2, 0.2])
    q_before = prior.probs.clone()
    labeled, unlabeled = _batches([weak], [strong])

    out = fixmatch_step(model, EMATeacher(model, 0.9), prior, labeled, unlabeled, config)

    targets, _, mask = select_pseudo_labels(weak, q_before, 1.0, 0.57)
    q_after = 0.5 * q_before + 0.5 * torch.softmax(weak, dim=-1).mean(dim=0)
    assert torch.allclose(prior.probs, q_after / q_after.sum(), atol=1e-6)
    assert out.targets.tolist() == targets.tolist() and out.mask.tolist() == mask.tolist()
    # The debiased labels differ from what the updated prior would give: the order matters here.
    other_targets, _, other_mask = select_pseudo_labels(weak, prior.probs, 1.0, 0.57)
    assert (other_targets.tolist(), other_mask.tolist()) != (targets.tolist(), mask.tolist())
    expected_u = adaptive_margin_loss(strong, targets, prior.probs, 1.0, mask)
    assert out.loss_u.item() == pytest.approx(expected_u.item(), abs=1e-6)
    expected_x = nn.functional.cross_entropy(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0]))
    assert out.loss.item() == pytest.approx(expected_x.item() + 2.0 * expected_u.item(), abs=1e-6)


def test_step_without_debias_is_plain_fixmatch():
    weak = torch.tensor([[2.0, 1.4, 0.0], [0.0, 0.0, 4.0]])
    strong = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 1.0]])
    config = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, tau=0.0, threshold=0.5)
    assert not config.uses_prior
    model = _Fixed()
    out = fixmatch_step(model, EMATeacher(model, 0.9), None, *_batches([weak], [strong]), config)
    probs = torch.softmax(weak, dim=-1)
    confidence, targets = probs.max(dim=-1)
    mask = (confidence >= 0.5).float()
    expected = (nn.functional.cross_entropy(strong, targets, reduction="none") * mask).mean()
    assert out.loss_u.item() == pytest.approx(expected.item(), abs=1e-6)


def test_multiviews_average_every_pseudo_label_set_over_every_strong_view():
    w1 = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.9]])
    w2 = torch.tensor([[2.0, 2.2, 0.0], [0.0, 1.0, 3.0]])
    s1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    s2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    config = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, tau=0.5, threshold=0.5, prior_momentum=0.9)
    model = _Fixed()
    prior = ClassPrior(3, momentum=0.9)
    out = fixmatch_step(model, EMATeacher(model, 0.9), prior, *_batches([w1, w2], [s1, s2]), config)
    uniform = torch.full((3,), 1 / 3)
    mean = (w1 + w2) / 2
    sets = [select_pseudo_labels(z, uniform, 0.5, 0.5) for z in (mean, w1, w2)]
    expected = torch.stack(
        [adaptive_margin_loss(s, t, prior.probs, 0.5, m) for t, _, m in sets for s in (s1, s2)]
    ).mean()
    assert out.loss_u.item() == pytest.approx(expected.item(), abs=1e-6)
    assert out.targets.tolist() == sets[0][0].tolist()
    q = 0.9 * uniform + 0.1 * torch.softmax(mean, dim=-1).mean(dim=0)
    assert torch.allclose(prior.probs, q / q.sum(), atol=1e-6)


def test_fallback_enters_the_loss_by_dataset_index():
    from clipdebias.training.step import Fallback

    weak = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 0.1]])  # unsure: no row passes the threshold
    strong = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    config = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, tau=0.0, threshold=0.9)
    model = _Fixed()
    labeled, unlabeled = _batches([weak], [strong])
    unlabeled = UnlabeledBatch(unlabeled.weak, unlabeled.strong, torch.tensor([5, 7]), unlabeled.labels)
    fallback = Fallback(torch.tensor([-1, -1, -1, -1, -1, 1, -1, 0]), torch.tensor([0, 0, 0, 0, 0, 0.8, 0, 0.2]), 0.3)
    out = fixmatch_step(model, EMATeacher(model, 0.9), None, labeled, unlabeled, config, fallback)
    assert out.targets.tolist() == [1, 2] and out.mask.tolist() == [1.0, 0.0]
    expected = nn.functional.cross_entropy(strong[:1], torch.tensor([1])) / 2
    assert out.loss_u.item() == pytest.approx(expected.item(), abs=1e-6)


def test_cosine_factor_with_warmup():
    assert cosine_factor(0, 100, 10) == pytest.approx(0.1)
    assert cosine_factor(9, 100, 10) == pytest.approx(1.0)
    assert cosine_factor(10, 100, 10) == pytest.approx(1.0)
    assert cosine_factor(55, 100, 10) == pytest.approx(0.5)
    assert cosine_factor(100, 100, 10) == pytest.approx(0.0)
    assert cosine_factor(50, 100) == pytest.approx(0.5)


def test_sgd_skips_weight_decay_on_biases_and_norms():
    optimizer = make_sgd(SmallCNN(3), lr=0.1, weight_decay=1e-3, momentum=0.9)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-3 and all(p.ndim > 1 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert optimizer.defaults["nesterov"]


def test_epoch_plan_is_keyed_by_seed_stream_and_epoch():
    positions, seeds = epoch_plan(num_rows=7, batch_size=3, steps=5, seed=1, stream=2, epoch=3)
    assert positions.shape == (5, 3) and seeds.shape == (5, 3)
    flat = positions.reshape(-1)
    assert sorted(flat[:7].tolist()) == list(range(7))  # every row once before any repeats
    again = epoch_plan(7, 3, 5, 1, 2, 3)
    assert np.array_equal(again[0], positions) and np.array_equal(again[1], seeds)
    for other in (epoch_plan(7, 3, 5, 1, 2, 4), epoch_plan(7, 3, 5, 1, 1, 3), epoch_plan(7, 3, 5, 2, 2, 3)):
        assert not np.array_equal(other[1], seeds)


def test_gray_augment_views():
    images = gray_to_tensor(np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8), 16)
    assert images.shape == (6, 1, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0
    augment = GrayAugment()

    def views(seed):
        generator = torch.Generator().manual_seed(seed)
        return augment.weak(images, generator), augment.strong(images, generator)

    weak, strong = views(0)
    weak_again, strong_again = views(0)
    assert torch.equal(weak, weak_again) and torch.equal(strong, strong_again)
    assert not torch.equal(views(1)[1], strong)
    assert weak.shape == strong.shape == images.shape
    assert 0.0 <= strong.min() and strong.max() <= 1.0
    # A weak view is a whole-pixel shift: its values are the original ones, moved (or zero).
    centre = torch.zeros(1, 1, 16, 16)
    centre[0, 0, 8, 8] = 1.0
    shifted = augment.weak(centre, torch.Generator().manual_seed(3))
    assert shifted.sum().item() == pytest.approx(1.0) and shifted.max().item() == pytest.approx(1.0)
    # The strong view zeroes a cutout square on every image.
    assert all(
        (view == 0).sum() >= augment.cutout
        for view in augment.strong(torch.ones(4, 1, 16, 16), torch.Generator().manual_seed(0))
    )


def test_metrics():
    assert imbalance_ratio([50, 0, 10]) == 50.0
    assert imbalance_ratio([4, 2, 8]) == 4.0
    assert per_class_accuracy(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), 3) == [200 / 3, 100.0, None]
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    result = eval_result(logits, torch.tensor([1, 0]))
    assert (result.top1, result.top5, result.count) == (0.0, 50.0, 2)
    counter = PseudoLabelCounter(3)
    counter.add(torch.tensor([0, 1, 1, 2]), torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 2, 1, -1]))
    counter.add(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([0]))
    stats = counter.result()
    assert (stats.rows, stats.confident, stats.known, stats.correct) == (5, 4, 3, 2)
    assert stats.class_counts == [2, 1, 1] and stats.imbalance_ratio == 2.0
    assert stats.mask_rate == pytest.approx(0.8) and stats.accuracy == pytest.approx(200 / 3)


def test_models_and_init_weights(tmp_path):
    cnn = build_model("cnn", 4, in_channels=1, image_size=16)
    assert cnn(torch.rand(2, 1, 16, 16)).shape == (2, 4)
    resnet = build_model("resnet18", 5, in_channels=3, image_size=16)
    assert isinstance(resnet.maxpool, nn.Identity) and resnet.conv1.kernel_size == (3, 3)
    assert resnet.eval()(torch.rand(1, 3, 16, 16)).shape == (1, 5)
    assert build_model("resnet18", 5, image_size=224).conv1.kernel_size == (7, 7)
    with pytest.raises(UserError, match="unknown --arch"):
        build_model("vgg", 5)
    # Weights from a model with another number of classes: everything but the classifier loads.
    source = SmallCNN(7, in_channels=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pt")
    target = SmallCNN(4, in_channels=1)
    load_init_weights(target, tmp_path / "w.pt")
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    assert target.fc.weight.shape == (4, 128)
    torch.save(SmallCNN(4, in_channels=3).state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(UserError, match="other shapes"):
        load_init_weights(target, tmp_path / "rgb.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="is not a checkpoint; expected a state dict"):
        load_init_weights(target, tmp_path / "junk.pt")
    assert math.isfinite(float(target.fc.weight.detach().sum()))


def test_a_skipped_optimizer_step_advances_the_schedule_without_torchs_warning():
    """fp16's gradient scaler skips ``optimizer.step()`` on overflowing steps; the schedule still
    advances, and the user sees no warning about the order (torch's own call would print one)."""
    import warnings

    from clipdebias.training.loop import _step_schedule
    from clipdebias.training.optim import cosine_schedule

    def schedule():
        optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        return cosine_schedule(optimizer, total_steps=10, warmup_steps=0)

    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        schedule().step()
    assert any("lr_scheduler.step()" in str(w.message) for w in plain)  # what torch does by itself

    scheduler = schedule()
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        _step_schedule(scheduler)
    assert not ours
    assert scheduler.last_epoch == 1 and scheduler.get_last_lr()[0] < 1.0


def test_debias_none_is_the_same_step_as_tau_zero():
    weak = torch.tensor([[2.0, 1.4, 0.0], [0.0, 0.0, 4.0]])
    strong = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 1.0]])
    model = _Fixed()
    none = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, tau=0.4, debias="none", threshold=0.5)
    zero = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, tau=0.0, threshold=0.5)
    assert not none.uses_prior
    out_none = fixmatch_step(model, EMATeacher(model, 0.9), None, *_batches([weak], [strong]), none)
    out_zero = fixmatch_step(model, EMATeacher(model, 0.9), None, *_batches([weak], [strong]), zero)
    assert out_none.loss.item() == out_zero.loss.item()
    assert out_none.targets.tolist() == out_zero.targets.tolist()


def test_balanced_step_labels_with_the_offsets_before_their_step_and_uses_plain_cross_entropy():
    weak = torch.tensor([[2.0, 1.4, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 4.0]])
    strong = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.3, 1.0], [0.0, 0.3, 1.0]])
    config = TrainConfig(
        num_classes=3, epochs=1, steps_per_epoch=1, debias="balance", threshold=0.4, prior_momentum=0.5
    )
    assert config.uses_prior and config.loss_tau == 0.0
    prior = make_prior(config)
    assert isinstance(prior, BalancingPrior) and torch.equal(prior.offsets, torch.zeros(3))
    prior.offsets = torch.tensor([1.0, -0.5, -0.5])  # class 0 has been taking more than its share
    b, q = prior.offsets.clone(), prior.probs.clone()
    model = _Fixed()

    out = fixmatch_step(model, EMATeacher(model, 0.9), prior, *_batches([weak], [strong]), config)

    corrected = torch.softmax(weak - b, dim=-1)
    confidence, targets = corrected.max(dim=-1)
    mask = (confidence >= 0.4).float()
    assert out.targets.tolist() == targets.tolist() == [1, 1, 2]  # class 0's head start is taken away
    assert out.mask.tolist() == mask.tolist()
    expected_u = (nn.functional.cross_entropy(strong, targets, reduction="none") * mask).mean()
    assert out.loss_u.item() == pytest.approx(expected_u.item(), abs=1e-6)
    # One step of the offsets: b + (1 - m) (C * mean softmax(z - b) - 1), centred; the prior follows the raw teacher.
    step = b + 0.5 * (3 * corrected.mean(dim=0) - 1)
    assert torch.allclose(prior.offsets, step - step.mean(), atol=1e-6)
    q_after = 0.5 * q + 0.5 * torch.softmax(weak, dim=-1).mean(dim=0)
    assert torch.allclose(prior.probs, q_after / q_after.sum(), atol=1e-6)


def test_online_offsets_reach_the_offline_balance_fixed_point_on_a_fixed_teacher():
    """On a teacher that stops changing, the running offsets converge to the offsets of the offline
    ``pseudolabel --debias balance`` (mean_i softmax(z_i - b) = uniform), up to the batch noise."""
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 5, (4000,), generator=generator)
    bias = torch.tensor([2.0, 1.0, 0.0, -0.5, -1.0])  # a teacher that favours the first classes
    logits = 3.0 * nn.functional.one_hot(truth, 5) + bias + torch.randn(4000, 5, generator=generator)
    offline, _ = balance_offsets(logits.numpy(), tolerance=1e-7)
    prior = BalancingPrior(5, momentum=0.98)
    for _ in range(3000):
        rows = torch.randint(0, 4000, (256,), generator=generator)
        prior.update_offsets(torch.softmax(logits[rows] - prior.offsets, dim=-1))
    assert np.allclose(prior.offsets.numpy(), offline.offsets, atol=0.05)
    marginal = torch.softmax(logits - prior.offsets, dim=-1).mean(dim=0)
    assert torch.allclose(marginal, torch.full((5,), 0.2), atol=0.01)
    raw = torch.softmax(logits, dim=-1).mean(dim=0)
    assert raw.max() / raw.min() > 4  # the teacher's own marginal was far from uniform


def test_balancing_prior_state_round_trips_with_its_offsets_and_reads_a_state_without_them():
    prior = BalancingPrior(3, momentum=0.9)
    prior.update(torch.tensor([[0.7, 0.2, 0.1]]))
    prior.update_offsets(torch.tensor([[0.7, 0.2, 0.1]]))
    restored = BalancingPrior(3, momentum=0.9)
    restored.load_state_dict(prior.state_dict())
    assert torch.equal(restored.offsets, prior.offsets) and torch.equal(restored.probs, prior.probs)
    assert not torch.equal(restored.offsets, torch.zeros(3))
    plain = BalancingPrior(3, momentum=0.9)
    plain.load_state_dict(ClassPrior(3).state_dict())  # a ClassPrior's state: offsets start at 0
    assert torch.equal(plain.offsets, torch.zeros(3))
    with pytest.raises(ValueError, match="offsets"):
        plain.load_state_dict({**prior.state_dict(), "offsets": torch.zeros(4)})


def test_unknown_debias_mode_is_refused():
    with pytest.raises(ValueError, match="debias mode"):
        TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, debias="both")
