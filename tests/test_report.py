"""`clipdebias report` and `clipdebias.reporting.report.write_report`: from a finished run, from a CSV alone,
defensive reading of optional fields, one-line errors for foreign input, readable 1000-class charts."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from fakes import attach_image_files, make_pseudolabel_csv, make_run_folder
from PIL import Image

from clipdebias.cli import main
from clipdebias.pseudolabels.files import read_pseudolabels
from clipdebias.reporting import gallery, plots
from clipdebias.reporting.gallery import build_gallery
from clipdebias.reporting.report import TABLE_EXTREMES, pseudolabel_section, run_section, write_report
from clipdebias.reporting.runs import read_run
from clipdebias.utils.errors import UserError


def assert_sane_png(path):
    """A real PNG, 1000-2000 px wide, under 1 MB, and not blank."""
    assert path.is_file(), path
    assert path.stat().st_size < 1_000_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 1000 <= width <= 2000 and 300 <= height <= 1500, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # axes, text and curves, not an empty canvas


def summary_value(result, name):
    return dict(result.summary)[name]


def test_report_from_finished_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    run = make_run_folder(tmp_path / "run", num_classes=10, epochs=4, method="debiaspl")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    report_dir = run / "report"
    expected = ["class_counts.png", "per_class_accuracy.png", "training.png", "prior.png"]
    for name in expected:
        assert_sane_png(report_dir / name)
        assert str(report_dir / name) in out
    markdown = (report_dir / "report.md").read_text()
    for name in expected:
        assert f"]({name})" in markdown
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{metrics['top1']:.1f}%" in out and f"{metrics['top1']:.1f}%" in markdown
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["imbalance_ratio"]
    assert f"{first:.1f}× → {metrics['pseudo_labels']['imbalance_ratio']:.1f}×" in out
    # ten classes: the per-class table lists all of them, worst top-1 first
    worst = int(np.argmin(metrics["per_class_top1"]))
    assert f"| 1 | c{worst} |" in markdown
    assert not list(report_dir.glob(".*.tmp"))


def test_report_from_csv_alone(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "pl.csv", num_classes=8, rows_per_class=25, sidecar=False)
    result = write_report(csv)
    assert result.out_dir == tmp_path / "pl_report"
    assert [p.name for p in result.images] == ["class_counts.png", "per_class.png", "confidence.png"]
    for image in result.images:
        assert_sane_png(image)
    frame = pd.read_csv(csv)
    inferred = frame.loc[frame["selected"], "confidence"].min()
    assert summary_value(result, "tau / threshold") == f"unknown / ≈{inferred:.3f} (inferred)"
    assert any("no class list in a sidecar" in note for note in result.notes)
    markdown = result.markdown.read_text()
    assert "class_0000" in markdown  # names come from the pseudo_class column
    assert "## Notes" in markdown


def test_csv_summary_matches_the_data(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "pl.csv", num_classes=10, rows_per_class=30)
    result = write_report(csv, tmp_path / "out")
    frame = pd.read_csv(csv)
    raw_acc = 100 * (frame["raw_pseudo_label"] == frame["label"]).mean()
    deb_acc = 100 * (frame["pseudo_label"] == frame["label"]).mean()
    assert summary_value(result, "accuracy, labeled rows (raw → debiased)") == f"{raw_acc:.1f}% → {deb_acc:.1f}%"
    raw_counts = np.bincount(frame["raw_pseudo_label"], minlength=10)
    deb_counts = np.bincount(frame["pseudo_label"], minlength=10)
    ratio = lambda c: c.max() / max(c.min(), 1)  # noqa: E731
    assert (
        summary_value(result, "imbalance, all rows (raw → debiased)")
        == f"{ratio(raw_counts):.1f}× → {ratio(deb_counts):.1f}×"
    )
    raw_kept = int((frame["raw_confidence"] >= 0.95).sum())
    assert (
        summary_value(result, "selected rows (raw → debiased)") == f"{raw_kept} → {int(frame['selected'].sum())} of 300"
    )
    assert summary_value(result, "tau / threshold") == "0.40 / 0.95"
    assert result.out_dir == tmp_path / "out" and result.markdown == tmp_path / "out" / "report.md"


def test_csv_without_labels_skips_accuracy(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "nolabels.csv", labels=False)
    assert pd.read_csv(csv)["label"].isna().all()
    result = write_report(csv)
    assert [p.name for p in result.images] == ["class_counts.png", "confidence.png"]
    assert not any("accuracy" in name for name, _ in result.summary)


def test_fixmatch_run_without_prior_has_no_prior_chart(tmp_path):
    run = make_run_folder(tmp_path / "fixmatch", method="fixmatch")
    result = write_report(run)
    names = [p.name for p in result.images]
    assert "prior.png" not in names and "training.png" in names
    assert not any(name.startswith("prior entropy") for name, _ in result.summary)
    assert summary_value(result, "input").startswith("training run (fixmatch)")


def test_zeroshot_run_adds_its_pseudolabel_charts(tmp_path):
    run = make_run_folder(tmp_path / "zs", with_pseudolabels_csv=True)
    result = write_report(run)
    names = [p.name for p in result.images]
    for name in ("zeroshot_class_counts.png", "zeroshot_per_class.png", "zeroshot_confidence.png", "training.png"):
        assert name in names
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary_value(result, "zero-shot top-1 (debiased)") == f"{metrics['zeroshot_debiased_top1']:.1f}%"
    assert "## Zero-shot pseudo-labels (pseudolabels.csv)" in result.markdown.read_text()


def test_thousand_classes_stay_readable(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "imagenet.csv", num_classes=1000, rows_per_class=5)
    run = make_run_folder(tmp_path / "run1000", num_classes=1000, epochs=3, unlabeled_per_class=5)
    for result in (write_report(csv), write_report(run)):
        for image in result.images:
            assert_sane_png(image)
        table = result.markdown.read_text().rsplit("### Per-class", 1)[1]
        class_rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
        assert len(class_rows) == 2 * TABLE_EXTREMES + 1  # both ends and one "…" row, not 1000 rows


def test_sorted_curves_name_every_class_up_to_30_and_the_extremes_beyond():
    names = [f"class{i}" for i in range(1000)]
    figure, (many, few) = plots.new_figure(2, "t")
    values = np.random.default_rng(0).integers(0, 50, 1000).astype(float)
    plots.sorted_class_panel(many, [plots.Curve("counts", values)], "many", "rows", names=names)
    plots.sorted_class_panel(few, [plots.Curve("counts", values[:10])], "few", "rows", names=names[:10])
    figure.canvas.draw()  # the canvas exists without pyplot
    assert len(many.get_xticks()) <= 12
    largest, smallest = many.get_xlabel().splitlines()[1:]
    order = np.argsort(-values, kind="stable")
    assert largest.startswith(f"largest by counts: {names[order[0]]} {values[order[0]]:.0f}, {names[order[1]]}")
    assert smallest.startswith("smallest (") and f"{names[order[-1]]} 0" in smallest
    labels = [label.get_text() for label in few.get_xticklabels()]
    order = np.argsort(-values[:10], kind="stable")
    assert labels == [names[i] for i in order]


def test_several_curves_share_the_named_class_order_of_one():
    names = [f"n{i}" for i in range(30)]
    first, last = np.arange(30.0), np.arange(30.0)[::-1] + 100
    figure, (ax,) = plots.new_figure(1, "t")
    curves = [plots.Curve("epoch 1", first), plots.Curve("epoch 9", last)]
    plots.sorted_class_panel(ax, curves, "counts", "rows", names=names, flat_line=True, sort_by=-1)
    assert [label.get_text() for label in ax.get_xticklabels()] == names  # the last curve falls from n0 to n29
    assert ax.get_xlabel() == "class (sorted by epoch 9, largest first)"
    drawn = [line for line in ax.get_lines() if line.get_label() in ("epoch 1", "epoch 9")]
    np.testing.assert_array_equal(drawn[0].get_ydata(), first)  # epoch 1 follows epoch 9's order, unsorted


def test_the_reports_name_their_classes(tmp_path):
    run = read_run(make_run_folder(tmp_path / "run", num_classes=10, epochs=3))
    charts = {chart.filename: chart for chart in run_section(run).charts}
    final = run.final_counts()
    for filename, order in (
        ("class_counts.png", np.argsort(-final, kind="stable")),
        ("per_class_accuracy.png", np.argsort(-np.asarray(run.metrics["per_class_top1"]), kind="stable")),
    ):
        (ax,) = charts[filename].figure.axes
        assert [label.get_text() for label in ax.get_xticklabels()] == [run.classes[i] for i in order], filename
    table = read_pseudolabels(make_pseudolabel_csv(tmp_path / "pl.csv", num_classes=12))
    for chart in pseudolabel_section(table).charts[:2]:  # counts, per-class quality
        raw_order_names = {label.get_text() for ax in chart.figure.axes for label in ax.get_xticklabels()}
        assert raw_order_names == set(table.classes), chart.filename


def test_a_towering_class_turns_the_count_axis_logarithmic_with_plain_ticks():
    """The demo's first epoch: every confident pseudo-label in one of 10 classes (169x on a floor of 1),
    which a linear axis beside the last epoch's ~1,300 per class flattens to nothing."""
    names = [str(i) for i in range(10)]
    first = np.array([169.0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    last = np.array([1556.0, 1177, 1563, 775, 1335, 1304, 1517, 1235, 1062, 1169])
    figure, (spiky, calm) = plots.new_figure(2, "t")
    curves = [plots.Curve("epoch 1", first), plots.Curve("epoch 10", last)]
    plots.sorted_class_panel(spiky, curves, "counts", "rows", names=names, flat_line=True, sort_by=-1)
    plots.sorted_class_panel(calm, [plots.Curve("epoch 10", last)], "counts", "rows", names=names, flat_line=True)
    figure.canvas.draw()
    assert spiky.get_yscale() == "symlog" and spiky.get_ylabel() == "rows (log scale)"
    ticks = {label.get_text() for label in spiky.get_yticklabels()}
    assert {"0", "1", "10", "100", "1,000"} <= ticks  # plain numbers, no 10^3
    assert calm.get_yscale() == "linear"  # 2x between the largest and the smallest class


def test_an_empty_threshold_panel_says_so(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "pl.csv", num_classes=10, threshold=0.99999999)
    table = read_pseudolabels(csv)
    assert table.selected is not None and not table.selected.any() and not table.raw_selected.any()
    counts = pseudolabel_section(table).charts[0]
    _, kept = counts.figure.axes
    assert [text.get_text() for text in kept.texts] == ["no row reached the threshold"]
    assert not kept.get_yticks().size and not kept.get_lines()


def test_run_counts_say_they_are_per_draw(tmp_path):
    path = make_run_folder(tmp_path / "run", num_classes=10, epochs=2, unlabeled_per_class=40)
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["unlabeled_images"] = 100  # the fake draws 400 rows per epoch: 4 draws per image
    (path / "metrics.json").write_text(json.dumps(metrics))
    (ax,) = next(c for c in run_section(read_run(path)).charts if c.filename == "class_counts.png").figure.axes
    assert ax.get_ylabel().startswith("confident pseudo-labels (per draw)")
    assert ax.get_title().endswith("counted per draw, about 4.0 draws per unlabeled image")


def test_unfinished_run_reports_its_epochs(tmp_path):
    run = make_run_folder(tmp_path / "running", epochs=3)
    (run / "metrics.json").unlink()
    result = write_report(run)
    assert "training.png" in [p.name for p in result.images]
    assert any("has not finished" in note for note in result.notes)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary_value(result, "top-1 / top-5").startswith(f"{last['top1']:.1f}%")


def test_missing_and_malformed_optional_fields_do_not_raise(tmp_path):
    run = tmp_path / "sparse"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"top1": 50.0, "method": "debiaspl", "per_class_top1": "n/a", "pseudo_labels": None})
    )
    lines = [
        json.dumps({"epoch": 1, "top1": 40.0, "prior": None, "pseudo_label_counts": [1, 2, "x"], "mask_rate": "high"}),
        "{not json",
        json.dumps(
            {
                "epoch": 2,
                "top1": 45.0,
                "loss": float("nan"),
                "loss_u": 0.7,
                "prior": [0.5, 0.5],
                "pseudo_label_counts": [3, 9],
            }
        ),
        json.dumps([1, 2, 3]),
    ]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "config.json").write_text("[]")
    result = write_report(run)
    assert summary_value(result, "top-1 / top-5") == "50.0% / –"
    assert any("skipped 2 line(s)" in note for note in result.notes)
    assert any("config.json ignored" in note for note in result.notes)
    for image in result.images:
        assert_sane_png(image)


