"""``pseudolabel --reference-format``: the files the CVPR 2022 reference code reads, checked against
torchvision's own ``ImageFolder`` (the reference code's dataset), which ``Index`` points into."""

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import class_image, make_image_folder
from PIL import Image
from torchvision.datasets import ImageFolder

from clipdebias.cli import main
from clipdebias.data.sources import open_dataset
from clipdebias.pseudolabels.files import CSV_COLUMNS, pseudo_label_table
from clipdebias.pseudolabels.labels import debiased_pseudo_labels
from clipdebias.pseudolabels.reference import reference_file_names, reference_format_files, reference_indices
from clipdebias.utils.atomic import atomic_write_group
from clipdebias.utils.errors import UserError


def _image(path, label=0, index=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(class_image(label, index, 16)).save(path)


def _nested_folder(root):
    """A train split whose sub-folders torchvision walks in another order than clipdebias: in
    ``sorted(os.walk(...))`` ``cat/sub-a`` comes before ``cat/sub/deep`` ('-' < '/'); clipdebias walks
    ``cat/sub`` and everything under it first. ``cat/.thumbs`` (a dot-folder inside a class) is read
    by both."""
    names = ["cat/b.png", "cat/a.jpg", "cat/sub/deep/x.png", "cat/sub/y.png", "cat/sub-a/z.png", "cat/.thumbs/t.png",
             "dog/a.png", "dog/inner/deeper/c.png", "dog/inner-b/d.png", "zebra/e.JPEG"]  # fmt: skip
    for i, name in enumerate(names):
        _image(root / "train" / name, label=["cat", "dog", "zebra"].index(name.split("/")[0]), index=i)
    return root


def _samples(root, split="train"):
    """torchvision's listing, as the reference code builds it: ``[(path, label)]``."""
    return ImageFolder(str(root / split)).samples


def _logits(rows, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, (rows, classes)).astype(np.float32)


def _pseudolabel(root, tmp_path, *extra, logits=None, name="labels"):
    """``pseudolabel`` with a teacher's logits (no model loaded): exit code."""
    rows = len(open_dataset("imagefolder", "train", root))
    teacher = tmp_path / f"{name}.npy"
    np.save(teacher, _logits(rows) if logits is None else logits)
    return main(["pseudolabel", "--dataset", "imagefolder", "--data-root", str(root), "--logits", str(teacher),
                 "--no-report", "--out", str(tmp_path / f"{name}.csv"), *extra])  # fmt: skip


def _one_line(text, prefix):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), text
    return lines[0]


# --- Index follows torchvision's ImageFolder ------------------------------------------------------


def test_index_points_at_the_same_file_as_torchvisions_imagefolder_on_a_nested_layout(tmp_path):
    root = _nested_folder(tmp_path / "data")
    source = open_dataset("imagefolder", "train", root)
    samples = _samples(root)
    assert source.paths != [path for path, _ in samples], "the layout must list differently, or nothing is tested"
    index = reference_indices(source)
    assert sorted(index.tolist()) == list(range(len(samples)))
    for i in range(len(source)):
        assert samples[index[i]] == (source.paths[i], int(source.labels[i]))


def test_the_reference_files_of_a_nested_layout_load_the_right_images(tmp_path, capsys):
    root = _nested_folder(tmp_path / "data")
    assert _pseudolabel(root, tmp_path, "--reference-format", str(tmp_path / "ref"), "--select-threshold", "0.6") == 0
    table = pd.read_csv(tmp_path / "labels.csv")
    by_path = table.set_index("path")
    selected, rest, ranked = (pd.read_csv(tmp_path / "ref" / name) for name in reference_file_names(0.6))
    assert len(selected) and len(rest) and len(selected) + len(rest) == len(table) == len(ranked)
    samples = _samples(root)
    for frame, chosen in ((selected, True), (rest, False)):
        assert frame["Index"].is_monotonic_increasing
        for index, pseudo_label in zip(frame["Index"], frame["PseudoLabel"], strict=True):
            row = by_path.loc[samples[index][0]]  # the file the reference code loads for this row
            assert row["pseudo_label"] == pseudo_label and bool(row["selected"]) is chosen
    for index, label in zip(ranked["Index"], ranked["Label1"], strict=True):
        assert by_path.loc[samples[index][0], "pseudo_label"] == label
    assert "reference format" in capsys.readouterr().out


