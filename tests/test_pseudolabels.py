"""Debiased pseudo-labels: the streaming core against a full-matrix reference, the CSV, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import make_image_folder

from clipdebias.cli import main
from clipdebias.pseudolabels.files import CSV_COLUMNS
from clipdebias.pseudolabels.labels import debiased_pseudo_labels
from clipdebias.pseudolabels.rows import ZeroShotLogits
from clipdebias.utils.errors import UserError


def _biased_logits(rows=301, classes=7, seed=0) -> np.ndarray:
    """A teacher that favours class 0 on a balanced set: the natural imbalance DebiasPL removes."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) % classes
    logits = rng.normal(0, 1, (rows, classes)) + 2.5 * np.eye(classes)[truth]
    logits[:, 0] += 1.5
    return logits.astype(np.float32)


def test_streaming_equals_the_full_matrix_computation():
    logits = _biased_logits()
    result = debiased_pseudo_labels(logits, tau=0.7, threshold=0.6, chunk_rows=17)
    full = torch.from_numpy(logits)
    prior = torch.softmax(full, -1).mean(0)
    debiased = torch.softmax(full - 0.7 * torch.log(prior), -1)
    assert np.allclose(result.prior, prior.numpy(), atol=1e-6)
    assert np.array_equal(result.label, debiased.argmax(-1).numpy())
    assert np.allclose(result.confidence, debiased.max(-1).values.numpy(), atol=1e-6)
    assert np.array_equal(result.raw_label, full.argmax(-1).numpy())
    assert np.allclose(result.raw_confidence, torch.softmax(full, -1).max(-1).values.numpy(), atol=1e-6)
    assert np.array_equal(result.selected, result.confidence >= 0.6)


def test_debiasing_flattens_the_class_counts_and_tau_0_is_plain_zero_shot():
    logits = _biased_logits()
    debiased = debiased_pseudo_labels(logits, tau=1.0, threshold=0.5)
    raw_counts = np.bincount(debiased.raw_label, minlength=7)
    counts = np.bincount(debiased.label, minlength=7)
    truth = np.arange(301) % 7
    assert raw_counts[0] > counts[0] + 25 and counts.max() / counts.min() < raw_counts.max() / raw_counts.min()
    assert (debiased.label == truth).mean() > (debiased.raw_label == truth).mean() + 0.05
    plain = debiased_pseudo_labels(logits, tau=0.0, threshold=0.5)
    assert np.array_equal(plain.label, plain.raw_label) and np.array_equal(plain.confidence, plain.raw_confidence)


def test_memory_mapped_logits_and_zero_shot_logits(tmp_path):
    logits = _biased_logits()
    np.save(tmp_path / "l.npy", logits)
    mapped = debiased_pseudo_labels(np.load(tmp_path / "l.npy", mmap_mode="r"), chunk_rows=50)
    assert np.array_equal(mapped.label, debiased_pseudo_labels(logits).label)
    embeddings = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    classifier = torch.randn(5, 8)
    lazy = ZeroShotLogits(embeddings, classifier, scale=100.0)
    assert lazy.shape == (40, 5)
    assert torch.allclose(lazy[10:20], 100.0 * torch.from_numpy(embeddings[10:20]) @ classifier.T, atol=1e-4)


def test_bad_logits_are_user_errors():
    logits = _biased_logits()
    logits[5, 2] = np.nan
    with pytest.raises(UserError, match="NaN"):
        debiased_pseudo_labels(logits)
    with pytest.raises(UserError, match="shape"):
        debiased_pseudo_labels(np.zeros((4, 1), np.float32))


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=5, val_per_class=1)


