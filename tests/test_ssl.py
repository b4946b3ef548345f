"""``clipdebias ssl`` end to end with tiny settings: every dataset kind, the run folder format,
FixMatch = DebiasPL at tau 0, determinism, kill -9 + resume, fallback labels and user errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fakes import StopTraining, make_cifar_root, make_image_folder, stop_after_first_epoch

from clipdebias.cli import main
from clipdebias.commands.ssl import read_clip_pseudolabels, resolve_ssl_config, run_ssl
from clipdebias.reporting.compare import compare_runs
from clipdebias.utils.errors import UserError

TINY_WITH_REPORT = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4", "--mu", "2", "--device", "cpu"]
TINY = [*TINY_WITH_REPORT, "--no-report"]
EPOCH_KEYS = {
    "epoch",
    "step",
    "lr",
    "loss",
    "loss_x",
    "loss_u",
    "mask_rate",
    "pseudo_label_accuracy",
    "pseudo_label_counts",
    "imbalance_ratio",
    "prior",
    "prior_entropy",
    "top1",
    "top5",
    "elapsed_s",
}
# Everything of metrics.json that does not depend on the clock or on how the run was started.
STABLE = ("method", "top1", "top5", "per_class_top1", "pseudo_labels", "prior", "steps", "labeled_images")


def _ssl(args, tmp_path, name="run"):
    out = tmp_path / name
    assert main(["ssl", *args, "--out", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def _index(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_digits_run_folder_follows_the_format(tmp_path, capsys):
    out, metrics = _ssl(["--dataset", "digits", "--labels", "2-per-class", *TINY_WITH_REPORT], tmp_path)
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "labeled_index.csv",
        "unlabeled_index.csv",
        "metrics.jsonl",
        "metrics.json",
        "checkpoint.pt",
        "report",
    }
    # The report is written automatically at the end of the run, and the terminal says where.
    assert (out / "report" / "report.md").is_file()
    assert any(p.suffix == ".png" for p in (out / "report").iterdir())
    config = json.loads((out / "config.json").read_text())
    assert (
        config["command"] == "ssl"
        and config["method"] == "balanced"
        and config["classes"] == [str(c) for c in range(10)]
    )
    # Given options win, the rest are the digits defaults.
    assert (config["debias"], config["tau"], config["threshold"], config["prior_momentum"], config["ema_momentum"]) == (
        "balance",
        0.0,  # tau is for --debias paper only
        0.95,
        0.99,
        0.99,
    )
    assert (config["batch_size"], config["mu"], config["steps_per_epoch"], config["arch"]) == (4, 2, 3, "cnn")
    labeled, unlabeled = _index(out / "labeled_index.csv"), _index(out / "unlabeled_index.csv")
    assert list(labeled[0]) == ["index", "path", "label"]
    assert len(labeled) == 20 and len(unlabeled) == 1257 - 20
    assert sorted(int(r["label"]) for r in labeled) == sorted(list(range(10)) * 2)
    assert not {r["index"] for r in labeled} & {r["index"] for r in unlabeled}
    assert labeled[0]["path"] == f"digits:train/{labeled[0]['index']}"
    history = _history(out)
    assert [r["epoch"] for r in history] == [1, 2] and [r["step"] for r in history] == [3, 6]
    assert all(set(r) == EPOCH_KEYS for r in history)
    assert len(history[-1]["prior"]) == 10 and sum(history[-1]["prior"]) == pytest.approx(1.0, abs=1e-5)
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    assert metrics["method"] == "balanced" and metrics["dataset"] == "digits" and metrics["num_classes"] == 10
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100 and len(metrics["per_class_top1"]) == 10
    assert metrics["top1"] == history[-1]["top1"] and metrics["eval_images"] == 540
    pl = metrics["pseudo_labels"]
    assert set(pl) == {"mask_rate", "accuracy", "class_counts", "imbalance_ratio"}
    assert pl["class_counts"] == history[-1]["pseudo_label_counts"] and 0 <= pl["mask_rate"] <= 1
    assert pl["imbalance_ratio"] == max(pl["class_counts"]) / max(min(pl["class_counts"]), 1)
    captured = capsys.readouterr()
    assert "top-1 (val, 540 images)" in captured.out and "pseudo-labels: imbalance ratio" in captured.out


def test_image_folder_run_with_resnet18(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=5, val_per_class=2, size=16)
    out, metrics = _ssl(
        [
            "--dataset",
            "imagefolder",
            "--data-root",
            str(root),
            "--labels",
            "1-per-class",
            "--arch",
            "resnet18",
            "--image-size",
            "16",
            "--workers",
            "0",
            "--multiviews",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "2",
            "--mu",
            "1",
            "--device",
            "cpu",
        ],
        tmp_path,
    )
    assert metrics["num_classes"] == 3 and metrics["classes"] == ["cat", "dog", "red_fox"]
    assert metrics["eval_images"] == 6 and metrics["labeled_images"] == 3 and metrics["unlabeled_images"] == 12
    assert _index(out / "labeled_index.csv")[0]["path"].endswith(".png")
    assert json.loads((out / "config.json").read_text())["multiviews"] is True


def test_cifar_run(tmp_path):
    root = make_cifar_root(tmp_path / "data", "cifar10", per_class_train=2, per_class_val=1)
    out, metrics = _ssl(
        [
            "--dataset",
            "cifar10",
            "--data-root",
            str(root),
            "--labels",
            "1-per-class",
            "--arch",
            "cnn",
            "--image-size",
            "16",
            "--workers",
            "0",
            *TINY,
        ],
        tmp_path,
    )
    assert metrics["labeled_images"] == 10 and metrics["unlabeled_images"] == 90 and metrics["eval_images"] == 10
    assert len(_history(out)) == 2


def test_debias_none_and_no_debias_equal_tau_zero_and_are_fixmatch(tmp_path):
    _, a = _ssl(["--dataset", "digits", "--no-debias", *TINY], tmp_path, "a")
    _, b = _ssl(["--dataset", "digits", "--tau", "0", *TINY], tmp_path, "b")
    _, n = _ssl(["--dataset", "digits", "--debias", "none", *TINY], tmp_path, "n")
    assert a["method"] == b["method"] == n["method"] == "fixmatch"
    assert a["prior"] is None and _history(tmp_path / "a")[-1]["prior"] is None
    assert {k: a[k] for k in STABLE} == {k: b[k] for k in STABLE} == {k: n[k] for k in STABLE}
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(_history(tmp_path / "n")) == strip(_history(tmp_path / "b"))
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in "abn"]
    assert [(c["debias"], c["tau"]) for c in configs] == [("none", 0.0)] * 3
    # the same run, debiased (--tau alone means --debias paper), and balanced (the digits default)
    _, c = _ssl(["--dataset", "digits", "--tau", "0.4", *TINY], tmp_path, "c")
    assert c["method"] == "debiaspl" and c["prior"] is not None
    assert json.loads((tmp_path / "c" / "config.json").read_text())["debias"] == "paper"
    _, d = _ssl(["--dataset", "digits", *TINY], tmp_path, "d")
    assert d["method"] == "balanced" and json.loads((tmp_path / "d" / "config.json").read_text())["debias"] == "balance"


def test_debias_balance_is_the_balanced_method_and_checkpoints_its_offsets(tmp_path):
    out, balanced = _ssl(["--dataset", "digits", "--debias", "balance", *TINY], tmp_path, "balanced")
    config = json.loads((out / "config.json").read_text())
    assert (balanced["method"], config["method"], config["debias"], config["tau"]) == (
        "balanced",
        "balanced",
        "balance",
        0.0,
    )
    assert balanced["prior"] is not None and _history(out)[-1]["prior"] is not None
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["train_config"]["debias"] == "balance"
    assert not torch.equal(checkpoint["prior"]["offsets"], torch.zeros(10))


def _stop_resume_and_compare_with_a_full_run(tmp_path, out, given: dict) -> tuple[dict, dict, dict]:
    """Run digits ssl with ``given`` into ``out``, stopped after epoch 1, then resume it and train the
    same run uninterrupted under ``tmp_path / "full"``; asserts that both end alike (metrics, history).
    Returns the checkpoint at the stop and the final checkpoints of the resumed and the full run."""
    with pytest.raises(StopTraining):
        run_ssl(resolve_ssl_config("digits", out, **given), progress=stop_after_first_epoch)
    stopped = torch.load(out / "checkpoint.pt", weights_only=False)
    resumed = run_ssl(resolve_ssl_config("digits", out, resume=True, **given))
    full = run_ssl(resolve_ssl_config("digits", tmp_path / "full", **given))
    assert resumed["resumed_from_epoch"] == 1
    assert {k: resumed[k] for k in STABLE} == {k: full[k] for k in STABLE}
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(_history(out)) == strip(_history(tmp_path / "full"))
    a, b = (torch.load(o / "checkpoint.pt", weights_only=False) for o in (out, tmp_path / "full"))
    return stopped, a, b


def test_interrupted_balanced_run_resumes_with_its_offsets_as_if_uninterrupted(tmp_path):
    """The balanced mode's state (the offsets b and the prior) is in the checkpoint: a run stopped after
    epoch 1 continues exactly like one that never stopped, and resuming in another mode is refused."""
    given = dict(epochs=3, steps_per_epoch=6, batch_size=4, mu=2, device="cpu", seed=2, debias="balance")
    out = tmp_path / "stopped"
    stopped, a, b = _stop_resume_and_compare_with_a_full_run(tmp_path, out, given)
    assert stopped["epoch"] == 1 and not torch.equal(stopped["prior"]["offsets"], torch.zeros(10))
    assert torch.equal(a["prior"]["offsets"], b["prior"]["offsets"])
    for other in ("paper", "none"):
        with pytest.raises(UserError, match="debias"):
            run_ssl(resolve_ssl_config("digits", out, resume=True, **{**given, "debias": other}))


def test_a_fixmatch_run_resumes_under_either_spelling(tmp_path):
    """--no-debias, --debias none and --tau 0 are one training: a run started with one resumes with another."""
    given = dict(epochs=2, steps_per_epoch=3, batch_size=4, mu=2, device="cpu")
    out = tmp_path / "fixmatch"
    run_ssl(resolve_ssl_config("digits", out, no_debias=True, **given))
    assert run_ssl(resolve_ssl_config("digits", out, resume=True, tau=0.0, **given))["resumed_from_epoch"] == 2
    assert run_ssl(resolve_ssl_config("digits", out, resume=True, debias="none", **given))["method"] == "fixmatch"


def test_same_seed_same_metrics_other_seed_other_split(tmp_path):
    out_a, a = _ssl(["--dataset", "digits", "--seed", "3", *TINY], tmp_path, "a")
    out_b, b = _ssl(["--dataset", "digits", "--seed", "3", *TINY], tmp_path, "b")
    out_c, _ = _ssl(["--dataset", "digits", "--seed", "4", *TINY], tmp_path, "c")
    assert {k: a[k] for k in STABLE} == {k: b[k] for k in STABLE}
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(_history(out_a)) == strip(_history(out_b))
    assert _index(out_a / "labeled_index.csv") == _index(out_b / "labeled_index.csv")
    assert _index(out_a / "labeled_index.csv") != _index(out_c / "labeled_index.csv")


def test_killed_run_resumes_with_prior_and_teacher(tmp_path):
    args = [
        "ssl",
        "--dataset",
        "digits",
        "--epochs",
        "10",
        "--steps-per-epoch",
        "8",
        "--batch-size",
        "8",
        "--mu",
        "2",
        "--device",
        "cpu",
        "--seed",
        "1",
    ]
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-m", "clipdebias", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (lines.is_file() and lines.read_text().strip()):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    killed_after = checkpoint["epoch"]
    assert 1 <= killed_after < 10, "the run finished before it could be killed"
    assert not torch.allclose(checkpoint["prior"]["probs"], torch.full((10,), 0.1))
    assert any(not torch.equal(checkpoint["teacher"][k], checkpoint["model"][k]) for k in checkpoint["model"])

    # Without --resume the folder is protected; with it the run continues from its checkpoint.
    assert main([*args, "--out", str(out)]) == 2
    assert main([*args, "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == killed_after
    full_out, full = _ssl(args[1:], tmp_path, "uninterrupted")
    assert {k: resumed[k] for k in STABLE} == {k: full[k] for k in STABLE}
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(_history(out)) == strip(_history(full_out))
    # A finished run resumed again trains nothing more and reports the same metrics.
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert {k: json.loads((out / "metrics.json").read_text())[k] for k in STABLE} == {k: full[k] for k in STABLE}
    # Resuming with other training options is refused.
    assert main([*args, "--out", str(out), "--resume", "--tau", "1.0"]) == 2


def test_interrupted_run_with_copied_bn_and_ema_warmup_resumes_as_if_uninterrupted(tmp_path):
    """The teacher's update counter (the warm-up's t) is in the checkpoint: a run stopped after epoch 1,
    while the momentum is still warming up, continues exactly like one that never stopped."""
    given = dict(epochs=3, steps_per_epoch=6, batch_size=4, mu=2, device="cpu", seed=2, teacher_bn="copy")
    given["ema_warmup"] = True
    out = tmp_path / "stopped"
    checkpoint, a, b = _stop_resume_and_compare_with_a_full_run(tmp_path, out, given)
    assert checkpoint["epoch"] == 1 and checkpoint["teacher_updates"] == 6
    assert checkpoint["train_config"]["teacher_bn"] == "copy" and checkpoint["train_config"]["ema_warmup"] is True
    assert a["teacher_updates"] == b["teacher_updates"] == 18
    assert all(torch.equal(a["teacher"][k], b["teacher"][k]) for k in b["teacher"])
    # Resuming with another teacher is refused.
    with pytest.raises(UserError, match="teacher_bn"):
        run_ssl(resolve_ssl_config("digits", out, resume=True, **{**given, "teacher_bn": "ema"}))


@pytest.mark.parametrize(
    "debias", [{"tau": 0.4}, {"no_debias": True}, {"tau": 0.0}], ids=["debiaspl", "no-debias", "tau-0"]
)
def test_a_run_folder_from_before_the_teacher_and_debias_options_resumes_as_it_was_trained(tmp_path, debias):
    """config.json and checkpoint.pt written before --teacher-bn / --ema-warmup / --debias existed: the run
    was trained with the reference teacher (ema, no warm-up) and DebiasPL with its tau (FixMatch with tau 0),
    and resumes with exactly that."""
    given = dict(epochs=2, steps_per_epoch=3, batch_size=4, mu=2, device="cpu", teacher_bn="ema", ema_warmup=False)
    out = tmp_path / "old"
    run_ssl(resolve_ssl_config("digits", out, **given, **debias))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(
        json.dumps({k: v for k, v in config.items() if k not in ("teacher_bn", "ema_warmup", "debias")})
    )
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    for key in ("teacher_bn", "ema_warmup", "debias"):
        del checkpoint["train_config"][key]
    del checkpoint["teacher_updates"]
    torch.save(checkpoint, out / "checkpoint.pt")
    resumed = run_ssl(resolve_ssl_config("digits", out, resume=True, **given, **debias))
    assert resumed["resumed_from_epoch"] == 2 and resumed["method"] == config["method"]
    if "tau" in debias and debias["tau"] > 0:  # digits' default is now balance: an old DebiasPL run needs --tau
        with pytest.raises(UserError, match=r"other options \(debias, method, tau\)"):
            run_ssl(resolve_ssl_config("digits", out, resume=True, **given))


def test_labeled_index_is_reused(tmp_path):
    first, _ = _ssl(["--dataset", "digits", "--labels", "1-per-class", "--seed", "5", *TINY], tmp_path, "first")
    second, metrics = _ssl(
        ["--dataset", "digits", "--labeled-index", str(first / "labeled_index.csv"), "--seed", "9", *TINY],
        tmp_path,
        "second",
    )
    assert _index(second / "labeled_index.csv") == _index(first / "labeled_index.csv")
    assert metrics["labeled_images"] == 10


def test_holdout_evaluates_on_train_rows_outside_both_streams(tmp_path):
    out, metrics = _ssl(["--dataset", "digits", "--holdout", "0.2", *TINY], tmp_path)
    used = {r["index"] for name in ("labeled_index.csv", "unlabeled_index.csv") for r in _index(out / name)}
    assert metrics["eval_split"] == "holdout"
    assert metrics["eval_images"] + len(used) == 1257 and 240 <= metrics["eval_images"] <= 260


def test_clip_pseudolabels_fallback_run_and_validation(tmp_path, capsys):
    table = tmp_path / "clip.csv"
    table.write_text("index,pseudo_label,confidence\n" + "".join(f"{i},{i % 10},0.5\n" for i in range(1257)))
    out, metrics = _ssl(
        ["--dataset", "digits", "--clip-pseudolabels", str(table), "--threshold", "1.0", *TINY], tmp_path
    )
    # No student row reaches threshold 1.0; every unlabeled row falls back to its CLIP label (0.5 >= 0.3).
    assert metrics["pseudo_labels"]["mask_rate"] == 1.0
    assert json.loads((out / "config.json").read_text())["clip_fallback"] == 0.3
    targets, confidence = read_clip_pseudolabels(table, 1257, 10)
    assert targets[13] == 3 and confidence[13] == pytest.approx(0.5)
    for body, message in [
        ("index,label\n0,1\n", "lacks the column"),
        ("index,pseudo_label,confidence\n1257,1,0.5\n", "'index'"),
        ("index,pseudo_label,confidence\n0,10,0.5\n", "class ids"),
        ("index,pseudo_label,confidence\n0,1,1.5\n", "'confidence'"),
    ]:
        table.write_text(body)
        with pytest.raises(UserError, match=message):
            read_clip_pseudolabels(table, 1257, 10)
    capsys.readouterr()
    assert (
        main(["ssl", "--dataset", "digits", "--clip-pseudolabels", str(table), "--out", str(tmp_path / "bad"), *TINY])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'confidence'" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "digits", "--labels", "lots"], "--labels 'lots'"),
        (["--dataset", "digits", "--labels", "0-per-class"], "at least 1"),
        (["--dataset", "digits", "--labels", "200-per-class"], "fewer than the 200"),
        (["--dataset", "cifar10"], "needs --data-root"),
        (["--dataset", "imagefolder", "--data-root", "/nonexistent/data"], "not a directory"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--dataset", "digits", "--no-debias", "--tau", "0.4"], "--tau applies to --debias paper only"),
        (["--dataset", "digits", "--debias", "balance", "--tau", "0.4"], "--debias balance does not use it"),
        (["--dataset", "digits", "--debias", "none", "--tau", "0"], "--tau applies to --debias paper only"),
        (["--dataset", "digits", "--no-debias", "--debias", "balance"], "--debias balance contradicts --no-debias"),
        (["--dataset", "digits", "--debias", "both"], "unknown --debias 'both'"),
        (["--dataset", "digits", "--threshold", "1.5"], "--threshold"),
        (["--dataset", "digits", "--arch", "vgg"], "unknown --arch"),
        (["--dataset", "digits", "--teacher-bn", "recompute"], "unknown --teacher-bn 'recompute'"),
        (["--dataset", "digits", "--arch", "resnet18"], "grayscale"),
        (["--dataset", "digits", "--device", "tpu"], "--device"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    assert main(["ssl", *args, "--out", str(tmp_path / "run"), "--epochs", "1", "--steps-per-epoch", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["ssl", "--dataset", "digits", "--out", str(tmp_path / "file"), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cifar_root_missing_files(tmp_path, capsys):
    assert main(["ssl", "--dataset", "cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "cifar-100-python" in capsys.readouterr().err


def test_resolved_defaults_per_dataset():
    imagenet = resolve_ssl_config("imagenet", "out", data_root="/x")
    assert (imagenet.threshold, imagenet.lambda_u, imagenet.mu, imagenet.tau, imagenet.multiviews) == (
        0.7,
        10.0,
        5,
        0.4,
        True,
    )
    assert imagenet.steps_per_epoch is None and imagenet.arch == "resnet50" and imagenet.labels == "0.2pct"
    cifar = resolve_ssl_config("cifar10", "out", threshold=0.9, workers=1)
    assert (cifar.threshold, cifar.mu, cifar.steps_per_epoch, cifar.workers, cifar.method) == (
        0.9,
        7,
        1024,
        1,
        "debiaspl",
    )
    assert resolve_ssl_config("digits", "out", no_debias=True).method == "fixmatch"
    digits = resolve_ssl_config("digits", "out")
    assert (digits.debias, digits.tau, digits.method) == ("balance", 0.0, "balanced")  # chosen on held-out train
    assert resolve_ssl_config("digits", "out", tau=0.4).method == "debiaspl"  # --tau alone means --debias paper
    assert resolve_ssl_config("digits", "out", debias="paper").tau == 0.4
    assert (cifar.debias, imagenet.debias) == ("paper", "paper")


def test_unexpected_errors_are_not_masked(tmp_path, monkeypatch):
    def broken(config, progress=None):
        raise RuntimeError("boom")

    monkeypatch.setattr("clipdebias.commands.ssl.run_ssl", broken)
    with pytest.raises(RuntimeError, match="boom"):
        main(["ssl", "--dataset", "digits", "--out", str(tmp_path / "run")])


def test_clip_pseudolabels_of_another_dataset_are_refused(tmp_path):
    """A pseudo-label CSV carries the ground truth it was made with (``label``); where it disagrees
    with the train split's, the file belongs to another dataset."""
    truth = np.array([0, 1, 2, 0, 1, 2])
    table = tmp_path / "clip.csv"
    table.write_text(
        "index,label,pseudo_label,confidence\n" + "".join(f"{i},{t},{t},0.9\n" for i, t in enumerate(truth))
    )
    targets, _ = read_clip_pseudolabels(table, 6, 3, truth)
    assert targets.tolist() == truth.tolist()
    unknown = truth.copy()
    unknown[:3] = -1  # rows whose label the dataset does not know are not compared
    read_clip_pseudolabels(table, 6, 3, unknown)
    table.write_text("index,label,pseudo_label,confidence\n0,,1,0.9\n1,2,1,0.9\n2,2,1,0.9\n")  # row 1: 2, not 1
    with pytest.raises(
        UserError,
        match=r"row 1 says index 1 has label 2, the dataset says 1 \(1 such row; was the file written for another",
    ):
        read_clip_pseudolabels(table, 6, 3, truth)


def test_compare_groups_the_three_methods_by_name_with_no_note_about_their_own_settings(tmp_path):
    """fixmatch, debiaspl and balanced runs of the same seeds: three groups named by the method, paired
    gains over FixMatch, and no note that tau, debias or no_debias differ (they follow from the method)."""
    for seed in ("0", "1"):
        for mode in ("none", "paper", "balance"):
            _ssl(["--dataset", "digits", "--debias", mode, "--seed", seed, *TINY], tmp_path / "runs", f"{mode}{seed}")
    result = compare_runs([tmp_path / "runs"], tmp_path / "compare")
    assert sorted(group.name for group in result.groups) == ["balanced", "debiaspl", "fixmatch"]
    assert all(group.paired_gain is not None for group in result.groups if group is not result.groups[0])
    assert not [note for note in result.notes if "differ" in note], result.notes