def test_a_flat_layout_keeps_the_dataset_index(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    source = open_dataset("imagefolder", "train", root)
    assert reference_indices(source).tolist() == list(range(len(source)))
    assert [path for path, _ in _samples(root)] == source.paths
    assert reference_indices(open_dataset("digits", "train")).tolist() == list(range(1257))


# --- layouts the reference code cannot read as clipdebias does: refused before any work ------------


def test_an_image_torchvision_does_not_list_is_refused_before_anything_is_written(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3, val_per_class=1)
    gif = root / "train" / "dog" / "anim.gif"
    Image.fromarray(class_image(1, 9, 16)).save(gif)
    assert (
        str(gif) not in [path for path, _ in _samples(root)]
        and str(gif) in open_dataset("imagefolder", "train", root).paths
    )  # clipdebias reads it, torchvision's ImageFolder does not
    assert _pseudolabel(root, tmp_path, "--reference-format", str(tmp_path / "ref"), name="x") == 2
    line = _one_line(capsys.readouterr().err, "error: --reference-format: ")
    assert "does not list 1 image file(s)" in line and "'dog/anim.gif'" in line and ".jpg" in line
    assert not (tmp_path / "x.csv").exists() and not list((tmp_path / "ref").iterdir())
    assert _pseudolabel(root, tmp_path, name="plain") == 0  # without --reference-format the .gif is an image


def test_the_gif_check_comes_before_encoding(tmp_path, tiny_clip, cache_root, capsys):
    root = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    Image.fromarray(class_image(0, 9, 16)).save(root / "train" / "cat" / "z.gif")
    args = ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(root), "--model", tiny_clip,
            "--pretrained", "none", "--templates", "simple", "--out", str(tmp_path / "x.csv"),
            "--reference-format", str(tmp_path / "ref")]  # fmt: skip
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "error: --reference-format: torchvision's ImageFolder does not list 1")
    assert not [p for p in cache_root.rglob("*") if p.is_file() and p.suffix in (".faiss", ".npy", ".csv")]


def test_a_dot_folder_class_is_refused_and_names_the_folder(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3, val_per_class=1)
    _image(root / "train" / ".ipynb_checkpoints" / "x.png")
    assert ImageFolder(str(root / "train")).classes[0] == ".ipynb_checkpoints"  # torchvision's class 0
    assert open_dataset("imagefolder", "train", root).classes == ["cat", "dog", "red_fox"]
    with pytest.raises(UserError, match=r"takes '\.ipynb_checkpoints' as class folder"):
        reference_indices(open_dataset("imagefolder", "train", root))
    assert _pseudolabel(root, tmp_path, "--reference-format", str(tmp_path / "ref")) == 2
    line = _one_line(capsys.readouterr().err, "error: --reference-format: torchvision's ImageFolder takes")
    assert "class indices would not be clipdebias's" in line and str(root / "train") in line


def test_a_dot_folder_in_the_other_split_is_refused_too(tmp_path):
    """The reference code evaluates on ``val/`` with torchvision's classes: they must be train's."""
    root = make_image_folder(tmp_path / "data", per_class=3, val_per_class=1)
    (root / "val" / ".cache").mkdir()
    with pytest.raises(UserError, match=r"takes '\.cache' as class folder.*val"):
        reference_indices(open_dataset("imagefolder", "train", root))


# --- the files ------------------------------------------------------------------------------------


def _table(rows=50, threshold=0.8, top_k=3):
    result = debiased_pseudo_labels(_logits(rows, classes=7), tau=0.4, threshold=threshold, top_k=top_k)
    indices = np.arange(100, 100 + rows)
    table = pseudo_label_table(
        result, indices, [f"p{i}" for i in range(100 + rows)], np.full(100 + rows, -1), [f"c{i}" for i in range(7)]
    )
    return result, table


