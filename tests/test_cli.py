"""The command-line skeleton: help, version, info, and one-line errors with exit code 2."""

import os
import subprocess
import sys

import pytest

from clipdebias import __version__
from clipdebias.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"clipdebias {__version__}"


def test_help_lists_working_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "--version" in out


def test_no_arguments_shows_help(capsys):
    assert main([]) == 0
    assert "Usage" in capsys.readouterr().out


def test_info_reports_versions_and_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPDEBIAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for item in ("torch", "torchvision", "open_clip", "faiss", "GPU count", "faiss GPU count", "cache directory"):
        assert item in out
    assert str(tmp_path / "cache") in out


def test_unknown_command_is_one_line_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("local_rank, shown", [("0", True), ("1", False), ("7", False)])
def test_under_torchrun_the_first_process_of_a_node_prints_the_error_line(capsys, monkeypatch, local_rank, shown):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert main(["ssl", "--dataset", "digits", "--tau", "abc", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert (err.startswith("error: ") and "--tau" in err and err.count("\n") == 1) if shown else err == ""


@pytest.mark.parametrize(
    "entry", [[sys.executable, "-m", "clipdebias"], [os.path.join(os.path.dirname(sys.executable), "clipdebias")]]
)
def test_entry_points_run_as_processes(entry):
    done = subprocess.run([*entry, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"clipdebias {__version__}"
    bad = subprocess.run([*entry, "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_the_training_bar_ends_with_the_last_epochs_accuracy():
    """The bar's stats show the top-1 of the epoch that just ended, the last one included (no step
    follows it to refresh the line)."""
    import io

    from rich.console import Console

    from clipdebias.cli.train_view import TrainProgressView
    from clipdebias.training.loop import EpochEnd, StepProgress, TrainStart

    out = io.StringIO()
    with TrainProgressView(Console(file=out, width=200)) as view:
        view(TrainStart(start_epoch=0, epochs=2, steps_per_epoch=1))
        for epoch, top1 in enumerate((40.0, 87.5)):
            view(StepProgress(epoch=epoch, step=1, loss=0.5, mask_rate=0.25, pseudo_label_accuracy=None))
            view(EpochEnd(record={"epoch": epoch + 1, "top1": top1}))
    last = [line for line in out.getvalue().splitlines() if "epoch" in line][-1]
    assert "top1 87.5%" in last and "2/2" in last


def test_help_shows_the_defaults_written_in_the_help_texts(capsys, monkeypatch):
    """The defaults a help text states in click's ``[default: ...]`` style are shown (rich help
    took them for markup and dropped them)."""
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["encode", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Image decoding processes [default: 0 on CPU, up to 8 with a GPU]." in out
    assert "[default: $CLIPDEBIAS_CACHE or ~/.cache/clipdebias]" in out
