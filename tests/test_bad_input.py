"""Bad input (docs/reliability.md, "Bad input"): every wrong option value, data root, prompt file,
logits or index file, unwritable output or cache, and CUDA without a GPU ends a command with exit
code 2 and exactly one stderr line, ``error: ...``, that names the problem; no traceback unless
``--debug`` asks for one."""

import datetime
import errno
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from fakes import make_image_folder, make_run_folder

from clipdebias.cli import main

MODEL = ["--model", "{tiny}", "--pretrained", "none", "--device", "cpu", "--cache-dir", "{cache}"]
DATA = ["--dataset", "imagefolder", "--data-root", "{root}"]
SSL = [
    "ssl", *DATA, "--labels", "1-per-class", "--arch", "cnn", "--image-size", "16", "--epochs", "1",
    "--steps-per-epoch", "1", "--batch-size", "2", "--mu", "1", "--workers", "0", "--device", "cpu", "--out", "{out}",
]  # fmt: skip
ZEROSHOT = [
    "zeroshot", *DATA, *MODEL, "--templates", "simple", "--select-topk-per-class", "1", "--epochs", "1",
    "--steps-per-epoch", "1", "--workers", "0", "--threads", "1", "--no-report", "--out", "{out}",
]  # fmt: skip
PSEUDOLABEL = ["pseudolabel", *DATA, *MODEL, "--templates", "simple", "--out", "{csv}"]
LOGITS = ["pseudolabel", *DATA, "--out", "{csv}"]  # a teacher's logits: no CLIP option applies
ENCODE = ["encode", *DATA, *MODEL]
WITH_DATA = {"ssl": SSL, "zeroshot": ZEROSHOT, "pseudolabel": PSEUDOLABEL, "encode": ENCODE}


def _each(options, message, commands=tuple(WITH_DATA)):
    """The same bad option for every command that reads a dataset (or those of ``commands``)."""
    return [(f"{name} {' '.join(options)}", [*WITH_DATA[name], *options], message) for name in commands]


