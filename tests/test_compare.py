"""`clipdebias compare`: grouping runs, mean ± std and paired gains, the chart, and clear errors."""

import json

import numpy as np
import pytest
from fakes import make_run_folder
from PIL import Image

from clipdebias.cli import main
from clipdebias.cli.compare import GROUP_KEYS_HELP
from clipdebias.reporting.compare import DEFAULT_GROUP_KEYS, chart_figure, compare_runs
from clipdebias.utils.errors import UserError


def top1(run):
    return json.loads((run / "metrics.json").read_text())["top1"]


@pytest.fixture
def seeds(tmp_path):
    """FixMatch and DebiasPL over seeds 0-2, one folder per method holding one folder per seed."""
    runs = {
        method: [
            make_run_folder(tmp_path / method / f"seed{seed}", method=method, seed=seed, epochs=3) for seed in range(3)
        ]
        for method in ("fixmatch", "debiaspl")
    }
    return tmp_path, runs


def test_compare_methods_over_seeds(seeds, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root, runs = seeds
    out = root / "cmp"
    assert main(["compare", str(root / "fixmatch"), str(root / "debiaspl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fixmatch" in printed and "debiaspl" in printed and str(out / "compare.md") in printed

    result = compare_runs([root / "fixmatch", root / "debiaspl"], out, overwrite=True)
    assert [group.name for group in result.groups] == ["fixmatch", "debiaspl"]
    fixmatch, debiaspl = result.groups
    values = {method: np.array([top1(run) for run in paths]) for method, paths in runs.items()}
    assert debiaspl.top1[0] == pytest.approx(values["debiaspl"].mean())
    assert debiaspl.top1[1] == pytest.approx(values["debiaspl"].std(ddof=1))
    gains = values["debiaspl"] - values["fixmatch"]  # same seed order in both
    mean, std, count = debiaspl.paired_gain
    assert (mean, std, count) == (pytest.approx(gains.mean()), pytest.approx(gains.std(ddof=1)), 3)
    assert fixmatch.paired_gain is None
    ratios = [
        json.loads((run / "metrics.json").read_text())["pseudo_labels"]["imbalance_ratio"] for run in runs["fixmatch"]
    ]
    assert fixmatch.imbalance_median == pytest.approx(np.median(ratios))

    markdown = (out / "compare.md").read_text()
    assert f"{values['debiaspl'].mean():.1f} ± {values['debiaspl'].std(ddof=1):.1f}" in markdown
    assert f"{gains.mean():+.1f} ± {gains.std(ddof=1):.1f} (n=3)" in markdown
    assert markdown.count("/seed") == 6 and "](compare.png)" in markdown
    with Image.open(out / "compare.png") as image:
        assert image.format == "PNG" and 1000 <= image.size[0] <= 2000
    assert (out / "compare.png").stat().st_size < 1_000_000


def test_different_class_counts_are_a_clear_error(tmp_path, capsys):
    small = make_run_folder(tmp_path / "digits", num_classes=10)
    large = make_run_folder(tmp_path / "cifar100", num_classes=100)
    with pytest.raises(UserError, match="different numbers of classes"):
        compare_runs([small, large], tmp_path / "out")
    assert main(["compare", str(small), str(large), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{small} (10)" in err and f"{large} (100)" in err
    assert not (tmp_path / "out").exists()


def test_groups_are_named_by_the_keys_that_differ(tmp_path):
    make_run_folder(tmp_path / "fm", method="fixmatch", tau=0.4)
    make_run_folder(tmp_path / "fm2", method="fixmatch", tau=1.0, seed=1)  # tau means nothing to FixMatch
    make_run_folder(tmp_path / "t04", method="debiaspl", tau=0.4)
    make_run_folder(tmp_path / "t1", method="debiaspl", tau=1.0)
    paths = [tmp_path / name for name in ("fm", "fm2", "t04", "t1")]
    result = compare_runs(paths, tmp_path / "out")
    assert [(group.name, len(group.runs)) for group in result.groups] == [
        ("fixmatch", 2),
        ("debiaspl tau=0.4", 1),
        ("debiaspl tau=1", 1),
    ]
    assert result.group_keys == ("method", "tau")
    merged = compare_runs(paths, tmp_path / "out", group_by=["method"], overwrite=True)
    assert [(group.name, len(group.runs)) for group in merged.groups] == [("fixmatch", 2), ("debiaspl", 2)]


def test_by_option_and_help_default(seeds, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root, _ = seeds
    assert (
        main(["compare", str(root / "fixmatch"), str(root / "debiaspl"), "--by", "seed", "--out", str(root / "o")]) == 0
    )
    markdown = (root / "o" / "compare.md").read_text()
    assert "grouped by: seed" in markdown and "| all runs" not in markdown
    assert ",".join(DEFAULT_GROUP_KEYS) == GROUP_KEYS_HELP


def test_unpaired_seeds_give_no_gain_and_a_note(tmp_path):
    base = make_run_folder(tmp_path / "a", method="fixmatch", seed=0)
    other = make_run_folder(tmp_path / "b", method="debiaspl", seed=5)
    result = compare_runs([base, other], tmp_path / "out")
    assert result.groups[1].paired_gain is None
    assert any("no paired gain" in note for note in result.notes)


@pytest.mark.parametrize("case", ["empty folder", "unfinished run", "missing"])
def test_non_runs_are_one_line_errors(tmp_path, capsys, case):
    if case == "empty folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "unfinished run":
        path = make_run_folder(tmp_path / "running")
        (path / "metrics.json").unlink()
    else:
        path = tmp_path / "missing"
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err


def test_the_std_band_of_a_percentage_stays_within_0_and_100(tmp_path):
    """Seeds at 100, 96 and 99.9% pseudo-label accuracy: mean ± std reaches above 100; the band stops there."""
    groups = []
    for method in ("fixmatch", "debiaspl"):
        for seed, accuracy in enumerate((100.0, 96.0, 99.9)):
            run = make_run_folder(tmp_path / method / f"seed{seed}", method=method, seed=seed, epochs=3)
            lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for record in lines:
                record["pseudo_label_accuracy"] = accuracy
            (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in lines))
        groups.append(tmp_path / method)
    result = compare_runs(groups, tmp_path / "cmp")
    assert np.mean([100.0, 96.0, 99.9]) + np.std([100.0, 96.0, 99.9], ddof=1) > 100.0
    figure = chart_figure(result.groups)
    accuracy_panel = figure.axes[3]
    assert accuracy_panel.get_title() == "pseudo-label accuracy per epoch"
    bands = [collection for collection in accuracy_panel.collections if len(collection.get_paths())]
    assert len(bands) == 2  # one shaded band per group
    tops = [max(path.vertices[:, 1].max() for path in band.get_paths()) for band in bands]
    assert tops == [pytest.approx(100.0), pytest.approx(100.0)]
    imbalance_panel = figure.axes[2]
    bottoms = [min(path.vertices[:, 1].min() for path in band.get_paths()) for band in imbalance_panel.collections]
    assert min(bottoms) >= 1.0  # an imbalance ratio is never below 1


def test_compare_never_replaces_an_earlier_comparison_without_overwrite(seeds, capsys):
    root, _ = seeds
    out = root / "cmp"
    args = ["compare", str(root / "fixmatch"), str(root / "debiaspl"), "--out", str(out)]
    assert main(args) == 0
    (out / "compare.md").write_text("my notes")
    capsys.readouterr()
    assert main([*args, "--by", "method"]) == 2
    err = capsys.readouterr().err
    expected = (
        f"--out {out}: {out / 'compare.md'} already exists; pass --overwrite to replace it, or give another --out"
    )
    assert err == f"error: {expected}\n"
    assert (out / "compare.md").read_text() == "my notes"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "compare.md").read_text().startswith("# clipdebias compare")


def test_a_paired_gain_between_runs_of_other_settings_names_those_settings(tmp_path, seeds):
    """FixMatch at 32 px, batch 4 against DebiasPL at 224 px, batch 64: the gain mixes the method with
    the image size and the batch; the note names both, with each side's value."""
    runs = []
    for method, image_size, batch_size in (("fixmatch", 32, 4), ("debiaspl", 224, 64)):
        run = make_run_folder(tmp_path / "settings" / method, method=method, seed=0)
        config = json.loads((run / "config.json").read_text())
        config.update(image_size=image_size, batch_size=batch_size, workers=8 if method == "fixmatch" else 0)
        (run / "config.json").write_text(json.dumps(config))
        runs.append(run)
    result = compare_runs(runs, tmp_path / "out")
    assert result.groups[1].paired_gain is not None
    expected = (
        "debiaspl vs fixmatch: the runs also differ in batch_size (4 vs 64), image_size (32 vs 224); "
        "the paired gain reflects these too"
    )
    assert [note for note in result.notes if "also differ" in note] == [
        f"{expected}: add them to --by, or compare runs that share them"
    ]
    assert expected in (tmp_path / "out" / "compare.md").read_text()
    root, _ = seeds  # runs that differ only in the method (and FixMatch's unused tau) get no such note
    same = compare_runs([root / "fixmatch", root / "debiaspl"], tmp_path / "same")
    assert same.groups[1].paired_gain is not None and not any("also differ" in note for note in same.notes)