def test_resumed_run_keeps_one_record_per_epoch(tmp_path):
    run = make_run_folder(tmp_path / "resumed", epochs=3)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    redo = json.loads(lines[1]) | {"top1": 12.5}
    (run / "metrics.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(redo), lines[2]]) + "\n")
    from clipdebias.reporting.runs import read_run

    record = read_run(run)
    epochs, top1 = record.epoch_series("top1")
    assert epochs.tolist() == [1.0, 2.0, 3.0] and top1[1] == 12.5


def test_write_report_prints_nothing(tmp_path, capfd):
    write_report(make_pseudolabel_csv(tmp_path / "quiet.csv"))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def _csv_without_columns(tmp_path):
    path = tmp_path / "foreign.csv"
    path.write_text("index,path,score\n0,a.png,0.3\n")
    return path, "missing column(s) pseudo_label, confidence, raw_pseudo_label, raw_confidence"


def _empty_csv(tmp_path):
    path = make_pseudolabel_csv(tmp_path / "empty.csv")
    path.write_text(path.read_text().splitlines()[0] + "\n")
    return path, "has no rows"


def _label_outside_classes(tmp_path):
    path = make_pseudolabel_csv(tmp_path / "bad.csv", num_classes=4)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(meta | {"classes": ["a", "b"]}))
    return path, "lists 2 classes"


