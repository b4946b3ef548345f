"""What a new user meets on a first walk through the README: Ctrl-C, ``~`` in paths, help at 80
columns, ``compare`` groups, summaries of runs without confident pseudo-labels, and errors that must
come before a run folder is started."""

import pytest

from clipdebias.cli import main
from fakes import make_pseudolabel_csv, make_run_folder


@pytest.mark.parametrize(
    "command, patched, hint",
    [
        (["report", "anything"], "clipdebias.report.write_report", None),
        (["ssl", "--dataset", "digits", "--out", "unused"], "clipdebias.ssl.run_ssl", "--resume"),
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
