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
    assert "Image decoding processes. [default: 0 on CPU, up to 8 with a GPU]" in out
    assert "[default: $CLIPDEBIAS_CACHE or ~/.cache/clipdebias]" in out
    assert "Images per CLIP forward pass while encoding. [default: 64]" in out


COMMANDS = ("ssl", "encode", "pseudolabel", "zeroshot", "report", "compare", "info")
# The one flag of each concept (docs/usage.md, "Glossary"), per command that has it; and the old
# spellings, which work for one release but are hidden from --help.
NEW_FLAGS = {
    "ssl": ["--workers", "--threads", "--batch-size", "--threshold", "--precision"],
    "encode": ["--workers", "--threads", "--encode-batch-size", "--encode-precision"],
    "pseudolabel": ["--workers", "--threads", "--encode-batch-size", "--encode-precision", "--select-threshold"],
    "zeroshot": ["--workers", "--threads", "--batch-size", "--encode-batch-size", "--eval-batch-size",
                 "--threshold", "--select-threshold", "--precision", "--encode-precision"],
}  # fmt: skip
HIDDEN_FLAGS = {
    "encode": ["--num-workers", "--batch-size", "--precision"],
    "pseudolabel": ["--num-workers", "--batch-size", "--precision", "--threshold"],
    "zeroshot": ["--amp", "--no-amp"],
}


def _options_of(help_text: str) -> set[str]:
    return {word.rstrip(",") for line in help_text.splitlines() for word in line.split() if word.startswith("--")}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_reads_whole_at_80_columns(command, capsys, monkeypatch):
    """No line beyond 80 columns, no word cut with "…", no "(…]" bracket typo, every default stated
    in click's one form ("  [default: ...]") and the renamed options under their one name."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out and "(default" not in out, out
    for opening, closing in (("(", ")"), ("[", "]")):
        assert out.count(opening) == out.count(closing), out
    words = _options_of(out)
    assert set(NEW_FLAGS.get(command, [])) <= words, out
    assert not set(HIDDEN_FLAGS.get(command, [])) & words, out


class _Stop(Exception):
    """Raised by a stand-in for a command's run function, with the config it was given."""


def _capture(monkeypatch, module: str, function: str) -> list:
    import importlib

    seen = []

    def stand_in(config, *args, **kwargs):
        seen.append(config)
        raise _Stop

    monkeypatch.setattr(importlib.import_module(module), function, stand_in)
    return seen


RUNS = {
    "encode": ("clipdebias.commands.encode", "run_encode", ["encode", "--dataset", "digits"]),
    "pseudolabel": ("clipdebias.commands.pseudolabel", "run_pseudolabel",
                    ["pseudolabel", "--dataset", "digits", "--out", "x.csv"]),
    "zeroshot": ("clipdebias.commands.zeroshot.run", "run_zeroshot", ["zeroshot", "--dataset", "digits", "--out", "x"]),
    "ssl": ("clipdebias.commands.ssl", "run_ssl", ["ssl", "--dataset", "digits", "--out", "x"]),
}  # fmt: skip


def _config_of(monkeypatch, command: str, *extra: str):
    module, function, args = RUNS[command]
    seen = _capture(monkeypatch, module, function)
    with pytest.raises(_Stop):
        main([*args, *extra])
    return seen[0]


def _warning(old: str, new: str) -> str:
    return f"warning: {old} is deprecated; use {new} (the old name goes in the next release)\n"