def _folder_without_metrics(tmp_path):
    (tmp_path / "somewhere").mkdir()
    return tmp_path / "somewhere", "is not a clipdebias run folder"


def _broken_metrics(tmp_path):
    run = make_run_folder(tmp_path / "broken")
    (run / "metrics.json").write_text('{"top1": 5')
    return run, "metrics.json is not valid JSON"


def _missing_path(tmp_path):
    return tmp_path / "nothing-here", "does not exist"


@pytest.mark.parametrize(
    "make_input",
    [_csv_without_columns, _empty_csv, _label_outside_classes, _folder_without_metrics, _broken_metrics, _missing_path],
)
def test_foreign_input_is_a_one_line_error(tmp_path, capsys, make_input):
    path, message = make_input(tmp_path)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_report(path)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_cli_import_stays_light():
    heavy = "('numpy', 'matplotlib', 'pandas', 'torch')"
    code = f"import sys, clipdebias.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("epochs, text", [(1, "1 epoch recorded"), (3, "3 epochs recorded")])
def test_the_input_line_counts_epochs_in_words(tmp_path, epochs, text):
    result = write_report(make_run_folder(tmp_path / "run", epochs=epochs))
    assert summary_value(result, "input").endswith(text)


def test_a_csv_of_image_files_gets_a_gallery(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "pl.csv", num_classes=8, rows_per_class=12)
    table = read_pseudolabels(csv)
    kept = np.flatnonzero((table.pseudo_label == 0) & (table.raw_pseudo_label == 0))
    best = int(kept[np.argmax(table.confidence[kept])])  # the first image the gallery reads: a broken file
    table = read_pseudolabels(attach_image_files(csv, broken=(best,)))

    found, why_not = build_gallery(table)
    assert why_not is None and found.classes == tuple(range(8))
    assert found.unreadable == 1 and "1 image file(s) could not be read" in found.caption
    for label, confident, changed in zip(found.classes, found.confident, found.changed, strict=True):
        assert len(confident) <= gallery.PER_KIND and len(changed) <= gallery.PER_KIND
        assert best not in [tile.row for tile in confident]
        for tile in confident:
            assert table.pseudo_label[tile.row] == table.raw_pseudo_label[tile.row] == label
            assert tile.image.shape == (gallery.THUMB - 2 * gallery.FRAME,) * 2 + (3,)  # 24 px images enlarged
        for tile in changed:
            assert table.pseudo_label[tile.row] == label != table.raw_pseudo_label[tile.row]
            assert tile.caption == f"was {table.classes[table.raw_pseudo_label[tile.row]]}"
        confidences = table.confidence[[tile.row for tile in confident]]
        assert (np.diff(confidences) <= 0).all()  # the most confident first
    assert sum(map(len, found.confident)) == 8 * gallery.PER_KIND - 1  # every class has 4 kept, but class 7
    assert any(found.changed)

    result = write_report(csv)
    assert [p.name for p in result.images][-1] == "gallery.png"
    with Image.open(result.out_dir / "gallery.png") as image:
        row_height = gallery.THUMB + gallery.CAPTION_HEIGHT + gallery.PAD
        assert image.size[0] >= 1000
        assert image.size[1] == gallery.HEADER_HEIGHT + 8 * row_height + gallery.FOOTER_HEIGHT
    assert "![Gallery](gallery.png)" in result.markdown.read_text()


