"""``clipdebias zeroshot``: the confident split, the text-initialised head, embedding-space views, the
fallback rule, every student end to end on generated images with a tiny random CLIP, and
``ssl --clip-pseudolabels`` fed by a CSV that ``clipdebias pseudolabel`` wrote."""

import csv
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import StopTraining, make_image_folder, stop_after_first_epoch
from PIL import Image

from clipdebias.cli import main
from clipdebias.clip.augmented_views import AugmentedView
from clipdebias.commands.zeroshot.head import ZeroShotArrays, fallback_table, zero_shot_eval_as_trained
from clipdebias.config import defaults
from clipdebias.data.batches import LabeledBatch, UnlabeledBatch
from clipdebias.data.streams import UNLABELED_STREAM, epoch_plan
from clipdebias.debias import ClassPrior, select_pseudo_labels
from clipdebias.pseudolabels.files import CSV_COLUMNS
from clipdebias.pseudolabels.labels import PseudoLabels
from clipdebias.pseudolabels.selection import Selection, select_confident
from clipdebias.training.embedding_streams import EmbeddingStream, FeatureNoise
from clipdebias.training.models import SmallCNN, build_head, load_init_weights, strip_wrapper_prefix
from clipdebias.training.step import EMATeacher, TrainConfig, fixmatch_step
from clipdebias.utils.errors import UserError