# (case, arguments, a piece of the one-line message). A later option overrides an earlier one.
CASES = [
    # option values that are not numbers, out of range, NaN or infinite
    ("ssl --tau abc", [*SSL, "--tau", "abc"], "Invalid value for '--tau'"),
    ("ssl --seed 1.5", [*SSL, "--seed", "1.5"], "Invalid value for '--seed'"),
    ("zeroshot --threshold x", [*ZEROSHOT, "--threshold", "x"], "Invalid value for '--threshold'"),
    ("pseudolabel --tau abc", [*PSEUDOLABEL, "--tau", "abc"], "Invalid value for '--tau'"),
    ("encode --encode-batch-size abc", [*ENCODE, "--encode-batch-size", "abc"], "for '--encode-batch-size'"),
    ("ssl --tau -1", [*SSL, "--tau", "-1"], "--tau must be >= 0"),
    ("ssl --threshold 1.5", [*SSL, "--threshold", "1.5"], "--threshold must be in [0, 1]"),
    ("ssl --prior-momentum 1", [*SSL, "--prior-momentum", "1"], "--prior-momentum must be in [0, 1)"),
    ("ssl --ema-momentum 1.2", [*SSL, "--ema-momentum", "1.2"], "--ema-momentum must be in [0, 1)"),
    ("ssl --holdout 1", [*SSL, "--holdout", "1"], "--holdout must be in [0, 1)"),
    ("ssl --labels 0pct", [*SSL, "--labels", "0pct"], "--labels '0pct'"),
    ("ssl --labels 50-per-class", [*SSL, "--labels", "50-per-class"], "fewer than the 50 labeled images"),
    ("ssl --mu 0", [*SSL, "--mu", "0"], "--mu must be >= 1"),
    ("ssl --warmup-epochs 5", [*SSL, "--warmup-epochs", "5"], "--warmup-epochs must be in [0, --epochs]"),
    ("ssl --seed -1", [*SSL, "--seed", "-1"], "--seed must be in [0, 2**63)"),
    ("ssl --prefetch-factor 0", [*SSL, "--prefetch-factor", "0"], "--prefetch-factor must be >= 1"),
    ("ssl --clip-fallback 2", [*SSL, "--clip-fallback", "2"], "--clip-fallback must be in [0, 1]"),
    ("ssl --lr inf", [*SSL, "--lr", "inf"], "--lr must be a finite number"),
    ("ssl --threshold nan", [*SSL, "--threshold", "nan"], "--threshold must be a finite number"),
    ("ssl --weight-decay inf", [*SSL, "--weight-decay", "inf"], "--weight-decay must be a finite number"),
    ("zeroshot --tau nan", [*ZEROSHOT, "--tau", "nan"], "--tau must be a finite number"),
    ("zeroshot --lambda-u inf", [*ZEROSHOT, "--lambda-u", "inf"], "--lambda-u must be a finite number"),
    ("zeroshot --feature-dropout 1", [*ZEROSHOT, "--feature-dropout", "1"], "--feature-dropout must be in [0, 1)"),
    ("zeroshot --select-threshold 2", [*ZEROSHOT, "--select-threshold", "2"], "--select-threshold must be in [0, 1]"),
    ("zeroshot --logit-scale 0", [*ZEROSHOT, "--logit-scale", "0"], "--logit-scale must be > 0"),
    ("zeroshot --seed -1", [*ZEROSHOT, "--seed", "-1"], "--seed must be in [0, 2**63)"),
    ("zeroshot --threads 0", [*ZEROSHOT, "--threads", "0"], "Invalid value for '--threads'"),
    ("pseudolabel --select-threshold 2", [*PSEUDOLABEL, "--select-threshold", "2"], "--select-threshold must be in"),
    ("pseudolabel --tau inf", [*PSEUDOLABEL, "--tau", "inf"], "--tau must be a finite number"),
    ("pseudolabel --logit-scale nan", [*PSEUDOLABEL, "--logit-scale", "nan"], "--logit-scale must be a finite number"),
    ("pseudolabel --logit-scale -1", [*PSEUDOLABEL, "--logit-scale", "-1"], "--logit-scale must be > 0"),
    ("encode --chunk-size 0", [*ENCODE, "--chunk-size", "0"], "Invalid value for '--chunk-size'"),
    (
        "compare --by unknown",
        ["compare", "{run}", "--by", "metod", "--out", "{out}"],
        "--by metod: no run has this key",
    ),
    # unknown names
    *_each(["--dataset", "nope"], "unknown dataset 'nope'"),
    *_each(["--device", "gpu"], "unknown --device 'gpu'"),
    *_each(["--device", "cuda"], "torch sees no CUDA GPU here"),
    *_each(["--precision", "fp8"], "unknown --precision 'fp8'", ["ssl"]),
    *_each(["--encode-precision", "fp8"], "unknown --encode-precision 'fp8'", ["zeroshot", "pseudolabel", "encode"]),
    ("ssl --arch vgg", [*SSL, "--arch", "vgg"], "unknown --arch 'vgg'"),
    ("zeroshot --student vit", [*ZEROSHOT, "--student", "vit"], "unknown --student 'vit'"),
    ("zeroshot --head deep", [*ZEROSHOT, "--head", "deep"], "unknown --head 'deep'"),
    ("encode --model", [*ENCODE, "--model", "ViT-B-33"], "--model ViT-B-33 is not an open_clip model name"),
    ("encode --split test", [*ENCODE, "--split", "test"], "unknown split 'test'"),
    ("ssl unknown option", [*SSL, "--tua", "0.4"], "No such option: --tua"),
    # data roots
    *_each(["--data-root", "{nowhere}"], "is not a directory"),
    *_each(["--data-root", "{empty}"], "train' does not exist"),
    *_each(["--data-root", "{no_classes}"], "has no class folders"),
    *_each(["--data-root", "{empty_class}"], "has no image files"),
    ("ssl train/val mismatch", [*SSL, "--data-root", "{mismatch}"], "class folders of val/ and train/ differ"),
    ("encode train/val mismatch", [*ENCODE, "--data-root", "{mismatch}", "--split", "val"], "differ"),
    ("ssl no --data-root", ["ssl", "--dataset", "imagefolder", "--out", "{out}"], "needs --data-root DIR"),
    ("ssl cifar10 missing", [*SSL, "--dataset", "cifar10", "--data-root", "{empty}"], "cifar10 not found"),
    *_each(
        ["--data-root", "{one_class}"],
        "has 1 class folder (cat); pseudo-labels and training need at least 2 classes",
        ("ssl", "zeroshot", "pseudolabel"),
    ),
    *_each(["--dataset", "digits"], "--data-root does not apply to --dataset digits"),
    ("zeroshot digits clip", [*ZEROSHOT, "--dataset", "digits", "--student", "clip"], "--student clip needs RGB"),
    ("ssl digits resnet18", [*SSL, "--dataset", "digits", "--arch", "resnet18"], "--arch resnet18 needs RGB images"),
    # class names and templates
    ("pseudolabel empty classnames", [*PSEUDOLABEL, "--classnames", "{empty_file}"], "has 0 class names"),
    ("zeroshot wrong classnames count", [*ZEROSHOT, "--classnames", "{two_names}"], "has 2 class names"),
    ("pseudolabel empty templates", [*PSEUDOLABEL, "--templates", "{empty_file}"], "no templates"),
    (
        "zeroshot template without {}",
        [*ZEROSHOT, "--templates", "{no_braces}"],
        "line 1: template 'a photo of a thing'",
    ),
    (
        "pseudolabel two {}",
        [*PSEUDOLABEL, "--templates", "{two_fields}"],
        "line 3: template 'a {} of a {}.' has 2 fields",
    ),
    ("zeroshot {0}", [*ZEROSHOT, "--templates", "{indexed}"], "has the field '{0}'; give a plain '{}'"),
    ("pseudolabel lone brace", [*PSEUDOLABEL, "--templates", "{lone_brace}"], "Single '}' encountered"),
    ("pseudolabel missing templates", [*PSEUDOLABEL, "--templates", "{nowhere}"], "no such file"),
    # --logits files
    ("logits wrong shape", [*LOGITS, "--logits", "{logits_short}"], "expected [12, 3]"),
    ("logits one-dimensional", [*LOGITS, "--logits", "{logits_1d}"], "expected [12, 3]"),
    ("logits NaN", [*LOGITS, "--logits", "{logits_nan}"], "row 0 holds NaN or infinite values"),
    ("logits inf", [*LOGITS, "--logits", "{logits_inf}"], "row 0 holds NaN or infinite values"),
    ("logits integers", [*LOGITS, "--logits", "{logits_int}"], "expected floating-point logits"),
    ("logits not npy", [*LOGITS, "--logits", "{empty_file}"], "is not a .npy array"),
    *[
        (
            f"logits with {flag}",
            [*LOGITS, "--logits", "{logits_ok}", flag, *value],
            f"{flag} does not apply with --logits",
        )
        for flag, *value in [
            ("--model", "RN50"),
            ("--pretrained", "openai"),
            ("--quick-gelu",),
            ("--encode-precision", "fp16"),
            ("--templates", "simple"),
            ("--logit-scale", "50"),
            ("--encode-batch-size", "8"),
            ("--workers", "2"),
            ("--cache-dir", "{cache}"),
            ("--chunk-size", "8"),
        ]
    ],
    # --labeled-index and --clip-pseudolabels
    ("labeled-index columns", [*SSL, "--labeled-index", "{index_columns}"], "lacks the column(s) index, label"),
    ("labeled-index range", [*SSL, "--labeled-index", "{index_range}"], "'index' must hold integers in [0, 12)"),
    ("labeled-index empty", [*SSL, "--labeled-index", "{empty_file}"], "cannot read --labeled-index"),
    ("clip-pseudolabels columns", [*SSL, "--clip-pseudolabels", "{pl_columns}"], "lacks the column(s) confidence"),
    ("clip-pseudolabels range", [*SSL, "--clip-pseudolabels", "{pl_range}"], "'pseudo_label' must hold class ids"),
    ("init-weights garbage", [*SSL, "--init-weights", "{empty_file}"], "is not a checkpoint; expected a state dict"),
    # outputs and caches where a file is in the way
    ("ssl --out is a file", [*SSL, "--out", "{a_file}"], "is a file; give a folder"),
    ("zeroshot --out inside a file", [*ZEROSHOT, "--out", "{inside_file}"], "which is a file; give a folder"),
    ("pseudolabel --out inside a file", [*PSEUDOLABEL, "--out", "{inside_file}/x.csv"], "is a file; give a folder"),
    ("pseudolabel --reference-format", [*PSEUDOLABEL, "--reference-format", "{a_file}"], "is a file; give a folder"),
    *_each(["--cache-dir", "{inside_file}"], "cache directory (--cache-dir)", ("zeroshot", "pseudolabel", "encode")),
    ("report --out inside a file", ["report", "{run}", "--out", "{inside_file}"], "is a file, not a folder"),
    ("compare --out inside a file", ["compare", "{run}", "--out", "{inside_file}"], "is a file, not a folder"),
    (
        "ssl every train image unreadable",
        [*SSL, "--data-root", "{all_broken}"],
        "none of the 3 labeled images can be read",
    ),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_clip_path):
    base = tmp_path_factory.mktemp("bad_input")
    root = make_image_folder(base / "data", per_class=4, val_per_class=2, size=16)
    (base / "empty").mkdir()
    (base / "no_classes" / "train").mkdir(parents=True)
    empty_class = make_image_folder(base / "empty_class", per_class=2, val_per_class=1, size=16)
    shutil.rmtree(empty_class / "train" / "dog")
    (empty_class / "train" / "dog").mkdir()
    (empty_class / "train" / "dog" / "notes.txt").write_text("not an image")
    mismatch = make_image_folder(base / "mismatch", per_class=2, val_per_class=1, size=16)
    (mismatch / "val" / "dog").rename(mismatch / "val" / "wolf")
    one_class = make_image_folder(base / "one_class", classes=("cat",), per_class=2, val_per_class=1, size=16)
    all_broken = make_image_folder(base / "all_broken", per_class=2, val_per_class=1, size=16)
    for image in (all_broken / "train").rglob("*.png"):
        image.write_bytes(b"")
    texts = {
        "empty_file": "", "two_names": "cat\ndog\n", "no_braces": "a photo of a thing\n", "a_file": "x",
        "two_fields": "a photo of a {}.\n\na {} of a {}.\n", "indexed": "a photo of a {0}.\n",
        "lone_brace": "a photo of a {}}.\n",
        "index_columns": "foo,bar\n1,2\n", "index_range": "index,path,label\n99,x,0\n",
        "pl_columns": "index,pseudo_label\n0,1\n", "pl_range": "index,pseudo_label,confidence\n0,7,0.5\n",
    }  # fmt: skip
    values = {"root": root, "empty": base / "empty", "no_classes": base / "no_classes", "empty_class": empty_class,
              "mismatch": mismatch, "one_class": one_class, "all_broken": all_broken, "nowhere": base / "nowhere",
              "tiny": tiny_clip_path,
              "inside_file": base / "a_file" / "sub", "run": make_run_folder(base / "finished_run")}  # fmt: skip
    for name, text in texts.items():
        values[name] = base / name
        values[name].write_text(text)
    logits = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    for name, array in {
        "logits_ok": logits, "logits_short": logits[:5], "logits_1d": logits[:, 0],
        "logits_int": logits.astype(np.int64),
        "logits_nan": np.where(np.arange(12)[:, None] == 0, np.nan, logits).astype(np.float32),
        "logits_inf": np.where(np.arange(12)[:, None] == 0, -np.inf, logits).astype(np.float32),
    }.items():  # fmt: skip
        values[name] = base / f"{name}.npy"
        np.save(values[name], array)
    values["pickled_objects"] = base / "pickled_objects.pt"
    torch.save({"saved": datetime.date(2024, 1, 1)}, values["pickled_objects"])  # not a tensor nor a container
    return {name: str(value) for name, value in values.items()}