def test_many_classes_show_twenty_in_the_gallery(tmp_path):
    csv = attach_image_files(
        make_pseudolabel_csv(tmp_path / "pl.csv", num_classes=50, rows_per_class=4), relative=False
    )
    table = read_pseudolabels(csv)
    found, _ = build_gallery(table)
    assert len(found.classes) == gallery.GALLERY_CLASSES
    assert "20 of 50 classes: those the correction moved the most images into" in found.caption
    moved = np.bincount(table.pseudo_label[table.pseudo_label != table.raw_pseudo_label], minlength=50)
    assert min(moved[list(found.classes)]) >= max(np.delete(moved, list(found.classes)))


def test_no_gallery_without_image_files(tmp_path):
    in_memory = write_report(make_pseudolabel_csv(tmp_path / "digits.csv", num_classes=10))
    assert "gallery.png" not in [p.name for p in in_memory.images]
    assert not (in_memory.out_dir / "gallery.png").exists()
    assert any(note.startswith("no gallery.png: the images are held in memory") for note in in_memory.notes)
    csv = attach_image_files(make_pseudolabel_csv(tmp_path / "moved" / "pl.csv", num_classes=4))
    for image in (tmp_path / "moved" / "images").iterdir():
        image.unlink()
    moved = write_report(csv)
    assert not (moved.out_dir / "gallery.png").exists()
    assert any("paths are not image files here" in note for note in moved.notes)
    run = write_report(make_run_folder(tmp_path / "zs", with_pseudolabels_csv=True))
    assert any(note.startswith("pseudolabels.csv: no gallery.png") for note in run.notes)