TINY_TRAINING = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--mu", "2"]
# Everything of metrics.json that does not depend on the clock.
STABLE = (
    "method", "top1", "top5", "per_class_top1", "zeroshot_top1", "zeroshot_debiased_top1", "pseudo_labels", "prior",
    "steps", "labeled_images", "train_pseudo_labels",
)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 6 train and 3 val images, plus one unreadable file in each split (train index 12,
    val index 3): every student must leave them out, not fail on them."""
    root = make_image_folder(tmp_path_factory.mktemp("data"), per_class=6, val_per_class=3, size=32)
    (root / "train" / "dog" / "img_999.png").write_bytes(b"broken")
    (root / "val" / "cat" / "img_999.png").write_bytes(b"broken")
    return root


READABLE = [i for i in range(19) if i != 12]  # train dataset indices with an embedding


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _args(folder, cache, tiny_clip, *extra):
    return [
        "zeroshot", "--dataset", "imagefolder", "--data-root", str(folder), "--model", tiny_clip,
        "--pretrained", "none",
        "--device", "cpu", "--templates", "simple", "--logit-scale", "100", "--cache-dir", str(cache), "--workers", "0",
        "--threads", "1",
        *TINY_TRAINING, "--no-report", *extra,
    ]  # fmt: skip


def _zeroshot(folder, cache, tiny_clip, out, *extra):
    threads = torch.get_num_threads()
    assert main([*_args(folder, cache, tiny_clip, *extra), "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # --threads 1 held for the run only
    return json.loads((out / "metrics.json").read_text())


def _index(path):
    with open(path, newline="") as handle:
        return [int(row["index"]) for row in csv.DictReader(handle)]


# --- pure pieces ------------------------------------------------------------------------------------


def test_select_confident_by_threshold_and_top_k_per_class():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 1])
    confidence = np.array([0.99, 0.5, 0.97, 0.96, 0.2, 0.1, 0.97, 0.95])
    confident, rest = select_confident(labels, confidence, threshold=0.96)
    assert confident.tolist() == [0, 2, 3, 6] and rest.tolist() == [1, 4, 5, 7]
    # Top 2 per class: class 0 -> 0 (0.99), then the tie 2/6 (0.97) goes to the earlier row; class 1 ->
    # 3, 7; class 2 has one row and gives it, however unsure. The threshold is ignored.
    confident, rest = select_confident(labels, confidence, threshold=0.96, topk_per_class=2)
    assert confident.tolist() == [0, 2, 3, 5, 7] and rest.tolist() == [1, 4, 6]
    confident, _ = select_confident(labels, confidence, threshold=0.0, topk_per_class=1)
    assert confident.tolist() == [0, 3, 5]


def _arrays(rows=60, classes=4, dim=8, seed=0, **extra):
    rng = np.random.default_rng(seed)
    normalise = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    classifier = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(classes, dim))).float(), dim=-1)
    return ZeroShotArrays(
        train_ids=np.arange(rows) * 2 + 1,  # dataset indices with gaps, as when images are unreadable
        train_embeddings=normalise(rng.normal(size=(rows, dim))),
        train_labels=rng.integers(0, classes, rows),
        classifier=classifier,
        logit_scale=30.0,
        eval_embeddings=normalise(rng.normal(size=(40, dim))),
        eval_labels=rng.integers(0, classes, 40),
        num_train_images=2 * rows + 1,
        **extra,
    )


def _paper_correction(prior, tau: float) -> PseudoLabels:
    """A paper-mode correction with the train prior ``prior`` (its per-row arrays are not read on val)."""
    empty = np.zeros(0, np.int64)
    return PseudoLabels(np.asarray(prior, np.float32), empty, empty, empty, empty, empty, tau, 0.95, mode="paper")


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_the_head_starts_at_zero_shot_accuracy(kind):
    arrays = _arrays()
    torch.manual_seed(0)
    head = build_head(kind, arrays.classifier, arrays.logit_scale)
    embeddings = torch.from_numpy(arrays.eval_embeddings)
    expected = arrays.logit_scale * embeddings @ arrays.classifier.T
    assert torch.allclose(head(embeddings), expected, atol=1e-4)
    plain, _ = zero_shot_eval_as_trained(arrays, _paper_correction(np.full(4, 0.25), tau=0.4))
    predicted = head(embeddings).argmax(-1).numpy()
    assert plain.top1 == pytest.approx(100.0 * np.mean(predicted == arrays.eval_labels))
    if kind == "mlp":
        assert sum(p.numel() for p in head.parameters()) > head.fc.weight.numel() + head.fc.bias.numel()


def test_head_learning_rate_is_relative_to_the_logit_scale():
    from clipdebias.commands.zeroshot.head import head_sgd

    arrays = _arrays()
    for kind, scale in (("linear", 20.0), ("mlp", 100.0)):
        head = build_head(kind, arrays.classifier, scale)
        optimizer = head_sgd(head, lr=0.05, weight_decay=1e-4, logit_scale=scale)
        steps = {
            id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]
        }
        assert steps[id(head.fc.weight)] == (pytest.approx(0.05 * scale), 1e-4)
        assert steps[id(head.fc.bias)] == (pytest.approx(0.05 * scale), 0.0)
        assert len(steps) == sum(1 for _ in head.parameters())
        if kind == "mlp":
            assert steps[id(head.adapter[0].weight)] == (pytest.approx(0.05 / scale), 1e-4)


def test_debiased_zero_shot_uses_the_train_prior():
    arrays = _arrays()
    prior = np.array([0.7, 0.1, 0.1, 0.1])
    plain, debiased = zero_shot_eval_as_trained(arrays, _paper_correction(prior, tau=1.0))
    logits = arrays.logit_scale * torch.from_numpy(arrays.eval_embeddings) @ arrays.classifier.T
    shifted = (logits - torch.log(torch.from_numpy(prior)).float()).argmax(-1).numpy()
    assert debiased.top1 == pytest.approx(100.0 * np.mean(shifted == arrays.eval_labels))
    assert zero_shot_eval_as_trained(arrays, _paper_correction(prior, tau=0.0))[1].top1 == plain.top1


def test_fallback_rule_truth_table():
    """CLIP's label replaces the student's pseudo-label exactly where the student's *debiased*
    confidence is under the threshold and CLIP's confidence is >= --clip-fallback."""
    arrays = _arrays(rows=5, classes=3)
    # Train row r has dataset index 2r + 1. CLIP: labels and confidences per train row.
    pseudo = PseudoLabels(
        prior=np.full(3, 1 / 3), label=np.array([2, 2, 2, 2, 2]), confidence=np.array([0.9, 0.3, 0.29, 0.9, 0.9]),
        raw_label=np.zeros(5, np.int64), raw_confidence=np.zeros(5), selected=np.zeros(5, bool),
        tau=0.4, threshold=0.95,
    )  # fmt: skip
    fallback = fallback_table(arrays, Selection(pseudo, np.array([], np.int64), np.arange(5)), threshold=0.3)
    assert fallback.targets.tolist() == [-1, 2, -1, 2, -1, 2, -1, 2, -1, 2, -1]
    # Student (teacher) weak logits: row 0 sure of class 0; rows 1-3 unsure; row 4 sure only before debiasing.
    weak = torch.tensor([[9.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.1, 0.0, 0.0], [0.1, 0.0, 0.0], [2.3, 0.0, 0.0]])
    prior = ClassPrior(3, momentum=0.5)
    prior.probs = torch.tensor([0.8, 0.1, 0.1])
    raw_conf = torch.softmax(weak, -1).max(-1).values
    _, debiased_conf, _ = select_pseudo_labels(weak, prior.probs, 1.0, 0.8)
    assert raw_conf[4] >= 0.8 > debiased_conf[4] and debiased_conf[0] >= 0.8
    model = torch.nn.Flatten()
    labeled = LabeledBatch(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0]), torch.tensor([0]))
    unlabeled = UnlabeledBatch((weak,), (weak,), torch.tensor([1, 3, 5, 7, 9]), torch.full((5,), -1))
    config = TrainConfig(num_classes=3, epochs=1, steps_per_epoch=1, tau=1.0, threshold=0.8)
    out = fixmatch_step(model, EMATeacher(model, 0.9), prior, labeled, unlabeled, config, fallback)
    # row 0: the student is sure -> its own label (0), whatever CLIP says;
    # row 1: unsure, CLIP at exactly 0.3 -> CLIP (2); row 2: unsure, CLIP 0.29 -> unchanged, mask 0;
    # row 3: unsure, CLIP 0.9 -> CLIP; row 4: sure before debiasing, unsure after -> CLIP.
    assert out.targets.tolist() == [0, 2, 1, 2, 2]  # row 2 keeps its own (debiased) label, masked
    assert out.mask.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_embedding_streams_follow_the_epoch_plan_and_views():
    rows, dim = 12, 6
    rng = np.random.default_rng(0)
    plain = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(rows, dim))).float(), dim=-1)
    views = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(2, rows, dim))).float(), dim=-1)
    ids = torch.arange(rows) + 100
    clip_labels = torch.arange(rows) % 3
    noise = FeatureNoise(dropout=0.2, noise=0.5)
    labeled = EmbeddingStream(plain, views, clip_labels, ids, torch.tensor([0, 1, 2, 3]), 3, 7, True, noise)
    batches = list(labeled.batches(epoch=0, steps=4))
    again = list(labeled.batches(epoch=0, steps=4))
    assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.indices, b.indices) for a, b in zip(batches, again))
    assert not all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, labeled.batches(epoch=1, steps=4)))
    for batch in batches:  # weak view of a confident row: its plain embedding or one of its views, no noise
        assert set(batch.indices.tolist()) <= {100, 101, 102, 103}
        assert torch.equal(batch.targets, clip_labels[batch.indices - 100])
        for row, vector in zip(batch.indices - 100, batch.inputs):
            assert any(torch.equal(vector, candidate) for candidate in (plain[row], views[0, row], views[1, row]))
    unlabeled = EmbeddingStream(plain, views, torch.full((rows,), -1), ids, torch.arange(4, rows), 4, 7, False, noise)
    for batch in unlabeled.batches(epoch=0, steps=3):
        (weak,), (strong,) = batch.weak, batch.strong
        assert torch.equal(weak, plain[batch.indices - 100])
        assert torch.allclose(strong.norm(dim=-1), torch.ones(4), atol=1e-5)
        assert not torch.allclose(strong, weak, atol=1e-3)
    no_views = EmbeddingStream(
        plain, views[:0], clip_labels, ids, torch.arange(rows), 4, 7, False, FeatureNoise(0.0, 0.0)
    )
    for batch in no_views.batches(epoch=0, steps=2):  # K = 0 and no noise: the strong view is the plain one
        assert torch.allclose(batch.strong[0], batch.weak[0], atol=1e-6)