def _pseudolabel(folder, tiny_clip, out, *extra):
    return main(
        [
            "pseudolabel",
            "--dataset",
            "imagefolder",
            "--data-root",
            str(folder),
            "--model",
            tiny_clip,
            "--pretrained",
            "none",
            "--templates",
            "simple",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_cli_writes_the_csv_sidecar_and_reference_format(folder, tiny_clip, cache_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    (folder / "train" / "dog" / "img_003.png").write_bytes(b"broken")
    out = tmp_path / "out" / "labels.csv"
    extra = ["--reference-format", str(tmp_path / "ref"), "--select-threshold", "0.3"]
    assert _pseudolabel(folder, tiny_clip, out, *extra) == 0
    printed = capsys.readouterr()
    assert "top-1 vs ground truth" in printed.out and "imbalance" in printed.out and "selected:" in printed.out
    assert "RANDOM weights" in printed.err
    table = pd.read_csv(out)
    assert list(table.columns) == list(CSV_COLUMNS)
    assert table["index"].tolist() == [i for i in range(15) if i != 8]  # the unreadable image has no row
    assert table["label"].tolist() == [i // 5 for i in range(15) if i != 8]
    assert set(table["pseudo_class"]) <= {"cat", "dog", "red fox"}
    assert (table["selected"] == (table["confidence"] >= 0.3)).all()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    for key in (
        "classes",
        "tau",
        "threshold",
        "prior",
        "model",
        "pretrained",
        "dataset",
        "split",
        "num_selected",
        "zeroshot_top1",
        "zeroshot_debiased_top1",
    ):
        assert key in sidecar
    assert (
        sidecar["classes"] == ["cat", "dog", "red fox"]
        and sidecar["num_unreadable"] == 1
        and sidecar["num_selected"] == int(table["selected"].sum())
    )
    assert abs(sum(sidecar["prior"]) - 1) < 1e-5
    assert sidecar["zeroshot_top1"] == pytest.approx((table["raw_pseudo_label"] == table["label"]).mean() * 100)
    selected = pd.read_csv(tmp_path / "ref" / "CLIPPseudoLabel0.3.csv")
    assert selected["Index"].tolist() == table.loc[table["selected"], "index"].tolist()
    assert list((cache_root / "text").glob("*.npy")), "the text classifier is cached"

    assert _pseudolabel(folder, tiny_clip, tmp_path / "plain.csv", "--tau", "0") == 0
    assert "cache complete, nothing encoded" in capsys.readouterr().out
    plain = pd.read_csv(tmp_path / "plain.csv")
    assert plain["pseudo_label"].equals(plain["raw_pseudo_label"]) and np.allclose(
        plain["confidence"], plain["raw_confidence"]
    )
    assert plain["raw_pseudo_label"].equals(table["raw_pseudo_label"])


def test_cli_takes_a_teachers_logits_without_loading_a_model(folder, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although --logits replaces CLIP")

    monkeypatch.setattr("clipdebias.commands.pseudolabel.load_backbone", no_model)
    truth = np.repeat(np.arange(3), 5)
    logits = np.full((15, 3), -2.0, np.float32)
    logits[np.arange(15), truth] = 3.0
    logits[:, 0] += 1.0  # a teacher biased towards "cat"
    logits[5, :] = [2.0, 1.9, -5.0]  # wrong (cat) when plain, right (dog) once debiased
    np.save(tmp_path / "teacher.npy", logits)
    args = [
        "pseudolabel",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(folder),
        "--logits",
        str(tmp_path / "teacher.npy"),
    ]
    assert main([*args, "--out", str(tmp_path / "t.csv"), "--tau", "1"]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    expected = debiased_pseudo_labels(logits, tau=1.0)
    assert (
        table["pseudo_label"].tolist() == expected.label.tolist()
        and table["raw_pseudo_label"][5] == 0
        and table["pseudo_label"][5] == 1
    )
    sidecar = json.loads((tmp_path / "t.json").read_text())
    assert (
        sidecar["teacher"].startswith("logits file")
        and sidecar["model"] is None
        and sidecar["zeroshot_debiased_top1"] == 100.0
    )
    # The report of the CSV is written beside it automatically, and the terminal says where.
    report = tmp_path / "t_report" / "report.md"
    assert report.is_file() and f"report: {report}" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "quiet.csv"), "--no-report"]) == 0
    assert (tmp_path / "quiet.csv").is_file() and not (tmp_path / "quiet_report").exists()
    capsys.readouterr()
    np.save(tmp_path / "short.npy", logits[:10])
    assert main([*args[:-1], str(tmp_path / "short.npy"), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --logits") and "expected [15, 3]" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classnames", "NAMES"], "has 2 class names but dataset 'imagefolder' has 3 classes"),
        (["--tau", "-1"], "--tau"),
        (["--select-threshold", "1.5"], "--select-threshold must be in [0, 1]"),
    ],
)
def test_cli_user_errors_are_one_line(folder, tiny_clip, cache_root, tmp_path, capsys, extra, message):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    extra = [str(names) if item == "NAMES" else item for item in extra]
    assert _pseudolabel(folder, tiny_clip, tmp_path / "x.csv", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()


def test_out_must_be_a_csv_file(folder, tiny_clip, tmp_path, capsys):
    assert _pseudolabel(folder, tiny_clip, tmp_path / "labels.json") == 2
    assert "ending in .csv" in capsys.readouterr().err