@pytest.fixture(scope="module")
def tiny_clip_path():
    from conftest import TINY_CLIP

    return str(TINY_CLIP)


def _fill(args, files, tmp_path):
    values = {
        **files,
        "out": str(tmp_path / "out"),
        "csv": str(tmp_path / "labels.csv"),
        "cache": str(tmp_path / "cache"),
    }
    return [arg.format(**values) if "{" in arg and arg != "{}" else arg for arg in args]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("args, message", [pytest.param(a, m, id=c) for c, a, m in CASES])
def test_bad_input_is_one_line_and_exit_code_2(args, message, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU host
    assert main(_fill(args, files, tmp_path)) == 2
    assert message in _one_error_line(capsys)


def test_encode_takes_a_single_class_folder(files, tmp_path, capsys):
    """Embeddings do not depend on labels: a folder of unlabeled images in one class folder is encoded."""
    assert main(_fill([*ENCODE, "--data-root", "{one_class}"], files, tmp_path)) == 0
    assert "images in split │ 2" in " ".join(capsys.readouterr().out.split())


def test_debug_adds_the_traceback(files, tmp_path, capsys):
    assert main(["--debug", *_fill([*SSL, "--tau", "-1"], files, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "error: --tau must be >= 0"


@pytest.mark.parametrize(
    "args, message",
    [
        ([*PSEUDOLABEL, "--logit-scale", "nan"], "--logit-scale must be a finite number"),
        ([*PSEUDOLABEL, "--dataset", "nope"], "unknown dataset"),
        ([*ENCODE, "--data-root", "{nowhere}"], "is not a directory"),
        ([*ZEROSHOT, "--data-root", "{nowhere}"], "is not a directory"),
        ([*ZEROSHOT, "--lr", "inf"], "--lr must be a finite number"),
        ([*PSEUDOLABEL, "--data-root", "{one_class}"], "need at least 2 classes"),
        ([*ZEROSHOT, "--data-root", "{one_class}"], "need at least 2 classes"),
        ([*SSL, "--data-root", "{one_class}"], "need at least 2 classes"),
        ([*ZEROSHOT, "--dataset", "digits", "--student", "clip"], "--student clip needs RGB images"),
        ([*ENCODE, "--dataset", "digits"], "--data-root does not apply to --dataset digits"),
        ([*PSEUDOLABEL, "--templates", "{two_fields}"], "has 2 fields"),
        ([*ZEROSHOT, "--templates", "{two_fields}"], "has 2 fields"),
        ([*ZEROSHOT, "--student", "resnet50", "--warmup-epochs", "0", "--init-weights", "{a_file}"], "a checkpoint"),
        ([*SSL, "--init-weights", "{a_file}"], "is not a checkpoint"),
    ],
    ids=[
        "pseudolabel option", "pseudolabel dataset", "encode data root", "zeroshot data root", "zeroshot option",
        "pseudolabel one class", "zeroshot one class", "ssl one class", "zeroshot grayscale student",
        "encode digits with a data root", "pseudolabel template", "zeroshot template",
        "zeroshot init-weights", "ssl init-weights",
    ],
)  # fmt: skip
def test_cheap_checks_come_before_the_model_loads_or_anything_is_written(
    args, message, files, tmp_path, capsys, monkeypatch
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the cheap checks")

    def no_scan(*args, **kwargs):
        raise AssertionError("the images were listed before the cheap checks")

    for module in ("clipdebias.clip.backbone", "clipdebias.commands.pseudolabel", "clipdebias.commands.zeroshot.run"):
        monkeypatch.setattr(f"{module}.load_backbone", no_model)
    for module in ("pseudolabel", "zeroshot.run", "ssl", "encode"):
        monkeypatch.setattr(f"clipdebias.commands.{module}.open_dataset", no_scan)
    assert main(_fill(args, files, tmp_path)) == 2
    assert message in _one_error_line(capsys)
    assert not {p.name for p in tmp_path.iterdir()} & {"cache", "out", "labels.csv"}


# --- file systems that refuse writes (simulated: CI runs without root and without a full disk) ---------


@pytest.fixture
def refuse(monkeypatch):
    """``refuse(folder, error)``: every temporary file created under ``folder`` fails with ``error``
    (``errno``): on creation for permissions and read-only file systems, on ``fsync`` for a full
    disk (where a real full disk reports it), so the atomic writer meets it as it would."""
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync
    doomed: dict[int, int] = {}

    def install(folder, code, when="create", only=""):
        def mkstemp(*args, **kwargs):
            directory = str(kwargs.get("dir", ""))
            inside = directory.startswith(str(folder)) and only in kwargs.get("prefix", "")
            if inside and when == "create":
                raise OSError(code, os.strerror(code), directory)
            fd, path = real_mkstemp(*args, **kwargs)
            if inside:
                doomed[fd] = code
            return fd, path

        def fsync(fd):
            if fd in doomed:
                code = doomed.pop(fd)
                raise OSError(code, os.strerror(code))
            return real_fsync(fd)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fsync", fsync)

    yield install
    monkeypatch.undo()


def test_out_without_permission_fails_before_any_work(files, tmp_path, capsys, refuse):
    refuse(tmp_path / "out", errno.EACCES)
    assert main(_fill(SSL, files, tmp_path)) == 2
    line = _one_error_line(capsys)
    assert f"--out: cannot write into '{tmp_path / 'out'}': Permission denied" in line


def test_read_only_cache_fails_before_the_model_loads(files, tmp_path, capsys, refuse, monkeypatch):
    refuse(tmp_path / "cache", errno.EROFS)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the cache was checked")

    monkeypatch.setattr("clipdebias.clip.backbone.load_backbone", no_model)
    assert main(_fill(ENCODE, files, tmp_path)) == 2
    assert "cache directory (--cache-dir): cannot write into" in (line := _one_error_line(capsys))
    assert "Read-only file system" in line


def test_a_full_disk_under_out_is_one_line(files, tmp_path, capsys, refuse):
    refuse(tmp_path / "out", errno.ENOSPC, when="fsync")
    assert main(_fill(SSL, files, tmp_path)) == 2
    line = _one_error_line(capsys)
    assert f"cannot write '{tmp_path / 'out' / 'config.json'}': No space left on device; free some space" in line


def test_a_cache_that_fills_up_while_encoding_keeps_the_finished_chunks(files, tmp_path, capsys, refuse, monkeypatch):
    """The disk fills after the first chunk of 4 images: one error line after the progress bar; the
    chunk written before is kept, and once space is back the next run encodes only the rest."""
    args = _fill([*ENCODE, "--chunk-size", "4", "--encode-batch-size", "4"], files, tmp_path)
    refuse(tmp_path / "cache", errno.ENOSPC, when="fsync", only=".shard-000000000004-")
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and err.splitlines()[-1] == errors[0]
    assert "shard-000000000004-000000000008.npz'" in errors[0] and "No space left on device" in errors[0]
    (entry,) = (tmp_path / "cache" / "embeddings").iterdir()
    assert [shard.name for shard in (entry / "shards").iterdir()] == ["shard-000000000000-000000000004.npz"]
    monkeypatch.undo()  # space is back
    assert main(args) == 0
    assert "reused from an earlier run │ 4" in " ".join(capsys.readouterr().out.split())


def test_a_gpu_number_beyond_the_count_is_refused(monkeypatch):
    from clipdebias.utils.device import resolve_device
    from clipdebias.utils.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"--device cuda:2: torch sees 2 GPU\(s\) here"):
        resolve_device("cuda:2")
    with pytest.raises(UserError, match="unknown --device 'cuda:one'"):
        resolve_device("cuda:one")


# --- results an earlier run wrote -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "existing, extra, message",
    [
        ("labels.csv", [], "--out {csv}: {csv} already exists; pass --overwrite to replace it"),
        ("labels.json", [], "--out {csv}: {tmp}/labels.json already exists; pass --overwrite"),
        (
            "ref/CLIPPseudoLabel0.95-Unselected.csv",
            ["--reference-format", "{tmp}/ref"],
            "--reference-format {tmp}/ref: {tmp}/ref/CLIPPseudoLabel0.95-Unselected.csv already exists",
        ),
    ],
    ids=["the csv", "its sidecar", "a reference-format file"],
)
def test_pseudolabel_never_replaces_earlier_files_without_overwrite(
    existing, extra, message, files, tmp_path, capsys, monkeypatch
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr("clipdebias.commands.pseudolabel.load_backbone", no_model)
    (tmp_path / existing).parent.mkdir(exist_ok=True)
    (tmp_path / existing).write_text("an earlier result")
    values = {"csv": str(tmp_path / "labels.csv"), "tmp": str(tmp_path)}
    args = [*_fill(PSEUDOLABEL, files, tmp_path), *(arg.format(**values) for arg in extra)]
    assert main(args) == 2
    assert message.format(**values) in _one_error_line(capsys)
    assert (tmp_path / existing).read_text() == "an earlier result"
    assert not (tmp_path / "cache").exists()


def test_pseudolabel_overwrite_replaces_the_csv_and_its_sidecar(files, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("an earlier result")
    (tmp_path / "labels.json").write_text("{}")
    assert main([*_fill(PSEUDOLABEL, files, tmp_path), "--no-report", "--overwrite"]) == 0
    assert (tmp_path / "labels.csv").read_text().startswith("index,")
    assert '"teacher": "clip"' in (tmp_path / "labels.json").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        ([*SSL, "--init-weights", "{a_file}"], "--init-weights '{a_file}' is not a checkpoint; expected a state dict"),
        ([*SSL, "--init-weights", "{pickled_objects}"], "is not a plain state dict: it holds pickled Python objects"),
        ([*ENCODE, "--pretrained", "{a_file}"], "--pretrained {a_file} is not a checkpoint; expected CLIP weights"),
        ([*ENCODE, "--pretrained", "{pickled_objects}"], "is not a plain checkpoint: it holds pickled Python objects"),
    ],
    ids=["init-weights text", "init-weights objects", "pretrained text", "pretrained objects"],
)
def test_a_file_that_is_no_checkpoint_is_named_so_without_advice_to_unpickle_it(args, message, files, tmp_path, capsys):
    assert main(_fill(args, files, tmp_path)) == 2
    line = _one_error_line(capsys)
    assert message.format(**files) in line
    assert "weights_only" not in line and "trust the source" not in line