def test_augmented_views_are_seeded_by_the_image_and_the_view_number():
    cfg = {"size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bicubic"}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8))
    other = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(40, 48, 3), dtype=np.uint8))
    first = AugmentedView(0, cfg)
    torch.manual_seed(123)
    view = first(image)
    torch.manual_seed(456)  # the global RNG plays no part, and is left alone
    state = torch.get_rng_state()
    assert torch.equal(first(image), view) and torch.equal(torch.get_rng_state(), state)
    assert view.shape == (3, 32, 32)
    assert not torch.equal(AugmentedView(1, cfg)(image), view)
    assert torch.equal(pickle.loads(pickle.dumps(first))(image), view)  # what a DataLoader worker does
    assert first.seed(image) != first.seed(other)


def test_init_weights_strip_a_moco_style_wrapper(tmp_path):
    source = SmallCNN(7, in_channels=1)
    state = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items()}
    state.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()})
    state["module.encoder_q.fc.0.weight"] = torch.zeros(3, 3)  # a projection head, not the classifier
    torch.save({"state_dict": state, "epoch": 800}, tmp_path / "moco.pth.tar")
    target = SmallCNN(4, in_channels=1)
    load_init_weights(target, tmp_path / "moco.pth.tar")
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    assert target.fc.weight.shape == (4, 128)
    plain = {"features.0.weight": torch.zeros(1)}
    assert strip_wrapper_prefix(plain, {"features.0.weight"}) is plain


