"""What a new user meets on a first walk through the README: Ctrl-C, ``~`` in paths, help at 80
columns, ``compare`` groups, summaries of runs without confident pseudo-labels, and errors that must
come before a run folder is started."""

import pytest

from clipdebias.cli import main


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
