"""docs/usage.md states the defaults of ssl, zeroshot, pseudolabel and encode in its option tables;
each stated value must be the one clipdebias.config.defaults holds (the code and --help read it)."""

import re
from pathlib import Path

import pytest

from clipdebias.config import defaults

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
SSL_COLUMNS = {"digits": ["digits"], "cifar10 / cifar100": ["cifar10", "cifar100"], "imagenet": ["imagenet"],
               "imagefolder": ["imagefolder"]}  # fmt: skip
STUDENTS = tuple(defaults.STUDENT_DEFAULTS)


def _sections() -> dict[str, str]:
    """The text of each ``## `clipdebias COMMAND` `` section."""
    parts = re.split(r"^## `clipdebias (\w+)`.*$", USAGE.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `--")
    ]


def _flags(cell: str) -> list[str]:
    """``--batch-size``, ``--mu`` of "`--batch-size`, `--mu`"; "`--threads N`" -> ``--threads``."""
    return [re.match(r"--[\w-]+", flag).group(0) for flag in re.findall(r"`(--[^`]+)`", cell)]


def _value(text: str):
    text = text.strip().strip("`").strip()
    if text in ("on", "off"):
        return text == "on"
    try:
        return float(text)
    except ValueError:
        return text


def _same(stated, expected) -> bool:
    if isinstance(expected, bool) or isinstance(stated, bool):
        return stated is expected
    if isinstance(expected, (int, float)) and isinstance(stated, float):
        return stated == pytest.approx(float(expected))
    return stated == expected


def _ssl_expected(flag: str, dataset: str):
    field = flag[2:].replace("-", "_")
    if flag == "--multiviews":
        field = "multiviews"
    table = defaults.SSL_DEFAULTS[dataset]
    return getattr(table, field, None) if hasattr(table, field) else None


def test_ssl_per_dataset_table_matches_the_defaults():
    text = _sections()["ssl"]
    header = next(line for line in text.splitlines() if line.startswith("| option | meaning |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][2:]
    checked = set()
    for row in _rows(text):
        flag, cells = _flags(row[0])[0], row[2:]
        if len(cells) != len(columns) or flag in ("--workers", "--steps-per-epoch"):
            continue  # described in words: checked below
        previous = None
        for column, cell in zip(columns, cells, strict=True):
            datasets = SSL_COLUMNS[column]
            values = [previous] * len(datasets) if cell.startswith("same") else [_value(v) for v in cell.split(" / ")]
            values = values * len(datasets) if len(values) == 1 else values
            for dataset, value in zip(datasets, values, strict=True):
                expected = _ssl_expected(flag, dataset)
                assert expected is not None, f"ssl {flag}: no such default"
                assert _same(value, expected), f"docs say ssl {flag} = {value} for {dataset}; the code: {expected}"
                checked.add(flag)
            previous = values[-1]
    steps = next(row for row in _rows(text) if _flags(row[0]) == ["--steps-per-epoch"])
    for column, cell in zip(columns, steps[2:], strict=True):
        for dataset in SSL_COLUMNS[column]:
            expected = defaults.SSL_DEFAULTS[dataset].steps_per_epoch
            assert _same(_value(cell), expected) if expected is not None else "one pass" in cell or "same" in cell
    assert checked >= {"--labels", "--tau", "--threshold", "--lr", "--batch-size", "--arch", "--multiviews"}


_SHARED = vars(defaults.SHARED_DEFAULTS)
SHARED = {
    "--tau": defaults.TAU, "--seed": defaults.SEED, "--device": defaults.DEVICE, "--model": defaults.MODEL,
    "--pretrained": defaults.PRETRAINED, "--encode-precision": defaults.ENCODE_PRECISION,
    "--encode-batch-size": defaults.ENCODE_BATCH_SIZE, "--chunk-size": defaults.CHUNK_SIZE, "--split": defaults.SPLIT,
}  # fmt: skip
EXPECTED = {
    "ssl": {"--seed": defaults.SEED, "--device": defaults.DEVICE, "--holdout": defaults.HOLDOUT,
            "--precision": defaults.TRAIN_PRECISION, "--prefetch-factor": defaults.PREFETCH_FACTOR},
    "encode": {k: SHARED[k] for k in ("--model", "--pretrained", "--split", "--device", "--encode-precision",
                                      "--encode-batch-size", "--chunk-size")},
    "pseudolabel": {"--tau": defaults.TAU, "--select-threshold": defaults.SELECT_THRESHOLD,
                    "--chunk-rows": defaults.CHUNK_ROWS, "--debias": defaults.DEBIAS,
                    "--reference-top-k": defaults.REFERENCE_TOP_K, "--knn": defaults.KNN,
                    "--knn-alpha": defaults.KNN_ALPHA, "--knn-steps": defaults.KNN_STEPS},
    "zeroshot": {
        "--student": defaults.STUDENT, "--model": defaults.MODEL, "--pretrained": defaults.PRETRAINED,
        **{f"--{k.replace('_', '-')}": v for k, v in _SHARED.items() if k != "min_steps_per_epoch"},
        "--seed": defaults.SEED, "--device": defaults.DEVICE, "--precision": defaults.ZEROSHOT_PRECISION,
        "--encode-precision": defaults.ENCODE_PRECISION, "--encode-batch-size": defaults.ENCODE_BATCH_SIZE,
        "--eval-batch-size": defaults.EVAL_BATCH_SIZE,
        "--image-size": defaults.STUDENT_DEFAULTS["resnet50"].image_size,
        "--debias": defaults.DEBIAS, "--knn": defaults.KNN, "--knn-alpha": defaults.KNN_ALPHA,
        "--knn-steps": defaults.KNN_STEPS,
    },
}  # fmt: skip
PER_STUDENT = ("--epochs", "--batch-size", "--mu", "--lr", "--weight-decay", "--warmup-epochs", "--ema-momentum",
               "--lambda-u")  # fmt: skip


def _default_rows(command: str) -> dict[str, str]:
    """``{flag: its default cell}`` of the command's ``| option | default | meaning |`` tables; a row
    naming two flags ("`--a`, `--b` | 1, 2") gives each its part."""
    found = {}
    for row in _rows(_sections()[command]):
        if len(row) != 3:
            continue
        flags = _flags(row[0])
        if len(flags) == 1:
            found[flags[0]] = row[1]
        elif not any(f in PER_STUDENT for f in flags):
            for flag, part in zip(flags, row[1].split(", "), strict=True):
                found[flag] = part
        else:
            found[", ".join(flags)] = row[1]
    return found


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_option_tables_match_the_defaults(command):
    stated = _default_rows(command)
    for flag, expected in EXPECTED[command].items():
        assert flag in stated, f"docs/usage.md has no default for {command} {flag}"
        assert _same(_value(stated[flag]), expected), f"docs: {command} {flag} = {stated[flag]}; code: {expected}"


def test_zeroshot_per_student_defaults_match():
    stated = _default_rows("zeroshot")
    for key, cell in stated.items():
        flags = key.split(", ")
        if not any(f in PER_STUDENT for f in flags):
            continue
        for part in cell.split("; ") if len(flags) > 1 else cell.split(", "):
            student, *values = part.replace(",", " ").split()
            assert student in STUDENTS, f"zeroshot {key}: {part!r}"
            for flag, value in zip(flags, values, strict=True):
                expected = getattr(defaults.STUDENT_DEFAULTS[student], flag[2:].replace("-", "_"))
                assert _same(_value(value), expected), (
                    f"docs: zeroshot {flag} = {value} for {student}; code: {expected}"
                )
    assert {f for key in stated for f in key.split(", ")} >= set(PER_STUDENT)


def test_the_check_can_fail(monkeypatch):
    """A stated value that differs from the code fails the test (the parser reads the tables)."""
    monkeypatch.setitem(EXPECTED["pseudolabel"], "--select-threshold", 0.9)
    with pytest.raises(AssertionError, match="select-threshold"):
        test_option_tables_match_the_defaults("pseudolabel")