# --- the command, end to end --------------------------------------------------------------------------


def test_head_run_writes_the_run_folder_and_follows_the_threshold(folder, cache, tiny_clip, tmp_path, capsys):
    out = tmp_path / "head"
    metrics = _zeroshot(folder, cache, tiny_clip, out, "--views", "1", "--select-threshold", "0.95", "--report")
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "labeled_index.csv", "unlabeled_index.csv", "metrics.jsonl", "metrics.json", "checkpoint.pt",
        "pseudolabels.csv", "pseudolabels.json", "report",
    }  # fmt: skip
    assert (out / "report" / "report.md").is_file()
    table = pd.read_csv(out / "pseudolabels.csv")
    assert list(table.columns) == list(CSV_COLUMNS) and table["index"].tolist() == READABLE
    assert _index(out / "labeled_index.csv") == table.loc[table["confidence"] >= 0.95, "index"].tolist()
    assert _index(out / "unlabeled_index.csv") == table.loc[table["confidence"] < 0.95, "index"].tolist()
    assert 0 < metrics["labeled_images"] < 18 and metrics["labeled_images"] + metrics["unlabeled_images"] == 18
    config = json.loads((out / "config.json").read_text())
    assert (
        config["command"] == "zeroshot"
        and config["student"] == "head"
        and config["classes"] == ["cat", "dog", "red fox"]
    )
    assert (config["tau"], config["threshold"], config["clip_fallback"], config["prior_momentum"]) == (
        0.4,
        0.8,
        0.3,
        0.99,
    )
    for key in ("zeroshot_top1", "zeroshot_debiased_top1", "student_top1", "top5", "per_class_top1", "pseudo_labels"):
        assert key in metrics
    assert metrics["student_top1"] == metrics["top1"] and len(metrics["per_class_top1"]) == 3
    assert metrics["eval_images"] == 9 and metrics["method"] == "debiaspl" and metrics["steps"] == 2
    assert set(metrics["pseudo_labels"]) == {"mask_rate", "accuracy", "class_counts", "imbalance_ratio"}
    train_pl = metrics["train_pseudo_labels"]
    assert train_pl["zeroshot_top1"] == pytest.approx(100 * (table["raw_pseudo_label"] == table["label"]).mean())
    assert train_pl["zeroshot_debiased_top1"] == pytest.approx(100 * (table["pseudo_label"] == table["label"]).mean())
    printed = capsys.readouterr()
    assert "CLIP zero-shot top-1 (val, 9 images)" in printed.out and "student top-1" in printed.out
    assert "RANDOM weights" in printed.err and "encoding images: train view 1/1" in printed.err

    # The folder is protected; --resume continues it (here: nothing left to train) with the same result.
    assert main([*_args(folder, cache, tiny_clip, "--views", "1"), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*_args(folder, cache, tiny_clip, "--views", "1"), "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1 and {k: resumed[k] for k in STABLE} == {k: metrics[k] for k in STABLE}


def test_an_interrupted_run_resumes_to_the_same_result(folder, cache, tiny_clip, tmp_path):
    from clipdebias.commands.zeroshot.config import resolve_zeroshot_config
    from clipdebias.commands.zeroshot.run import run_zeroshot

    extra = ["--views", "1", "--select-threshold", "0.9", "--epochs", "3", "--steps-per-epoch", "3"]
    full = _zeroshot(folder, cache, tiny_clip, tmp_path / "full", *extra)

    config = resolve_zeroshot_config(
        "imagefolder", tmp_path / "cut", data_root=folder, model=tiny_clip, pretrained="none", device="cpu",
        templates="simple", logit_scale=100.0, cache_dir=cache, workers=0, views=1, select_threshold=0.9, epochs=3,
        steps_per_epoch=3, batch_size=2, mu=2, report=False, threads=1,
    )  # fmt: skip
    with pytest.raises(StopTraining):
        run_zeroshot(config, train_progress=stop_after_first_epoch)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = _zeroshot(folder, cache, tiny_clip, tmp_path / "cut", *extra, "--resume")
    assert resumed["resumed_from_epoch"] == 1
    assert {k: resumed[k] for k in STABLE} == {k: full[k] for k in STABLE}


def test_a_run_started_before_the_precision_renames_resumes(folder, cache, tiny_clip, tmp_path, capsys):
    """A config.json of 0.1.0 says ``precision`` (then: the encoding's) and ``amp`` (None / True /
    False); --resume compares it in those names, and refuses a real change of either."""
    out = tmp_path / "old"
    metrics = _zeroshot(folder, cache, tiny_clip, out, "--views", "1")
    saved = json.loads((out / "config.json").read_text())
    assert (saved["precision"], saved["encode_precision"]) == ("auto", "fp32") and "amp" not in saved
    old = {**saved, "precision": saved["encode_precision"], "amp": None}
    del old["encode_precision"]
    (out / "config.json").write_text(json.dumps(old))
    resumed = _zeroshot(folder, cache, tiny_clip, out, "--views", "1", "--resume")
    assert resumed["resumed_from_epoch"] == 1 and {k: resumed[k] for k in STABLE} == {k: metrics[k] for k in STABLE}
    assert "encode_precision" in json.loads((out / "config.json").read_text())  # rewritten in today's names

    (out / "config.json").write_text(json.dumps(old))
    capsys.readouterr()
    for changed, key in ((["--precision", "bf16"], "amp"), (["--encode-precision", "bf16"], "precision")):
        assert main([*_args(folder, cache, tiny_clip, "--views", "1", *changed), "--out", str(out), "--resume"]) == 2
        assert f"it was started with other options ({key})" in capsys.readouterr().err


def test_top_k_per_class_split_and_a_student_that_starts_at_zero_shot(folder, cache, tiny_clip, tmp_path):
    out = tmp_path / "topk"
    # A learning rate too small to move anything: the student is still CLIP zero-shot, end to end.
    metrics = _zeroshot(folder, cache, tiny_clip, out, "--views", "0", "--select-topk-per-class", "2", "--lr", "1e-12")
    assert (
        metrics["top1"] == metrics["zeroshot_top1"] and metrics["per_class_top1"] == metrics["zeroshot_per_class_top1"]
    )
    table = pd.read_csv(out / "pseudolabels.csv")
    expected = (
        table.sort_values(["pseudo_label", "confidence", "index"], ascending=[True, False, True])
        .groupby("pseudo_label")
        .head(2)["index"]
    )
    assert _index(out / "labeled_index.csv") == sorted(expected.tolist())
    # `selected` marks the rows trained as confident, here the top 2 per class whatever their confidence
    assert sorted(table["index"][table["selected"]].tolist()) == sorted(expected.tolist())
    sidecar = json.loads((out / "pseudolabels.json").read_text())
    assert sidecar["num_selected"] == len(expected) and sidecar["select_topk_per_class"] == 2
    assert metrics["labeled_images"] == 2 * table["pseudo_label"].nunique()
    assert metrics["train_pseudo_labels"]["confident_class_counts"] == [
        2 if c in set(table["pseudo_label"]) else 0 for c in range(3)
    ]


def test_no_debias_equals_tau_zero(folder, cache, tiny_clip, tmp_path):
    common = ("--views", "0", "--select-threshold", "0.9")
    a = _zeroshot(folder, cache, tiny_clip, tmp_path / "a", *common, "--no-debias")
    b = _zeroshot(folder, cache, tiny_clip, tmp_path / "b", *common, "--tau", "0")
    assert a["method"] == b["method"] == "fixmatch" and a["prior"] is None
    assert {k: a[k] for k in STABLE} == {k: b[k] for k in STABLE}
    csv_a, csv_b = (pd.read_csv(tmp_path / name / "pseudolabels.csv") for name in ("a", "b"))
    assert csv_a.equals(csv_b) and csv_a["pseudo_label"].equals(csv_a["raw_pseudo_label"])
    assert a["zeroshot_debiased_top1"] == a["zeroshot_top1"]
    c = _zeroshot(folder, cache, tiny_clip, tmp_path / "c", *common)  # the same run, debiased
    csv_c = pd.read_csv(tmp_path / "c" / "pseudolabels.csv")
    assert c["method"] == "debiaspl" and c["prior"] is not None
    assert not np.allclose(csv_c["confidence"], csv_c["raw_confidence"])


def test_clip_student_fine_tunes_the_image_tower(folder, cache, tiny_clip, tmp_path):
    out = tmp_path / "clip"
    extra = ["--student", "clip", "--select-threshold", "0.9", "--precision", "bf16"]
    metrics = _zeroshot(folder, cache, tiny_clip, out, *extra)
    assert metrics["student"] == "clip" and metrics["eval_images"] == 9 and metrics["steps"] == 2
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    # The tower ran under bf16 autocast (--precision bf16, here on the CPU), its weights and the head stay float32.
    assert (
        any(key.startswith("visual.module.") for key in checkpoint["model"]) and "head.fc.weight" in checkpoint["model"]
    )
    assert all(value.dtype == torch.float32 for value in checkpoint["model"].values() if value.is_floating_point())
    config = json.loads((out / "config.json").read_text())
    assert config["multiviews"] is False and config["lr"] == 1e-5 and config["precision"] == "bf16"


def test_resnet50_student_from_moco_style_weights(folder, cache, tiny_clip, tmp_path):
    from clipdebias.training.models import build_model

    source = build_model("resnet50", 10, 3, image_size=8)
    weights = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": weights}, tmp_path / "moco.pth")
    out = tmp_path / "resnet"
    metrics = _zeroshot(
        folder, cache, tiny_clip, out, "--student", "resnet50", "--image-size", "8", "--single-view",
        "--warmup-epochs", "0",
        "--batch-size", "2", "--mu", "1", "--steps-per-epoch", "1",
        "--select-threshold", "0.9", "--init-weights", str(tmp_path / "moco.pth"),
    )  # fmt: skip
    assert metrics["student"] == "resnet50" and metrics["steps"] == 1 and len(metrics["per_class_top1"]) == 3
    assert json.loads((out / "config.json").read_text())["lambda_u"] == 10.0  # the reference recipe
    # The network started from the MoCo-style weights: the EMA teacher (momentum 0.999) is still next to
    # them, far closer than another random initialisation is.
    teacher = torch.load(out / "checkpoint.pt", weights_only=False)["teacher"]
    key = "layer1.0.conv1.weight"
    other = build_model("resnet50", 3, 3, image_size=8).state_dict()[key]
    moved = (teacher[key] - source.state_dict()[key]).abs().mean()
    assert moved < 0.1 * (other - source.state_dict()[key]).abs().mean()
    assert teacher["fc.weight"].shape == (3, 2048)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--student", "clip", "--views", "1"], "--views applies to --student head only"),
        (["--student", "vit"], "unknown --student 'vit'"),
        (["--no-debias", "--tau", "0.4"], "--no-debias"),
        (["--head", "deep"], "unknown --head 'deep'"),
        (["--init-weights", "w.pt"], "--init-weights applies to --student resnet50"),
        (["--select-threshold", "1.5"], "--select-threshold"),
        (["--logit-scale", "0.01", "--select-threshold", "0.99"], "no train image reached --select-threshold 0.99"),
    ],
)
def test_user_errors_are_one_line(folder, cache, tiny_clip, tmp_path, capsys, extra, message):
    assert main([*_args(folder, cache, tiny_clip, *extra), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the random-weights warning may come first
    assert last.startswith("error: ") and message in last and "Traceback" not in err


def test_grayscale_data_needs_the_head_student(tiny_clip, tmp_path, capsys):
    args = ["zeroshot", "--dataset", "digits", "--model", tiny_clip, "--pretrained", "none", "--device", "cpu"]
    assert main([*args, "--student", "clip", "--out", str(tmp_path / "run")]) == 2
    assert "needs RGB images" in capsys.readouterr().err


# --- ssl --clip-pseudolabels with a CSV written by `clipdebias pseudolabel` ----------------------------


def test_ssl_takes_the_csv_pseudolabel_writes_as_fallback_labels(cache, tiny_clip, tmp_path):
    folder = make_image_folder(tmp_path / "data", per_class=6, val_per_class=3, size=32)  # ssl reads every image
    labels_csv = tmp_path / "clip.csv"
    assert main([
        "pseudolabel", "--dataset", "imagefolder", "--data-root", str(folder), "--model", tiny_clip, "--pretrained",
        "none", "--device", "cpu", "--templates", "simple", "--logit-scale", "100", "--cache-dir", str(cache),
        "--out", str(labels_csv),
    ]) == 0  # fmt: skip
    out = tmp_path / "ssl"
    # No student pseudo-label reaches --threshold 1.0 and every CLIP confidence is >= 0: each unlabeled
    # row the loop draws trains on CLIP's (debiased) label from the CSV, found by its dataset index.
    assert main([
        "ssl", "--dataset", "imagefolder", "--data-root", str(folder), "--labels", "1-per-class", "--arch", "cnn",
        "--image-size", "16", "--workers", "0", "--device", "cpu", "--epochs", "1", "--steps-per-epoch", "3",
        "--batch-size", "2", "--mu", "2", "--threshold", "1.0", "--clip-fallback", "0", "--seed", "4",
        "--clip-pseudolabels", str(labels_csv), "--out", str(out),
    ]) == 0  # fmt: skip
    table = pd.read_csv(labels_csv).set_index("index")
    unlabeled = np.asarray(_index(out / "unlabeled_index.csv"))
    positions, _ = epoch_plan(len(unlabeled), 4, 3, seed=4, stream=UNLABELED_STREAM, epoch=0)
    drawn = unlabeled[positions.reshape(-1)]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["mask_rate"] == 1.0
    assert record["pseudo_label_counts"] == np.bincount(table.loc[drawn, "pseudo_label"], minlength=3).tolist()
    assert record["pseudo_label_accuracy"] == pytest.approx(
        100 * np.mean(table.loc[drawn, "pseudo_label"].to_numpy() == table.loc[drawn, "label"].to_numpy())
    )


def test_library_errors_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset"):
        from clipdebias.commands.zeroshot.config import resolve_zeroshot_config

        resolve_zeroshot_config("mnist", "out")


def test_a_bad_init_weights_file_fails_before_encoding_and_leaves_no_run(folder, cache, tiny_clip, tmp_path, capsys):
    out, weights = tmp_path / "run", tmp_path / "weights.pth"
    weights.write_bytes(b"not a state dict")
    resnet = ["--student", "resnet50", "--image-size", "8", "--single-view", "--warmup-epochs", "0", "--mu", "1",
              "--select-threshold", "0.9"]  # fmt: skip
    assert main([*_args(folder, cache, tiny_clip, *resnet, "--init-weights", str(weights)), "--out", str(out)]) == 2
    assert "--init-weights" in capsys.readouterr().err
    assert not (out / "config.json").exists() and not (out / "pseudolabels.csv").exists()
    _zeroshot(folder, cache, tiny_clip, out, *resnet)  # the corrected command is not "already holds a run"


# --- --debias and --knn -------------------------------------------------------------------------------


def test_balanced_zero_shot_on_val_applies_the_train_offsets():
    from clipdebias.commands.zeroshot.head import pseudo_label_train_rows, zero_shot_eval_as_trained

    arrays = _arrays()
    selection = pseudo_label_train_rows(arrays, 0.0, 0.0, 3, debias="balance")
    offsets = selection.pseudo.balance.offsets
    plain, corrected = zero_shot_eval_as_trained(arrays, selection.pseudo)
    logits = arrays.logit_scale * torch.from_numpy(arrays.eval_embeddings) @ arrays.classifier.T
    shifted = (logits - torch.from_numpy(offsets).float()).argmax(-1).numpy()
    assert corrected.top1 == pytest.approx(100.0 * np.mean(shifted == arrays.eval_labels))
    assert plain.top1 == zero_shot_eval_as_trained(arrays, _paper_correction(selection.pseudo.prior, tau=0.0))[0].top1
    none = pseudo_label_train_rows(arrays, 0.0, 0.0, 3, debias="none")
    assert zero_shot_eval_as_trained(arrays, none.pseudo)[1].top1 == plain.top1


def test_with_knn_val_is_corrected_as_the_unrefined_train_teacher_was():
    """Val rows have no neighbours, so they get the offsets of the unrefined train logits (those of the
    run without kNN), not offsets fitted to the refined train probabilities."""
    from clipdebias.commands.zeroshot.head import pseudo_label_train_rows, zero_shot_eval_as_trained
    from clipdebias.pseudolabels.offline import KnnSettings

    arrays = _arrays()
    rows = arrays.train_embeddings.shape[0]
    neighbours = np.stack([(np.arange(rows) + shift) % rows for shift in (1, 2)], axis=1)
    plain = pseudo_label_train_rows(arrays, 0.0, 0.0, 3, debias="balance")
    refined = pseudo_label_train_rows(
        arrays, 0.0, 0.0, 3, debias="balance", knn=KnnSettings(2, 0.9, 1), neighbours=neighbours
    )
    assert not np.allclose(refined.pseudo.balance.offsets, plain.pseudo.balance.offsets)
    np.testing.assert_allclose(refined.eval_correction.balance.offsets, plain.pseudo.balance.offsets, atol=1e-6)
    corrected = zero_shot_eval_as_trained(arrays, refined.eval_correction)[1]
    assert corrected.top1 == zero_shot_eval_as_trained(arrays, plain.pseudo)[1].top1


def test_debias_balance_with_knn_end_to_end(folder, cache, tiny_clip, tmp_path, monkeypatch):
    from clipdebias.commands.zeroshot import head as zeroshot_head_module

    seen = []
    real = zeroshot_head_module.offline_pseudo_labels

    def spy(logits, neighbours, knn, **kwargs):
        seen.append((None if neighbours is None else neighbours.shape, knn, kwargs["mode"]))
        return real(logits, neighbours, knn, **kwargs)

    monkeypatch.setattr(zeroshot_head_module, "offline_pseudo_labels", spy)
    out = tmp_path / "balance"
    extra = ("--views", "0", "--select-threshold", "0.9", "--debias", "balance", "--knn", "3", "--knn-alpha", "0.3")
    metrics = _zeroshot(folder, cache, tiny_clip, out, *extra)
    assert seen == [((len(READABLE), 3), seen[0][1], "balance")] and seen[0][1].alpha == 0.3
    assert metrics["debias"] == "balance" and metrics["method"] == "balanced"
    assert metrics["knn"] == {"k": 3, "alpha": 0.3, "steps": defaults.KNN_STEPS}
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["train_config"]["debias"] == "balance"  # the loop's online correction
    sidecar = json.loads((out / "pseudolabels.json").read_text())
    assert sidecar["debias"] == "balance" and sidecar["knn"]["k"] == 3 and "paper_class_counts" in sidecar
    table = pd.read_csv(out / "pseudolabels.csv")
    assert metrics["train_pseudo_labels"]["zeroshot_debiased_top1"] == pytest.approx(
        100 * (table["pseudo_label"] == table["label"]).mean()
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["debias"], config["knn"], config["tau"]) == ("balance", 3, 0.0)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--debias", "balance", "--tau", "0.5"], "--tau applies to --debias paper only"),
        (["--debias", "none", "--tau", "0.5"], "--tau applies to --debias paper only"),
        (["--no-debias", "--debias", "balance"], "--no-debias means --debias none"),
        (["--debias", "fair"], "unknown --debias 'fair'"),
        (["--knn", "-2"], "--knn must be 0 (off)"),
        (["--knn", "18"], "--knn must be less than the number of images (19)"),
        (["--knn", "3", "--knn-alpha", "2"], "--knn-alpha must be in [0, 1]"),
        (["--knn", "3", "--knn-steps", "0"], "--knn-steps must be 1 or more"),
        (["--knn-alpha", "0.5"], "--knn-alpha does not apply with --knn 0"),
    ],
)
def test_bad_debias_and_knn_options_are_one_line(folder, cache, tiny_clip, tmp_path, capsys, extra, words):
    extra = [("19" if item == "18" else item) for item in extra]
    assert main([*_args(folder, cache, tiny_clip, *extra), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad" / "config.json").exists()


def test_no_debias_is_debias_none():
    from clipdebias.commands.zeroshot.config import loop_settings, resolve_zeroshot_config

    a = resolve_zeroshot_config("digits", "/tmp/a", no_debias=True)
    b = resolve_zeroshot_config("digits", "/tmp/a", debias="none")
    assert a == b and (a.debias, a.tau, a.no_debias, a.method) == ("none", 0.0, True, "fixmatch")
    # none trains as paper with tau 0: the same step, and the checkpoint a --no-debias run wrote before
    train = loop_settings(a).train_config(10, 100)
    assert (train.debias, train.tau, train.uses_prior) == ("paper", 0.0, False)
    balance = loop_settings(resolve_zeroshot_config("digits", "/tmp/a", debias="balance")).train_config(10, 100)
    assert (balance.debias, balance.uses_prior, balance.loss_tau) == ("balance", True, 0.0)


def test_a_run_started_before_debias_and_knn_resumes(folder, cache, tiny_clip, tmp_path, capsys):
    """A config.json without ``debias`` / ``knn*`` (a run of an earlier release) resumes with the
    settings it was made with, and refuses another mode or a kNN refinement."""
    out = tmp_path / "old"
    metrics = _zeroshot(folder, cache, tiny_clip, out, "--views", "0")
    saved = json.loads((out / "config.json").read_text())
    old = {key: value for key, value in saved.items() if key not in ("debias", "knn", "knn_alpha", "knn_steps")}
    (out / "config.json").write_text(json.dumps(old))
    resumed = _zeroshot(folder, cache, tiny_clip, out, "--views", "0", "--resume")
    assert resumed["resumed_from_epoch"] == 1 and {k: resumed[k] for k in STABLE} == {k: metrics[k] for k in STABLE}
    for changed in (["--debias", "balance"], ["--knn", "2"]):
        (out / "config.json").write_text(json.dumps(old))
        capsys.readouterr()
        assert main([*_args(folder, cache, tiny_clip, "--views", "0", *changed), "--out", str(out), "--resume"]) == 2
        assert "it was started with other options" in capsys.readouterr().err