@pytest.mark.parametrize(
    "command, old, value, new, read",
    [
        ("encode", "--num-workers", "3", "--workers", lambda c: c.workers == 3),
        ("encode", "--batch-size", "8", "--encode-batch-size", lambda c: c.encode_batch_size == 8),
        ("encode", "--precision", "bf16", "--encode-precision", lambda c: c.backbone.precision == "bf16"),
        ("pseudolabel", "--num-workers", "2", "--workers", lambda c: c.workers == 2),
        ("pseudolabel", "--batch-size", "8", "--encode-batch-size", lambda c: c.encode_batch_size == 8),
        ("pseudolabel", "--precision", "fp16", "--encode-precision", lambda c: c.backbone.precision == "fp16"),
        ("pseudolabel", "--threshold", "0.5", "--select-threshold", lambda c: c.select_threshold == 0.5),
    ],
)
def test_old_spellings_still_work_for_one_release(monkeypatch, capsys, command, old, value, new, read):
    config = _config_of(monkeypatch, command, old, value)
    assert read(config)
    assert capsys.readouterr().err == _warning(old, new)
    assert read(_config_of(monkeypatch, command, new, value)) and capsys.readouterr().err == ""
    assert main([*RUNS[command][2], old, value, new, value]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {old} is the old name of {new}; give {new} only"]


def test_the_defaults_of_the_renamed_options_come_from_the_table(monkeypatch):
    from clipdebias.config import defaults

    for command in ("encode", "pseudolabel"):
        config = _config_of(monkeypatch, command)
        assert (config.encode_batch_size, config.backbone.precision, config.workers, config.threads) == (
            defaults.ENCODE_BATCH_SIZE, defaults.ENCODE_PRECISION, None, None,
        )  # fmt: skip
        assert config.backbone.model == defaults.MODEL and config.backbone.pretrained == defaults.PRETRAINED
    assert _config_of(monkeypatch, "pseudolabel").select_threshold == defaults.SELECT_THRESHOLD
    zeroshot = _config_of(monkeypatch, "zeroshot")
    assert (zeroshot.precision, zeroshot.encode_precision) == (defaults.ZEROSHOT_PRECISION, defaults.ENCODE_PRECISION)


NOTE = (
    "note: zeroshot's --precision now sets the training precision, as in ssl; "
    "CLIP's encoding precision is --encode-precision\n"
)


def test_zeroshot_precision_replaces_amp(monkeypatch, capsys):
    assert _config_of(monkeypatch, "zeroshot", "--amp").precision == "bf16"
    assert capsys.readouterr().err == _warning("--amp", "--precision bf16")
    assert _config_of(monkeypatch, "zeroshot", "--no-amp").precision == "fp32"
    assert capsys.readouterr().err == _warning("--no-amp", "--precision fp32")
    config = _config_of(monkeypatch, "zeroshot", "--precision", "bf16", "--encode-precision", "fp16")
    assert (config.precision, config.encode_precision) == ("bf16", "fp16")
    assert capsys.readouterr().err == NOTE
    # fp16 would need a gradient scaler, which the zeroshot students do not have
    assert main([*RUNS["zeroshot"][2], "--precision", "fp16"]) == 2
    assert capsys.readouterr().err == NOTE + "error: unknown --precision 'fp16'; choose one of: auto, fp32, bf16\n"


@pytest.mark.parametrize("precision, amp", [("auto", None), ("bf16", True), ("fp32", False)])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_zeroshot_precision_trains_as_amp_did(precision, amp, device_type):
    """The old rule: ``amp if amp is not None else device is CUDA``."""
    from clipdebias.commands.zeroshot.config import resolve_zeroshot_config

    config = resolve_zeroshot_config("digits", "unused", precision=precision)
    assert config.trains_in_bf16(device_type) == (amp if amp is not None else device_type == "cuda")


@pytest.mark.parametrize("command", ["ssl", "encode", "pseudolabel", "zeroshot"])
def test_every_command_takes_threads(monkeypatch, command):
    assert _config_of(monkeypatch, command, "--threads", "2").threads == 2


def test_torch_threads_are_set_for_the_run_and_restored():
    import torch

    from clipdebias.utils.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_help_and_option_errors_do_not_import_torch():
    code = (
        "import sys; from clipdebias.cli import main; "
        "assert main(['zeroshot', '--help']) == 0; assert main(['encode', '--dataset', 'x', '--workers', '-1']) == 2; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
