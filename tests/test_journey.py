"""What a new user meets on a first walk through the README: Ctrl-C, ``~`` in paths, help at 80
columns, ``compare`` groups, summaries of runs without confident pseudo-labels, and errors that must
come before a run folder is started."""

import json

import pytest
from fakes import make_pseudolabel_csv, make_run_folder

from clipdebias.cli import main
from clipdebias.reporting.compare import compare_runs


@pytest.mark.parametrize(
    "command, patched, hint",
    [
        (["report", "anything"], "clipdebias.reporting.report.write_report", None),
        (["ssl", "--dataset", "digits", "--out", "unused"], "clipdebias.commands.ssl.run_ssl", "--resume"),
    ],
)
def test_ctrl_c_in_a_command_says_interrupted_and_how_to_continue(capsys, monkeypatch, command, patched, hint):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(patched, interrupt)
    assert main(command) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted") and err.count("\n") == 1 and "Traceback" not in err
    assert (hint in err) if hint else err == "interrupted\n"


def test_report_and_compare_expand_a_tilde_as_the_other_commands_do(tmp_path, monkeypatch, capsys):
    """A quoted path (needed for spaces) keeps its ``~``: every command must expand it, not only the
    training ones."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    make_run_folder(tmp_path / "my runs" / "fixmatch", method="fixmatch", epochs=2)
    make_run_folder(tmp_path / "my runs" / "debiaspl", epochs=2)
    make_pseudolabel_csv(tmp_path / "my labels.csv", num_classes=3, rows_per_class=4)

    assert main(["report", "~/my runs/debiaspl", "--out", "~/reports/run"]) == 0
    assert (tmp_path / "reports" / "run" / "report.md").is_file()
    assert main(["report", "~/my labels.csv"]) == 0
    assert (tmp_path / "my labels_report" / "report.md").is_file()
    assert main(["compare", "~/my runs/fixmatch", "~/my runs/debiaspl", "--out", "~/cmp out"]) == 0
    assert (tmp_path / "cmp out" / "compare.md").is_file()
    assert not (tmp_path / "~").exists() and "error" not in capsys.readouterr().err


COMMANDS = ("info", "ssl", "encode", "pseudolabel", "zeroshot", "report", "compare")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reads_whole_at_80_columns(capsys, monkeypatch, command):
    """No line wider than the terminal, no description cut short ("…", or a command summary ending
    in "..."), and "[default: ...]" in a description is text, not markup that vanishes."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: clipdebias" in out and "--help" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    if command == "":
        listed = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in COMMANDS]
        assert [words[0] for words in listed] == list(COMMANDS)
        assert not any(words[-1].endswith("...") for words in listed)
    if command in ("pseudolabel", "zeroshot", "encode"):
        assert "[default: $CLIPDEBIAS_CACHE or" in " ".join(out.split())


def _run(path, **config_changes):
    """A fabricated finished ssl run whose config.json differs from the default by ``config_changes``."""
    make_run_folder(path, epochs=2)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_compare_keeps_debiaspl_with_clip_zeroshot_and_other_networks_in_their_own_groups(tmp_path):
    """The paper's DebiasPL vs "DebiasPL w/ CLIP", an ssl run vs a zeroshot run, a CNN vs a ResNet:
    the same method and seed, but never one pooled group."""
    runs = [
        _run(tmp_path / "debiaspl", command="ssl", arch="cnn"),
        _run(tmp_path / "with_clip", command="ssl", arch="cnn", clip_pseudolabels="labels.csv"),
        _run(tmp_path / "resnet", command="ssl", arch="resnet18"),
        _run(tmp_path / "zeroshot", command="zeroshot", student="head", labels=None),
    ]
    result = compare_runs(runs, tmp_path / "out")
    names = [group.name for group in result.groups]
    assert len(names) == 4 and all(len(group.runs) == 1 for group in result.groups)
    assert names[1] == "debiaspl command=ssl arch=cnn labels=1-per-class clip_pseudolabels=labels.csv"
    assert names[3] == "debiaspl command=zeroshot student=head"  # no "arch=–" for a key it does not have
    assert not result.notes