def _count_chart_labels(csv) -> tuple[list[str], str]:
    chart = next(c for c in pseudolabel_section(read_pseudolabels(csv)).charts if c.filename == "class_counts.png")
    labels = chart.figure.axes[0].get_legend_handles_labels()[1]
    return [label for label in labels if not label.startswith("flat: ")], chart.caption


def test_the_report_names_the_mode_and_draws_raw_paper_and_chosen_counts(tmp_path):
    """A balance + kNN CSV written by pseudolabel: its report says so, and the class-count chart has
    the raw, the paper default's and the chosen mode's counts (the paper's from the sidecar)."""
    from fakes import make_image_folder

    folder = make_image_folder(tmp_path / "data", per_class=8, val_per_class=1)
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 8)
    logits = (rng.normal(0, 1, (24, 3)) + 1.5 * np.eye(3)[truth]).astype(np.float32)
    logits[:, 0] += 1.5
    np.save(tmp_path / "t.npy", logits)
    np.save(tmp_path / "e.npy", (3 * np.eye(3)[truth] + rng.normal(0, 1, (24, 3))).astype(np.float32))
    args = ["pseudolabel", "--dataset", "imagefolder", "--data-root", str(folder), "--logits", str(tmp_path / "t.npy")]
    extra = ["--debias", "balance", "--knn", "4", "--embeddings", str(tmp_path / "e.npy"), "--cache-dir", str(tmp_path)]
    assert main([*args, *extra, "--out", str(tmp_path / "pl.csv")]) == 0
    markdown = (tmp_path / "pl_report" / "report.md").read_text()
    assert "| correction | balance + kNN (K 4, alpha 0.9) |" in markdown
    labels, description = _count_chart_labels(tmp_path / "pl.csv")
    assert labels == ["raw zero-shot", "paper (tau 0.4)", "balance + kNN (K 4, alpha 0.9)"]
    assert "paper's default correction (tau 0.4)" in description
    sidecar = json.loads((tmp_path / "pl.json").read_text())
    result = write_report(tmp_path / "pl.csv", tmp_path / "again")
    paper = np.array(sidecar["paper_class_counts"])
    chosen = np.bincount(pd.read_csv(tmp_path / "pl.csv")["pseudo_label"], minlength=3)
    expected = f"{paper.max() / max(paper.min(), 1):.1f}× → {chosen.max() / max(chosen.min(), 1):.1f}×"
    assert summary_value(result, "imbalance, all rows (paper default → balance + kNN (K 4, alpha 0.9))") == expected

    # the paper default itself: two curves, named by its tau
    assert main([*args, "--out", str(tmp_path / "paper.csv"), "--no-report"]) == 0
    assert _count_chart_labels(tmp_path / "paper.csv")[0] == ["raw zero-shot", "paper (tau 0.4)"]


def test_a_sidecar_without_paper_counts_draws_raw_vs_chosen_and_says_so(tmp_path):
    csv = make_pseudolabel_csv(tmp_path / "old.csv", num_classes=6, tau=1.0)
    labels, description = _count_chart_labels(csv)
    assert labels == ["raw zero-shot", "paper (tau 1)"]
    assert "paper's default correction is not drawn" in description
    assert "cannot be recomputed" in description