def test_the_two_csvs_split_selected_and_the_rest_and_the_ranked_file_ranks(tmp_path):
    result, table = _table()
    assert list(table.columns) == list(CSV_COLUMNS) and 0 < result.selected.sum() < 50
    written = atomic_write_group(reference_format_files(table, result, tmp_path))
    assert [path.name for path in written] == list(reference_file_names(0.8)) == [
        "CLIPPseudoLabel0.8.csv", "CLIPPseudoLabel0.8-Unselected.csv", "CLIPRankedPredictions.csv"]  # fmt: skip
    selected, rest, ranked = (pd.read_csv(path) for path in written)
    assert list(selected.columns) == ["Index", "PseudoLabel"]
    assert list(rest.columns) == ["Index", "PseudoLabel", "Probs"]
    assert list(ranked.columns) == ["Index", "Label1", "Label2", "Label3", "Prob1", "Prob2", "Prob3"]
    assert sorted(selected["Index"].tolist() + rest["Index"].tolist()) == list(range(100, 150))
    assert selected["Index"].tolist() == np.arange(100, 150)[result.selected].tolist()
    assert np.allclose(rest["Probs"], result.confidence[~result.selected], atol=1e-6) and (rest["Probs"] < 0.8).all()
    assert ranked["Index"].tolist() == list(range(100, 150))
    assert ranked["Label1"].tolist() == result.label.tolist()
    assert np.allclose(ranked["Prob1"], result.confidence, atol=1e-6)
    probs = ranked[["Prob1", "Prob2", "Prob3"]].to_numpy()
    assert (np.diff(probs, axis=1) <= 0).all() and (probs.sum(axis=1) <= 1 + 1e-6).all()


def test_ranked_predictions_stream_like_the_full_matrix():
    logits = _logits(301, classes=7)
    result = debiased_pseudo_labels(logits, tau=0.7, threshold=0.5, chunk_rows=17, top_k=4)
    full = torch.from_numpy(logits)
    debiased = torch.softmax(full - 0.7 * torch.log(torch.softmax(full, -1).mean(0)), -1)
    values, classes = debiased.topk(4, dim=-1)
    assert np.array_equal(result.ranked_label, classes.numpy()) and np.allclose(result.ranked_prob, values, atol=1e-6)
    assert debiased_pseudo_labels(logits, top_k=50).ranked_label.shape == (301, 7)  # at most C
    assert debiased_pseudo_labels(logits).ranked_label is None


def test_cli_reference_top_k(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    assert _pseudolabel(root, tmp_path, "--reference-format", str(tmp_path / "ref")) == 0
    ranked = pd.read_csv(tmp_path / "ref" / "CLIPRankedPredictions.csv")
    assert list(ranked.columns) == ["Index", "Label1", "Label2", "Label3", "Prob1", "Prob2", "Prob3"]  # 5 > 3 classes
    args = ("--reference-format", str(tmp_path / "ref2"), "--reference-top-k", "2")
    assert _pseudolabel(root, tmp_path, *args, name="k2") == 0
    ranked = pd.read_csv(tmp_path / "ref2" / "CLIPRankedPredictions.csv")
    assert list(ranked.columns) == ["Index", "Label1", "Label2", "Prob1", "Prob2"]
    assert ranked["Label1"].tolist() == pd.read_csv(tmp_path / "k2.csv")["pseudo_label"].tolist()
    capsys.readouterr()
    assert _pseudolabel(root, tmp_path, "--reference-format", str(tmp_path / "ref3"), "--reference-top-k", "0") == 2
    assert "--reference-top-k" in capsys.readouterr().err


@pytest.mark.parametrize(
    "threshold, empty, reason",
    [("1", "CLIPPseudoLabel1.csv", "no image reaches"), ("0", "CLIPPseudoLabel0-Unselected.csv", "every image")],
)
def test_an_empty_reference_csv_is_a_warning(tmp_path, capsys, monkeypatch, threshold, empty, reason):
    monkeypatch.setenv("COLUMNS", "300")  # the warning on one line of the terminal
    root = make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    args = ("--reference-format", str(tmp_path / "ref"), "--select-threshold", threshold)
    assert _pseudolabel(root, tmp_path, *args) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --reference-format: "), err
    assert f"{empty} has no rows" in warnings[0] and reason in warnings[0]
    assert "sampler fails on an empty file" in warnings[0]
    frame = pd.read_csv(tmp_path / "ref" / empty)
    assert len(frame) == 0 and "Index" in frame.columns


def test_no_warning_when_both_csvs_have_rows(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    assert _pseudolabel(root, tmp_path, "--reference-format", str(tmp_path / "ref"), "--select-threshold", "0.5") == 0
    assert "warning" not in capsys.readouterr().err
    selected = pd.read_csv(tmp_path / "ref" / "CLIPPseudoLabel0.5.csv")
    assert 0 < len(selected) < 12


def test_an_empty_val_folder_is_left_to_imagefolder(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    for folder in (root / "val").iterdir():
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    assert reference_indices(open_dataset("imagefolder", "train", root)).tolist() == list(range(6))