def test_compare_notes_a_group_that_pools_runs_of_one_seed_with_other_settings(tmp_path, capsys):
    runs = [_run(tmp_path / "cnn", arch="cnn"), _run(tmp_path / "resnet", arch="resnet18", lr=0.1)]
    assert main(["compare", *map(str, runs), "--by", "method", "--out", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "debiaspl: seed 0 appears more than once; its runs differ in arch, lr: add them to --by" in out


def test_compare_table_wraps_the_long_group_names_not_the_numbers():
    import io

    from rich.console import Console

    from clipdebias.cli.render import column_table

    header = ["group", "runs", "seeds", "top-1 %", "Δ top-1", "PL acc. %", "mask rate", "imbalance"]
    rows = [
        ["debiaspl command=ssl arch=resnet18 labels=1pct threshold=0.95",
         "1", "0", "33.3", "baseline", "–", "0.00", "0.0×"],
        ["debiaspl command=zeroshot student=head threshold=0.8",
         "1", "0", "33.3", "+0.0 (n=1)", "37.5", "1.00", "5.0×"],
    ]  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=100).print(column_table("title", header, rows))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    for whole in ("baseline", "+0.0 (n=1)", "PL acc. %", "imbalance", "mask rate"):
        assert whole in text


def test_a_run_without_confident_pseudo_labels_shows_no_imbalance_ratio(tmp_path, capsys, monkeypatch):
    """metrics.json records 0.0 when no pseudo-label reached the threshold; the summaries must not
    show it as a ratio of 0 (a perfectly balanced labelling reads 1.0)."""
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "run"
    tiny = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--mu", "2", "--no-report"]
    assert main(["ssl", "--dataset", "digits", "--out", str(out), *tiny]) == 0
    pseudo_labels = json.loads((out / "metrics.json").read_text())["pseudo_labels"]
    assert pseudo_labels["mask_rate"] == 0.0 and pseudo_labels["imbalance_ratio"] == 0.0
    assert main(["report", str(out)]) == 0
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    rows = [
        line.split("│") for line in capsys.readouterr().out.splitlines() if "imbalance" in line or "debiaspl │" in line
    ]
    ssl_row, report_row = ([cell.strip() for cell in row if cell.strip()] for row in rows[:2])
    assert ssl_row == ["pseudo-labels: imbalance ratio", "-"] and report_row == ["imbalance ratio", "–"]
    assert "0.0×" not in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_bad_init_weights_file_does_not_leave_a_run_that_blocks_the_corrected_command(tmp_path, capsys):
    out, weights = tmp_path / "run", tmp_path / "weights.pth"
    weights.write_bytes(b"not a state dict")
    tiny = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--mu", "1", "--no-report"]
    assert main(["ssl", "--dataset", "digits", "--out", str(out), "--init-weights", str(weights), *tiny]) == 2
    assert "--init-weights" in capsys.readouterr().err
    assert not (out / "config.json").exists()
    assert main(["ssl", "--dataset", "digits", "--out", str(out), *tiny]) == 0  # not "already holds a run"
    assert (out / "metrics.json").is_file()


def test_a_short_imagenet_run_says_the_default_warm_up_is_what_is_too_long(tmp_path, capsys):
    """--epochs 2 with imagenet's default 5-epoch warm-up: the user never typed --warmup-epochs,
    so the message must say its value and where it comes from."""
    assert (
        main(
            [
                "ssl",
                "--dataset",
                "imagenet",
                "--data-root",
                str(tmp_path),
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is 5 (given, or the default" in err and "--epochs is 2" in err
    assert not (tmp_path / "r").exists()  # refused before anything is written
